"""``ferry dump`` / ``ferry apply`` as real processes against real control planes.

Two control planes share the session's Redis under different key prefixes, so
each is a separate cluster: "source" is built through the Admin API, "target"
starts empty. The hash compared is the one each control plane publishes to its
data planes (its :class:`SnapshotStore`, fed by its change-stream follower).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from control_plane.server import ControlPlane
from tests.support.admin import AdminClient
from tests.support.control_planes import start_control_plane
from tests.support.polling import wait_for


class Cluster(AdminClient):
    """One control plane (a cluster of its own: its own key prefix) and its Admin API."""

    def __init__(self, plane: ControlPlane, http: aiohttp.ClientSession) -> None:
        super().__init__(http, plane)
        self.plane = plane

    @property
    def url(self) -> str:
        return self.base

    async def config(self) -> dict[str, Any]:
        status, document = await self.call("GET", "/config")
        assert status == 200, document
        return document  # type: ignore[no-any-return]

    async def published_hash(self, version: int) -> str:
        """The hash this control plane publishes once it has loaded ``version``."""
        snapshot = await wait_for(
            lambda: (s := self.plane.snapshots.current) is not None and s.version == version and s,
            message=f"the control plane to publish version {version}",
        )
        return snapshot.hash


@pytest.fixture
async def clusters(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Cluster, Cluster]]:
    planes: list[ControlPlane] = []
    async with aiohttp.ClientSession() as http:
        try:
            for prefix in ("source", "target"):
                planes.append(
                    await start_control_plane(redis_url, tmp_path / prefix, redis_prefix=prefix)
                )
            yield Cluster(planes[0], http), Cluster(planes[1], http)
        finally:
            for plane in planes:
                await plane.stop(grace=0.5)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def ferry(*args: str, stdin: str | None = None, env_extra: dict[str, str] | None = None) -> Result:
    """Run ``python -m ferry ARGS`` to completion (killed after 60 s) without FERRY_ variables
    but ``env_extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(env_extra or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ferry", *args,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def build_shop(cluster: Cluster) -> None:
    """Entities with every kind of value the format must carry exactly."""
    await cluster.make("/upstreams", {
        "name": "shop.internal", "algorithm": "consistent-hashing", "hash_on": "header",
        "hash_on_header": "x-user", "slow_start": 1.5, "hash_balance_factor": 150, "tags": ["team-a", "ünïcode"],
        "healthchecks": {"threshold": 33.3, "active": {
            "http_path": "/health", "timeout": 0.5, "headers": {"x-probe": ["ferry"]},
            "healthy": {"interval": 5, "successes": 2},
            "unhealthy": {"interval": 2, "http_failures": 3},
        }},
    })
    await cluster.make("/upstreams/shop.internal/targets", {"target": "10.0.0.1:8080"})
    await cluster.make("/upstreams/shop.internal/targets", {"target": "[::1]", "weight": 0})
    await cluster.make("/services", {"name": "shop", "url": "https://shop.internal:8443/api",
                                     "retries": 2, "tags": ["yes", "null", "123"]})
    await cluster.make("/services/shop/routes", {
        "name": "shop", "paths": ["/shop", "~/v[0-9]+/items/(?<id>\\d+)$"], "methods": ["GET"],
        "headers": {"x-mode": ["~*^on$", "true"]}, "hosts": ["*.example.com"], "strip_path": False,
    })
    await cluster.make("/routes", {"name": "unbound", "paths": ["/nothing"]})


async def test_dump_then_apply_on_an_empty_cluster_reproduces_the_config_hash(
    clusters: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    source, target = clusters
    await build_shop(source)
    source_config = await source.config()
    source_hash = await source.published_hash(source_config["_config_version"])
    assert source_config["_config_hash"] == source_hash

    dump_file = tmp_path / "shop.yaml"
    dumped = await ferry("dump", "--admin-url", source.url, "-o", str(dump_file))
    assert dumped.returncode == 0, dumped.stderr
    assert f"hash {source_hash}" in dumped.stderr
    assert yaml.safe_load(dump_file.read_text())["_config_hash"] == source_hash

    applied = await ferry("apply", str(dump_file), "--admin-url", target.url)
    assert applied.returncode == 0, applied.stderr
    assert "summary: 6 to create, 0 to update, 0 to delete" in applied.stdout
    assert f"applied: configuration version 1, hash {source_hash}" in applied.stdout

    # One version on the target, whose published snapshot has the source's hash.
    assert await target.published_hash(1) == source_hash
    target_config = await target.config()
    assert target_config == {**source_config, "_config_version": 1}


async def test_dump_writes_yaml_to_standard_output(clusters: tuple[Cluster, Cluster]) -> None:
    source, _ = clusters
    await build_shop(source)
    dumped = await ferry("dump", "--admin-url", source.url)
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout.startswith("_format_version: '3.0'\n")
    assert yaml.safe_load(dumped.stdout) == await source.config()


async def test_dry_run_prints_the_diff_and_writes_nothing(
    clusters: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    source, _ = clusters
    await build_shop(source)
    before = await source.config()
    edited = yaml.safe_load((await ferry("dump", "--admin-url", source.url)).stdout)
    edited["upstreams"][0]["healthchecks"]["active"]["healthy"]["interval"] = 10
    edited["services"][0]["retries"] = 4
    edited["routes"] = [r for r in edited["routes"] if r["name"] != "unbound"]
    edited["targets"].append({"target": "10.0.0.3:8080", "upstream": {"name": "shop.internal"}})
    file = tmp_path / "edited.yaml"
    file.write_text(yaml.safe_dump(edited))

    result = await ferry("apply", str(file), "--dry-run", "--admin-url", source.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    upstream_id = before["upstreams"][0]["id"]
    assert lines[0:2] == [
        f"updating upstream shop.internal ({upstream_id})",
        "    healthchecks.active.healthy.interval: 5 -> 10",
    ]
    assert lines[2].startswith("creating target 10.0.0.3:8080 of upstream shop.internal (")
    assert lines[3].startswith("updating service shop (") and lines[4] == "    retries: 2 -> 4"
    assert lines[5].startswith("deleting route unbound (")
    assert lines[6:] == [
        "summary: 1 to create, 2 to update, 1 to delete",
        f"dry run: nothing applied (configuration version {before['_config_version']})",
    ]
    assert await source.config() == before


async def test_apply_of_a_file_without_some_entities_deletes_them(
    clusters: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    source, _ = clusters
    await build_shop(source)
    before = await source.config()
    file = tmp_path / "smaller.yaml"
    file.write_text(
        '_format_version: "3.0"\n'
        "upstreams:\n- name: shop.internal\n  targets:\n  - target: 10.0.0.1:8080\n"
    )
    result = await ferry("apply", str(file), "--admin-url", source.url)
    assert result.returncode == 0, result.stderr
    assert "summary: 0 to create, 1 to update, 4 to delete" in result.stdout
    after = await source.config()
    assert after["_config_version"] == before["_config_version"] + 1
    assert [u["name"] for u in after["upstreams"]] == ["shop.internal"]
    assert [t["target"] for t in after["targets"]] == ["10.0.0.1:8080"]
    assert after["targets"][0] == next(t for t in before["targets"] if t["target"] == "10.0.0.1:8080")
    assert after["services"] == after["routes"] == []
    assert await source.published_hash(after["_config_version"]) == after["_config_hash"]


async def test_apply_of_an_unchanged_file_says_so_and_writes_nothing(
    clusters: tuple[Cluster, Cluster],
) -> None:
    source, _ = clusters
    await build_shop(source)
    before = await source.config()
    dumped = (await ferry("dump", "--admin-url", source.url)).stdout
    result = await ferry("apply", "-", "--admin-url", source.url, stdin=dumped)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "no changes: the control plane already has this configuration "
        f"(version {before['_config_version']}, hash {before['_config_hash']}); nothing written\n"
    )
    assert await source.config() == before


async def test_an_invalid_file_is_refused_naming_entity_and_field_and_nothing_changes(
    clusters: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    source, _ = clusters
    await build_shop(source)
    before = await source.config()
    file = tmp_path / "invalid.yaml"
    file.write_text(
        '_format_version: "3.0"\n'
        "services:\n- name: ok\n  host: ok\n- name: orders\n  host: orders\n  port: 70000\n"
        "  routes:\n  - name: orders\n    paths: [orders]\n"
    )
    result = await ferry("apply", str(file), "--admin-url", source.url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"ferry: error: {file} is not a valid configuration:",
        "  services.2 (service 'orders'): port: value should be between 0 and 65535",
        "  services.2.routes.1 (route 'orders'): paths.1: should start with: / (fixed path) or ~/ (regex path)",
    ]
    assert await source.config() == before

    file.write_text("services: [\n")
    result = await ferry("apply", str(file), "--admin-url", source.url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"ferry: error: {file} is not a declarative configuration: ")


async def test_an_unreachable_control_plane_is_an_error(tmp_path: Path) -> None:
    from ferry_shared.listen import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = await ferry("dump", "--admin-url", url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"ferry: error: cannot reach the Admin API at {url}: ")
    file = tmp_path / "empty.yaml"
    file.write_text('_format_version: "3.0"\n')
    result = await ferry("apply", str(file), "--admin-url", url)
    assert result.returncode == 1 and "cannot reach the Admin API" in result.stderr


def test_dump_and_apply_document_every_flag_with_its_environment_variable() -> None:
    for command in ("dump", "apply"):
        result = subprocess.run([sys.executable, "-m", "ferry", command, "--help"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0
        text = result.stdout.replace("\n", " ")
        flags = [word.rstrip(",") for word in result.stdout.split() if word.startswith("--")]
        for flag in set(flags) - {"--help"}:
            assert "FERRY_" + flag[2:].replace("-", "_").upper() in text, f"{command} {flag}"
        assert "FERRY_ADMIN_URL" in text


async def test_dump_and_apply_send_the_admin_token_of_a_guarded_control_plane(
    redis_url: str, tmp_path: Path
) -> None:
    from control_plane.admin_tokens import add_token

    tokens = tmp_path / "tokens.yaml"
    token = add_token(tokens, "ci", "admin")
    reader = add_token(tokens, "viewer", "read-only")
    cp = await start_control_plane(redis_url, tmp_path / "cp", admin_tokens=tokens)
    try:
        url = f"http://127.0.0.1:{cp.admin_port}"
        denied = await ferry("dump", "--admin-url", url)
        assert denied.returncode == 1
        assert "401" in denied.stderr and "Invalid credentials" in denied.stderr
        file = tmp_path / "one.yaml"
        file.write_text('_format_version: "3.0"\nupstreams:\n- name: u1\n')
        applied = await ferry("apply", str(file), "--admin-url", url, env_extra={"FERRY_ADMIN_TOKEN": token})
        assert applied.returncode == 0, applied.stderr
        read_only = await ferry("apply", str(file), "--admin-url", url, "--admin-token", reader)
        assert read_only.returncode == 0 and "no changes" in read_only.stdout
        dumped = await ferry("dump", "--admin-url", url, "--admin-token", reader)
        assert dumped.returncode == 0, dumped.stderr
        assert [u["name"] for u in yaml.safe_load(dumped.stdout)["upstreams"]] == ["u1"]
        file.write_text('_format_version: "3.0"\nupstreams:\n- name: u2\n')
        refused = await ferry("apply", str(file), "--admin-url", url, "--admin-token", reader)
        assert refused.returncode == 1 and "403" in refused.stderr, refused.stderr
        assert token not in applied.stdout + applied.stderr
    finally:
        await cp.stop(0.5)
