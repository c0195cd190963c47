"""Which hot path runs: compiled (mypyc) or the pure-Python source, all modules together."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_plane import hot_path

MODULES = ("pkg.fast", "pkg.faster")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _tree(
    tmp_path: Path,
    *,
    compiled: tuple[str, ...],
    stale: tuple[str, ...] = (),
    checkout: bool = True,
    record: bool = True,
) -> None:
    """Sources of MODULES, the ``compiled`` ones with an extension; in a checkout the
    build record holds each source's digest as built, then the ``stale`` ones change."""
    (tmp_path / "pkg").mkdir()
    if checkout:
        (tmp_path / "setup.py").write_text("")
    for module in MODULES:
        name = module.split(".")[1]
        (tmp_path / "pkg" / f"{name}.py").write_text(f"X = {name!r}\n")
        if module in compiled:
            (tmp_path / "pkg" / f"{name}{SUFFIX}").write_bytes(b"")
    if checkout and record:
        hot_path.write_build_record(hot_path.source_digests(MODULES))
    for module in stale:
        name = module.split(".")[1]
        (tmp_path / "pkg" / f"{name}.py").write_text(f"X = {name!r} + ' edited'\n")


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(hot_path, "_ROOT", tmp_path)
    monkeypatch.delenv(hot_path.NO_EXTENSIONS_ENV, raising=False)
    return tmp_path


def test_every_module_compiled_and_up_to_date_runs_compiled(fake_root: Path) -> None:
    _tree(fake_root, compiled=MODULES)
    assert hot_path.choose(MODULES) == hot_path.HotPath("compiled", None)


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_environment_switch_runs_the_source(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    _tree(fake_root, compiled=MODULES)
    monkeypatch.setenv(hot_path.NO_EXTENSIONS_ENV, value)
    chosen = hot_path.choose(MODULES)
    assert chosen.mode == "python" and chosen.reason == "FERRY_NO_EXTENSIONS is set"


def test_an_empty_or_zero_switch_leaves_the_compiled_path(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(fake_root, compiled=MODULES)
    for value in ("", "0"):
        monkeypatch.setenv(hot_path.NO_EXTENSIONS_ENV, value)
        assert hot_path.choose(MODULES).mode == "compiled"


def test_one_module_missing_its_build_runs_every_module_from_source(fake_root: Path) -> None:
    _tree(fake_root, compiled=MODULES[:1])
    chosen = hot_path.choose(MODULES)
    assert chosen.mode == "python" and chosen.reason == "pkg.faster is not compiled"


def test_a_build_of_an_older_source_is_not_run(fake_root: Path) -> None:
    _tree(fake_root, compiled=MODULES, stale=MODULES[1:])
    chosen = hot_path.choose(MODULES)
    assert chosen.mode == "python"
    assert chosen.reason == "faster.py changed since it was compiled (rebuild)"


def test_a_source_edited_during_the_build_is_not_run_though_older_than_the_build(
    fake_root: Path,
) -> None:
    # The digest is taken when mypyc reads the sources; the edit lands before the
    # build's output is written, so the output is newer than the edited file.
    _tree(fake_root, compiled=MODULES, stale=MODULES[:1])
    for module in MODULES:
        name = module.split(".")[1]
        os.utime(fake_root / "pkg" / f"{name}.py", (1000, 1000))
        os.utime(fake_root / "pkg" / f"{name}{SUFFIX}", (2000, 2000))
    chosen = hot_path.choose(MODULES)
    assert chosen.mode == "python" and chosen.reason == "fast.py changed since it was compiled (rebuild)"


def test_a_checkout_without_a_build_record_runs_the_source(fake_root: Path) -> None:
    _tree(fake_root, compiled=MODULES, record=False)
    chosen = hot_path.choose(MODULES)
    assert chosen.mode == "python" and chosen.reason is not None and "no record" in chosen.reason


def test_an_installed_package_runs_compiled_without_a_record(fake_root: Path) -> None:
    _tree(fake_root, compiled=MODULES, stale=MODULES, checkout=False)
    assert hot_path.choose(MODULES).mode == "compiled"


def test_this_checkouts_record_matches_its_sources_when_it_runs_compiled() -> None:
    if hot_path.current().mode != "compiled":
        pytest.skip(f"this run is on the pure-Python path ({hot_path.current().reason})")
    record = json.loads((Path(hot_path.__file__).resolve().parent.parent / hot_path.BUILD_RECORD).read_text())
    assert record == hot_path.source_digests()


def _loaded_from(env: dict[str, str]) -> list[str]:
    code = (
        "import data_plane.proxy.client, data_plane.balancers.base, data_plane.hot_path as h; "
        "print(h.current().mode, data_plane.proxy.client.__file__, data_plane.balancers.base.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.split()


def test_the_switch_makes_a_process_import_every_hot_module_from_its_source() -> None:
    env = {**os.environ, hot_path.NO_EXTENSIONS_ENV: "1"}
    mode, *files = _loaded_from(env)
    assert mode == "python"
    assert all(f.endswith(".py") for f in files)


def test_this_run_exercises_the_path_make_test_asked_for() -> None:
    """``make test`` runs the suite compiled, then the proxy's tests on the source; a
    stale or missing build must not quietly turn the first run into a second one."""
    expected = os.environ.get("FERRY_EXPECT_HOT_PATH")
    if not expected:
        pytest.skip("FERRY_EXPECT_HOT_PATH is not set (make test sets it)")
    assert hot_path.current().mode == expected, hot_path.current().describe()
    if expected == "compiled":
        import data_plane.proxy.client as client

        assert client.__file__ is not None and client.__file__.endswith(SUFFIX)


async def test_a_data_plane_says_which_path_it_runs_in_its_log_and_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import aiohttp

    from data_plane.server import DataPlane, DataPlaneSettings
    from ferry_shared.listen import free_port

    dp = DataPlane(
        DataPlaneSettings(
            control_plane=f"127.0.0.1:{free_port()}",  # no control plane: not needed here
            proxy_listen="127.0.0.1:0",
            status_listen="127.0.0.1:0",
            data_dir=tmp_path,
            cluster_insecure=True,
        )
    )
    caplog.set_level("INFO", logger="ferry.data_plane")
    try:
        await dp.start()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{dp.status_port}/status") as response:
                body = await response.json()
    finally:
        await dp.stop()
    running = hot_path.current()
    assert body["hot_path"] == running.as_json()
    assert body["hot_path"]["modules"] == list(hot_path.HOT_MODULES)
    assert f"running the {running.describe()}" in caplog.text
