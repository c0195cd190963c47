"""``ferry dump`` and ``ferry apply``: the declarative configuration from the command line.

Both talk to a control plane's Admin API (``GET /config``, ``POST /config``)
and run the control plane's own document code (:mod:`control_plane.declarative`)
locally, so a file is validated before anything is sent and the diff printed
is the one applied:

* ``ferry dump [-o FILE]`` writes the whole configuration, read atomically, as
  YAML (standard output by default; a file is replaced atomically).
* ``ferry apply FILE [--dry-run]`` validates FILE, reads the configuration,
  prints what would be created, updated (with the changed fields) and
  deleted, and — unless ``--dry-run`` or nothing changes — sends the resolved
  configuration to ``POST /config?expected_version=V``: one atomic replace,
  refused if the configuration moved since it was read. It prints the new
  version and hash.

Exit status: 0 done (or nothing to do), 1 the file is invalid or the control
plane refused or could not be reached. The diff goes to standard output,
errors to standard error.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from control_plane.declarative import (
    SINGULAR_NAMES,
    ConfigDiff,
    DocumentParseError,
    EntityChange,
    diff_configs,
    dump_yaml,
    entities_of,
    export_document,
    parse_document,
    resolve_document,
)
from control_plane.errors import DeclarativeConfigInvalid

#: Seconds to wait for one Admin API answer.
HTTP_TIMEOUT = 60.0


class CommandError(Exception):
    """A failure to report on standard error as ``ferry: error: <message>`` (exit 1)."""


class AdminClient:
    """The few Admin API calls the commands make, over urllib (blocking)."""

    def __init__(
        self, admin_url: str, timeout: float = HTTP_TIMEOUT, *, token: str | None = None
    ) -> None:
        """``token``: sent as ``Ferry-Admin-Token`` (a CP with ``--admin-tokens``)."""
        url = admin_url.strip().rstrip("/")
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            self._headers["Ferry-Admin-Token"] = token
        if "://" not in url:
            url = "http://" + url
        self.base_url = url
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers=self._headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json_or_text(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json_or_text(exc.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CommandError(f"cannot reach the Admin API at {self.base_url}: {reason}") from None

    def get_config(self) -> dict[str, Any]:
        """``GET /config``: the whole configuration with ``_config_version``/``_config_hash``."""
        status, body = self._call("GET", "/config")
        if status != 200 or not isinstance(body, dict):
            raise CommandError(f"GET {self.base_url}/config answered {status}: {_message(body)}")
        return body

    def post_config(self, document: Mapping[str, Any], expected_version: int) -> tuple[int, Any]:
        """``POST /config?expected_version=N``: the status and decoded body."""
        return self._call("POST", f"/config?expected_version={expected_version}", dict(document))


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _message(body: Any) -> str:
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return str(body)[:500]


# ---------------------------------------------------------------------- dump


def run_dump(
    admin_url: str, output: str | None, out: TextIO = sys.stdout, *, token: str | None = None
) -> int:
    """``ferry dump``: the configuration as YAML on ``out`` or in ``output`` (atomically)."""
    try:
        document = AdminClient(admin_url, token=token).get_config()
        text = dump_yaml(document)
        if output is None or output == "-":
            out.write(text)
            out.flush()
        else:
            _write_atomically(Path(output), text)
            print(
                f"wrote {output}: configuration version {document.get('_config_version')}, "
                f"hash {document.get('_config_hash')}",
                file=sys.stderr,
            )
    except CommandError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write {output}: {exc}")
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, rename it over ``path``."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------- apply


def run_apply(
    admin_url: str, file: str, *, dry_run: bool, out: TextIO = sys.stdout, token: str | None = None
) -> int:
    """``ferry apply``: validate ``file``, print the diff, apply it unless ``dry_run``."""
    try:
        document = _read_document(file)
        client = AdminClient(admin_url, token=token)
        stored = client.get_config()
        version = int(stored["_config_version"])
        current = entities_of(stored)
        desired = resolve_document(document, current, int(time.time()))
        diff = diff_configs(current, desired)
        if diff.empty:
            print(
                f"no changes: the control plane already has this configuration "
                f"(version {version}, hash {stored['_config_hash']}); nothing written",
                file=out,
            )
            return 0
        for line in format_diff(diff, current, desired):
            print(line, file=out)
        print(_summary(diff), file=out)
        if dry_run:
            print(f"dry run: nothing applied (configuration version {version})", file=out)
            return 0
        resolved = export_document(version, desired)
        del resolved["_config_version"], resolved["_config_hash"]  # the server's to say
        status, body = client.post_config(resolved, version)
        if status == 409:
            raise CommandError(
                f"{_message(body)}; run `ferry apply {file}` again to diff against the new configuration"
            )
        if status != 201 or not isinstance(body, dict):
            problems = _server_problems(body)
            raise CommandError(f"POST /config answered {status}: {_message(body)}{problems}")
        print(
            f"applied: configuration version {body['_config_version']}, "
            f"hash {body['_config_hash']}",
            file=out,
        )
        return 0
    except CommandError as exc:
        return _fail(str(exc))
    except DeclarativeConfigInvalid as exc:
        lines = "\n".join(f"  {problem}" for problem in exc.problems)
        return _fail(f"{file} is not a valid configuration:\n{lines}")


def _read_document(file: str) -> dict[str, Any]:
    """Read and parse ``file`` (``-``: standard input), then validate it on its own."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {file}: {exc}") from None
    try:
        document = parse_document(text)
    except DocumentParseError as exc:
        raise CommandError(f"{file} is not a declarative configuration: {exc}") from None
    # Validity does not depend on the stored configuration: check before any request.
    resolve_document(document, {}, int(time.time()))
    return document


def _server_problems(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    lines = []
    for item in body.get("flattened_errors") or []:
        for error in item.get("errors") or []:
            where = f"{error['field']}: " if error.get("field") else ""
            lines.append(f"\n  {item.get('location', item.get('entity_type'))}: {where}{error.get('message')}")
    return "".join(lines)


def _fail(message: str) -> int:
    print(f"ferry: error: {message}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------- diff


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def describe(kind: str, entity: Mapping[str, Any], upstream_names: Mapping[str, str]) -> str:
    """``upstream shop (5f0c…)``, ``target 10.0.0.1:80 of upstream shop (…)``, ``route (…)``."""
    noun = SINGULAR_NAMES[kind]
    if kind == "targets":
        upstream_id = entity["upstream"]["id"]
        upstream = upstream_names.get(upstream_id, upstream_id)
        return f"{noun} {entity['target']} of upstream {upstream} ({entity['id']})"
    if entity.get("name"):
        return f"{noun} {entity['name']} ({entity['id']})"
    return f"{noun} ({entity['id']})"


def format_diff(
    diff: ConfigDiff,
    current: Mapping[str, Any],
    desired: Mapping[str, Any],
) -> list[str]:
    """One line per created or deleted entity; an updated one adds a line per changed field.

    ``updated_at`` is listed only when nothing else changed: it moves with
    every update.
    """
    names = {u["id"]: u["name"] for u in [*current.get("upstreams", ()), *desired.get("upstreams", ())]}
    lines: list[str] = []
    for change in diff.changes:
        lines.append(f"{_VERB[change.op]} {describe(change.kind, change.entity, names)}")
        if change.op == "update":
            lines += _field_lines(change)
    return lines


_VERB = {"create": "creating", "update": "updating", "delete": "deleting"}


def _field_lines(change: EntityChange) -> list[str]:
    fields = [f for f in change.fields if f.path != "updated_at"] or list(change.fields)
    return [f"    {f.path}: {_value(f.old)} -> {_value(f.new)}" for f in fields]


def _summary(diff: ConfigDiff) -> str:
    return (
        f"summary: {diff.count('create')} to create, {diff.count('update')} to update, "
        f"{diff.count('delete')} to delete"
    )
