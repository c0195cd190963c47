"""The http2 scenario's checks before it measures (bench/h2_bench.py): HTTP/2 requests
through a proxy with ``nghttp`` (Debian's ``nghttp2-client``, beside h2load), whose
verbose trace shows every header and trailer received, and gRPC calls with grpcio.

h2load judges a response by its ``:status`` alone, so these checks are what proves a
gRPC phase's responses really end in ``grpc-status: 0``.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from bench import grpc_backend
from bench.h2load import grpc_message_frame
from bench.procs import find_tool
from bench.proxy_bench import BODY_BYTES

#: The headers of a gRPC request besides the pseudo-headers (h2load sends POST with ``-d``).
GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}

_NGHTTP_HEADER_RE = re.compile(r"recv \(stream_id=\d+\) ([^\s:][^:]*|:[a-z]+): ?(.*)$", re.MULTILINE)
_TIMESTAMP_RE = re.compile(r"^\[\s*[\d.]+\]\s*")
_NGHTTP_DATA_RE = re.compile(r"recv DATA frame <length=(\d+),")


def parse_nghttp_verbose(text: str) -> dict[str, Any]:
    """From ``nghttp -v -n``'s trace of one request: the response's ``status``, every
    header and trailer field received (``fields``, lower-case names, the last value of a
    name wins: trailers come after headers) and the ``data_bytes`` of its DATA frames."""
    fields = {name.lower(): value.strip() for name, value in _NGHTTP_HEADER_RE.findall(text)}
    status = fields.get(":status")
    return {
        "status": int(status) if status and status.isdigit() else None,
        "fields": fields,
        "data_bytes": sum(int(n) for n in _NGHTTP_DATA_RE.findall(text)),
    }


def nghttp_request(
    url: str, *, data: Path | None = None, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """One request with ``nghttp`` (h2c with prior knowledge for ``http://``, ALPN h2 for
    ``https://``; it fails when h2 is not negotiated): :func:`parse_nghttp_verbose`'s
    answer plus ``exit`` and ``error`` (nghttp's own complaint, if any)."""
    tool = find_tool("nghttp") or "nghttp"
    command = [tool, "-v", "-n", f"--timeout={max(1, round(timeout))}"]
    if data is not None:
        command.append(f"--data={data}")
    command += [f"--header={name}: {value}" for name, value in (headers or {}).items()]
    done = subprocess.run([*command, url], capture_output=True, timeout=timeout + 10)
    text = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    answer = parse_nghttp_verbose(text)
    errors = [_TIMESTAMP_RE.sub("", line).strip() for line in text.splitlines()
              if "[ERROR]" in line or "Some requests were not" in line]
    answer.update(exit=done.returncode, error="; ".join(errors) or None)
    return answer


def check_h2_target(name: str, url: str) -> dict[str, Any]:
    """A few HTTP/2 requests (new connections): 200, the whole body, both backends."""
    seen: set[str] = set()
    for _ in range(6):
        answer = nghttp_request(url)
        if answer["status"] != 200 or answer["data_bytes"] != BODY_BYTES:
            raise RuntimeError(f"{name}: HTTP/2 GET {url} → {answer['status']}, {answer['data_bytes']} bytes"
                               f"{'; ' + answer['error'] if answer['error'] else ''}")
        seen.add(answer["fields"].get("x-backend", "?"))
    if seen != {"a", "b"}:
        raise RuntimeError(f"{name}: answers came from backends {sorted(seen)}, expected ['a', 'b']")
    return {"backends_seen": sorted(seen)}


def grpc_call(port: int, timeout: float = 5.0) -> tuple[grpc.StatusCode, bytes | None, str]:
    """One unary call with grpcio through 127.0.0.1:``port`` (plaintext): status code,
    reply (None on an error) and the error's details."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(grpc_backend.PATH)
        try:
            reply, call = method.with_call(grpc_backend.REQUEST, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code(), None, str(exc.details())
        return call.code(), reply, ""


def check_grpc_target(name: str, port: int, request_file: Path) -> dict[str, Any]:
    """A grpcio call and h2load's exact request (via nghttp) through ``port``: both must
    succeed with ``grpc-status: 0`` and the backend's reply."""
    code, reply, details = grpc_call(port)
    if code != grpc.StatusCode.OK or reply != grpc_backend.REPLY:
        raise RuntimeError(f"{name}: grpcio call {grpc_backend.PATH} → {code.name} {details!r}")
    answer = nghttp_request(f"http://127.0.0.1:{port}{grpc_backend.PATH}", data=request_file, headers=GRPC_HEADERS)
    status = answer["fields"].get("grpc-status")
    expected_bytes = len(grpc_message_frame(grpc_backend.REPLY))
    if answer["status"] != 200 or status != "0" or answer["data_bytes"] != expected_bytes:
        raise RuntimeError(f"{name}: h2load's gRPC request → :status {answer['status']}, grpc-status {status}, "
                           f"{answer['data_bytes']} bytes{'; ' + answer['error'] if answer['error'] else ''}")
    return {"grpcio_call": "OK", "h2load_request": "200, grpc-status 0, the backend's reply"}


def passes(check: Callable[[], Any]) -> bool:
    return probe(check, 0) is None


def probe(check: Callable[[], Any], timeout: float) -> str | None:
    """Run ``check`` until it passes or ``timeout`` runs out; None, or its last error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return None
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            if time.monotonic() >= deadline:
                return str(exc)
        time.sleep(0.2)
