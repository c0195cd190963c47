"""Which data-plane versions a control plane serves (Kong's hybrid-mode rule).

A data plane is served when its major version equals the control plane's and its minor
version is not newer: a CP can feed older DPs of its major line during a rolling
upgrade (CPs first, then DPs), never a DP that may expect config the CP cannot produce.
Patch versions and pre-release suffixes do not matter.
"""

from __future__ import annotations

import re

__all__ = ["incompatibility"]

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.\d+)?")


def _major_minor(version: str) -> tuple[int, int] | None:
    match = _VERSION.match(version)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def incompatibility(cp_version: str, dp_version: str) -> str | None:
    """Why a DP of ``dp_version`` cannot be served by this CP, or ``None`` if it can."""
    cp = _major_minor(cp_version)
    dp = _major_minor(dp_version)
    if dp is None:
        return f"data plane version {dp_version!r} is not a version this control plane understands"
    if cp is None:  # a development build of the CP: serve anything parseable
        return None
    if dp[0] != cp[0]:
        return (
            f"data plane version {dp_version} has a different major version than "
            f"control plane version {cp_version}"
        )
    if dp[1] > cp[1]:
        return (
            f"data plane version {dp_version} is newer than control plane version "
            f"{cp_version}: upgrade the control planes first"
        )
    return None
