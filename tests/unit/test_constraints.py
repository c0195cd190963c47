"""constraints.txt pins every install (`make test`, `make demo`, CI): each dependency
pyproject.toml names is pinned there, at a version its specifier admits, and what this
environment runs is what is pinned."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    pinned: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not pinned with =="
        pinned[canonicalize_name(name)] = version
    return pinned


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        names.extend(extra)
    names.extend(project["build-system"]["requires"])
    return [Requirement(n) for n in names]


def test_every_dependency_of_pyproject_is_pinned_at_a_version_it_admits() -> None:
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in constraints.txt (run make constraints)"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned[name]}, outside {req}"
        )


def test_this_environment_runs_the_pinned_versions() -> None:
    pinned = pins()
    wrong = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pinned and dist.version != pinned[name]:
            wrong.append(f"{name} {dist.version} (pinned {pinned[name]})")
    assert not wrong, "installed outside constraints.txt: " + ", ".join(sorted(wrong))
