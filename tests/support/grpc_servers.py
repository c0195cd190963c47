"""Real gRPC targets for tests: a ``grpcio`` aio server on a free loopback port that
implements ``grpc.health.v1.Health`` (whose answer a test flips) and a raw-bytes test
service (``test.Raw``: no protobuf, the request bytes are the message), plain (h2c) or
TLS (ALPN h2, optionally requiring a client certificate).

Every server a test starts is stopped by the test's ``AsyncExitStack``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support.tls import Pair

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcTarget:
    """A grpcio server: ``Health`` (overall status and per service, via :meth:`set`)
    and ``test.Raw``: ``Echo`` (unary: answers the request bytes), ``Hold`` (unary:
    answers once :attr:`release` is set; :attr:`held` counts the calls waiting),
    ``Count`` (server streaming: the request is a decimal count N; answers N messages
    ``b"0"`` .. ``b"N-1"``), ``Collect`` (client streaming: answers the requests joined
    with ``,``), ``Chat`` (bidirectional: answers each request with ``re:`` + it),
    ``Fail`` (unary: aborts with NOT_FOUND and the request as the message), ``Refuse``
    (unary: aborts with UNAVAILABLE), ``Who``
    (unary: answers :attr:`name`) and ``Meta`` (unary: the call's metadata and
    ``time_remaining`` as JSON)."""

    def __init__(
        self,
        *,
        certificate: Pair | None = None,
        client_ca: Path | None = None,
        max_concurrent_streams: int | None = None,
        name: str = "",
    ) -> None:
        self.port = 0
        self.name = name
        self.health = health.aio.HealthServicer()
        self.release = asyncio.Event()
        self.held = 0
        self._certificate = certificate
        self._client_ca = client_ca
        options = []
        if max_concurrent_streams is not None:
            options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
        self.server = grpc.aio.server(options=options)

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set(self, status: int, service: str = "") -> None:
        await self.health.set(service, status)

    async def _echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def _hold(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.held += 1
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        return request

    async def _count(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    async def _collect(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        return b",".join([request async for request in requests])

    async def _chat(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for request in requests:
            yield b"re:" + request

    async def _fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, request.decode())
        return b""  # not reached: abort raises

    async def _refuse(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        return b""  # not reached: abort raises

    async def _who(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self.name.encode()

    async def _meta(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata: dict[str, object] = {k: v for k, v in context.invocation_metadata() or ()}
        metadata["time_remaining"] = context.time_remaining()
        return json.dumps(metadata, default=repr).encode()

    async def start(self, stack: AsyncExitStack) -> GrpcTarget:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        raw = grpc.method_handlers_generic_handler(
            "test.Raw",
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self._echo),
                "Hold": grpc.unary_unary_rpc_method_handler(self._hold),
                "Count": grpc.unary_stream_rpc_method_handler(self._count),
                "Collect": grpc.stream_unary_rpc_method_handler(self._collect),
                "Chat": grpc.stream_stream_rpc_method_handler(self._chat),
                "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
                "Refuse": grpc.unary_unary_rpc_method_handler(self._refuse),
                "Who": grpc.unary_unary_rpc_method_handler(self._who),
                "Meta": grpc.unary_unary_rpc_method_handler(self._meta),
            },
        )
        self.server.add_generic_rpc_handlers((raw,))
        if self._certificate is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials(
                [(self._certificate.key.read_bytes(), self._certificate.cert.read_bytes())],
                root_certificates=self._client_ca.read_bytes() if self._client_ca else None,
                require_client_auth=self._client_ca is not None,
            )
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        await self.server.start()
        stack.push_async_callback(self.stop)
        await self.set(SERVING)
        return self

    async def stop(self) -> None:
        self.release.set()
        await self.server.stop(None)


#: A grpcio server in its own process: ``test.Raw/Hold`` never answers; prints its port.
_PROCESS_SERVER = """
import asyncio, grpc, sys

async def hold(request, context):
    await asyncio.Event().wait()

async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Raw", {"Hold": grpc.unary_unary_rpc_method_handler(hold)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


class GrpcProcess:
    """A grpcio server in a child process (``test.Raw/Hold`` holds every call), for
    a target that dies at once: :meth:`kill` sends SIGKILL."""

    def __init__(self) -> None:
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, stack: AsyncExitStack) -> GrpcProcess:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PROCESS_SERVER, stdout=asyncio.subprocess.PIPE
        )
        stack.push_async_callback(self.kill)
        assert self._process.stdout is not None
        async with asyncio.timeout(30):
            self.port = int(await self._process.stdout.readline())
        return self

    async def kill(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
