"""The DP's disk cache: a file it cannot use is reported, kept aside, and skipped.

Issue 12, case 11: random bytes, a truncated file and plain text were ignored without a
word, and an empty file logged a misleading hash mismatch.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from data_plane.cluster_client import ClusterClient
from data_plane.config_cache import CACHE_FILE, KEEP_QUARANTINED, MAGIC, ConfigCache
from data_plane.node_identity import NodeIdentity
from data_plane.runtime import ConfigHolder
from data_plane.server import DataPlane, DataPlaneSettings
from ferry_shared.listen import free_port
from ferry_shared.snapshot_format import canonical_json, config_hash
from proto import cluster_pb2
from tests.support.polling import wait_for

SERVICE = {"id": "00000000-0000-4000-8000-00000000000a", "name": "s", "host": "example.com"}
ROUTE = {
    "id": "00000000-0000-4000-8000-00000000000b",
    "paths": ["/"],
    "service": {"id": SERVICE["id"]},
}


def _snapshot(*entities: tuple[str, dict]) -> cluster_pb2.Snapshot:
    resources = [(kind, e["id"], canonical_json(e)) for kind, e in entities]
    return cluster_pb2.Snapshot(
        version=7,
        hash=config_hash(resources),
        resources=[cluster_pb2.Resource(kind=k, id=i, body=b) for k, i, b in resources],
    )


GOOD = _snapshot(("services", SERVICE), ("routes", ROUTE))


def _saved(tmp_path: Path) -> bytes:
    ConfigCache(tmp_path).save(GOOD)
    return (tmp_path / CACHE_FILE).read_bytes()


def _random(_: Path) -> bytes:
    return random.Random(12).randbytes(4096)


def _truncated(tmp_path: Path) -> bytes:
    data = _saved(tmp_path)
    return data[: len(data) // 2]


def _truncated_header(tmp_path: Path) -> bytes:
    return _saved(tmp_path)[: len(MAGIC) + 3]


def _plain_text(_: Path) -> bytes:
    return b"version: 7\nservices:\n- name: s\n  host: example.com\n"


def _empty(_: Path) -> bytes:
    return b""


def _wrong_hash(_: Path) -> bytes:
    tampered = cluster_pb2.Snapshot()
    tampered.CopyFrom(GOOD)
    tampered.resources[0].body = canonical_json({**SERVICE, "host": "evil.example"})
    cache = MAGIC + len(tampered.SerializeToString()).to_bytes(8, "big")
    return cache + tampered.SerializeToString()


def _trailing_bytes(tmp_path: Path) -> bytes:
    return _saved(tmp_path) + b"\0\0"


def _other_protobuf(_: Path) -> bytes:
    return cluster_pb2.Hello(node_id="x", hostname="y").SerializeToString()


CORRUPTIONS: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "random bytes": (_random, "not a config snapshot (Error parsing message"),
    "truncated": (_truncated, "truncated: "),
    "truncated header": (_truncated_header, "truncated: 24 bytes, shorter than its header"),
    "plain text": (_plain_text, "plain text, not a config cache (it starts 'version: 7\\nservices"),
    "empty": (_empty, "the file is empty (0 bytes)"),
    "wrong hash": (_wrong_hash, "its content does not match its hash (recorded "),
    "trailing bytes": (_trailing_bytes, "2 unexpected bytes after the config"),
    "another message": (_other_protobuf, "not a config snapshot (it has no config hash)"),
}


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_saved_config_loads_back_verified(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = ConfigCache(tmp_path)
    assert cache.load() is None, "no file: nothing to load, nothing to report"
    cache.save(GOOD)
    assert cache.load() == GOOD
    assert cache.problem is None
    assert cache.status() == {
        "path": str(tmp_path / CACHE_FILE), "error": None, "quarantined_as": None, "error_at": None,
    }
    assert _errors(caplog) == []


def test_the_cache_file_is_readable_by_its_owner_only_as_it_holds_private_keys(tmp_path: Path) -> None:
    (tmp_path / "config-cache.tmp").write_bytes(b"left over")
    (tmp_path / "config-cache.tmp").chmod(0o644)
    cache = ConfigCache(tmp_path)
    cache.save(GOOD)
    assert (cache.path.stat().st_mode & 0o777) == 0o600
    assert cache.load() == GOOD


def test_a_cache_written_before_the_header_existed_still_loads(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE).write_bytes(GOOD.SerializeToString())
    assert ConfigCache(tmp_path).load() == GOOD


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_an_unusable_cache_is_logged_once_kept_aside_and_skipped(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make, reason = CORRUPTIONS[kind]
    data = make(tmp_path)
    path = tmp_path / CACHE_FILE
    path.write_bytes(data)
    cache = ConfigCache(tmp_path)
    caplog.set_level(logging.INFO)

    assert cache.load() is None

    (quarantined,) = tmp_path.glob(f"{CACHE_FILE}.corrupt-*")
    assert not path.exists()
    assert quarantined.read_bytes() == data, "kept byte for byte for inspection"
    assert cache.problem is not None and cache.problem.error.startswith(reason), cache.problem
    (message,) = _errors(caplog)
    assert message.startswith(f"config cache {path} is unusable: {reason}")
    assert f"kept it as {quarantined};" in message
    assert message.endswith("starting without it, waiting for the control plane to send a config")
    assert "hash" not in message or kind == "wrong hash" or kind == "another message"
    status = cache.status()
    assert status["path"] == str(path) and status["error"] == cache.problem.error
    assert status["quarantined_as"] == str(quarantined) and status["error_at"] > 0

    # The next start finds no cache, says nothing, and a save works again.
    caplog.clear()
    assert ConfigCache(tmp_path).load() is None
    assert _errors(caplog) == []
    cache.save(GOOD)
    assert ConfigCache(tmp_path).load() == GOOD


def test_a_cache_that_cannot_be_read_is_reported(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE).mkdir()
    cache = ConfigCache(tmp_path)
    assert cache.load() is None
    assert cache.problem is not None and cache.problem.error == "cannot be read: Is a directory"
    assert cache.problem.quarantined_as is not None
    assert not (tmp_path / CACHE_FILE).exists(), "out of the way, so the next save works"


def test_only_the_newest_quarantined_files_are_kept(tmp_path: Path) -> None:
    for n in range(KEEP_QUARANTINED + 3):
        (tmp_path / f"{CACHE_FILE}.corrupt-2000010{n}T000000Z").write_bytes(b"old")
    (tmp_path / CACHE_FILE).write_bytes(b"")
    cache = ConfigCache(tmp_path)
    cache.load()
    kept = sorted(p.name for p in tmp_path.glob(f"{CACHE_FILE}.corrupt-*"))
    assert len(kept) == KEEP_QUARANTINED
    assert cache.problem is not None and Path(cache.problem.quarantined_as or "").name in kept


async def test_a_cached_config_this_data_plane_cannot_compile_is_reported_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Intact and hash-verified, but refused by the compiler (e.g. a cache from another
    version): the same report, with the compiler's reason."""
    cache = ConfigCache(tmp_path)
    cache.save(_snapshot(("routes", {**ROUTE, "service": {"id": "missing"}})))
    holder = ConfigHolder()
    client = ClusterClient(
        "127.0.0.1:1", holder, cache, NodeIdentity(node_id="n", hostname="h", version="0"),
        insecure=True,
    )
    assert await client.load_cache() is False
    assert holder.current is None
    assert cache.problem is not None
    assert cache.problem.error.startswith(
        "this data plane cannot apply the config it holds: route 00000000-0000-4000-8000-00000000000b: "
        "service missing does not exist"
    )
    assert len(_errors(caplog)) == 1


async def test_a_real_data_plane_shows_its_corrupt_cache_in_status(tmp_path: Path) -> None:
    """A DataPlane whose control plane is down starts without its damaged cache, says
    why in GET /status, and keeps waiting for the control plane."""
    data_dir = tmp_path / "dp"
    data_dir.mkdir()
    (data_dir / CACHE_FILE).write_bytes(os.urandom(1000))
    dp = DataPlane(
        DataPlaneSettings(
            control_plane=f"127.0.0.1:{free_port()}",  # nothing listens: the CP is down
            proxy_listen="127.0.0.1:0",
            status_listen="127.0.0.1:0",
            data_dir=data_dir,
            cluster_insecure=True,
        )
    )
    try:
        await dp.start()
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{dp.status_port}"
            async with http.get(base + "/status") as response:
                assert response.status == 200
                body = await response.json()
            async with http.get(base + "/status/ready") as response:
                assert response.status == 503
        (quarantined,) = data_dir.glob(f"{CACHE_FILE}.corrupt-*")
        assert body["ready"] is False and body["configuration_version"] is None
        cache = body["config_cache"]
        assert cache["path"] == str(data_dir / CACHE_FILE)
        assert cache["error"].startswith("not a config snapshot (")
        assert cache["quarantined_as"] == str(quarantined)
        # It goes on as before: trying to reach the control plane.
        await wait_for(lambda: dp.client.state.last_error is not None,
                       message="a connection attempt to the CP")
    finally:
        await dp.stop()
