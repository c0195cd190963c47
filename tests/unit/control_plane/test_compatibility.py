"""Kong's hybrid-mode version rule: same major, DP minor not newer than the CP's."""

from __future__ import annotations

import pytest

from control_plane.compatibility import incompatibility


@pytest.mark.parametrize(
    ("cp", "dp", "reason"),
    [
        ("3.4.0", "3.4.9", None),
        ("3.4.0", "3.0.0", None),
        ("3.4.0", "v3.2.1-rc1", None),
        ("3.4.0", "3.5.0", "newer than control plane version 3.4.0"),
        ("3.4.0", "2.8.0", "different major version"),
        ("3.4.0", "4.0.0", "different major version"),
        ("3.4.0", "nightly", "not a version"),
        ("dev", "3.4.0", None),
    ],
)
def test_incompatibility(cp: str, dp: str, reason: str | None) -> None:
    found = incompatibility(cp, dp)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found
