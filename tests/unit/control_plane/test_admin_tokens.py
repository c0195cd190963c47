"""The admin tokens file: generated tokens, hashes only on disk, clear errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from control_plane.admin_tokens import (
    AdminTokenError,
    add_token,
    load_admin_tokens,
    token_hash,
)
from ferry.cli import main


def test_an_added_token_is_identified_with_its_role_and_only_its_hash_is_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.yaml"
    ops = add_token(path, "ops", "admin")
    viewer = add_token(path, "grafana", "read-only")
    tokens = load_admin_tokens(path)
    assert len(tokens) == 2
    found = tokens.identify(ops)
    assert found is not None and (found.name, found.role) == ("ops", "admin")
    found = tokens.identify(viewer)
    assert found is not None and (found.name, found.role) == ("grafana", "read-only")
    text = path.read_text()
    assert ops not in text and viewer not in text
    assert token_hash(ops) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_wrong_or_empty_token_is_not_identified(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    token = add_token(path, "ops", "admin")
    tokens = load_admin_tokens(path)
    assert tokens.identify("") is None
    assert tokens.identify(token + "x") is None
    assert tokens.identify(token.upper()) is None


def test_generated_tokens_are_long_and_distinct(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    tokens = {add_token(path, f"user{i}", "read-only") for i in range(20)}
    assert len(tokens) == 20
    assert all(len(t) >= 40 for t in tokens)


def test_a_second_token_with_the_same_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    add_token(path, "ops", "admin")
    with pytest.raises(AdminTokenError, match="already has a token named 'ops'"):
        add_token(path, "ops", "read-only")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens: []\n", "holds no token"),
        ("", "holds no token"),
        ("tokens: [1, 2\n", "is not YAML"),
        ("tokens:\n  - {name: a, role: root, sha256: " + "f" * 64 + "}\n", "tokens.0.role"),
        ("tokens:\n  - {name: a, role: admin, sha256: abc}\n", "tokens.0.sha256"),
        ("tokens:\n  - {name: a, role: admin, token: plain}\n", "tokens.0.token"),
        (
            "tokens:\n  - {name: a, role: admin, sha256: " + "a" * 64 + "}\n"
            "  - {name: a, role: read-only, sha256: " + "b" * 64 + "}\n",
            "names a twice",
        ),
        ("tokens:\n  - {name: a, role: admin, sha256: " + "1" * 64 + "}\n", "must be quoted"),
    ],
)
def test_an_unusable_tokens_file_says_why(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(AdminTokenError, match=message):
        load_admin_tokens(path)


def test_a_missing_tokens_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(AdminTokenError, match="cannot read the admin tokens file"):
        load_admin_tokens(tmp_path / "absent.yaml")


def test_upper_case_hashes_from_other_tools_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - {{name: ci, role: admin, sha256: {token_hash('t0k3n').upper()}}}\n")
    assert load_admin_tokens(path).identify("t0k3n") is not None


def test_the_admin_token_command_prints_a_token_that_the_file_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.yaml"
    assert main(["admin-token", "add", "--file", str(path), "--name", "ci", "--role", "read-only"]) == 0
    token = capsys.readouterr().out.strip()
    found = load_admin_tokens(path).identify(token)
    assert found is not None and found.role == "read-only"
    assert main(["admin-token", "add", "--file", str(path), "--name", "ci"]) == 2
    assert "already has a token named 'ci'" in capsys.readouterr().err


def test_a_tokens_file_in_a_missing_directory_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "absent" / "tokens.yaml"
    assert main(["admin-token", "add", "--file", str(path), "--name", "ci"]) == 2
    err = capsys.readouterr().err
    assert f"the directory {path.parent} does not exist" in err
    assert not path.parent.exists()
