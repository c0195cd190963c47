"""Compiling an upstream's ``healthchecks``: Ferry's ``active.unhealthy.other_statuses``."""

from __future__ import annotations

import pytest

from data_plane.health.settings import compile_health_settings


def test_other_statuses_is_off_by_default_as_kong_behaves() -> None:
    settings = compile_health_settings({"active": {"unhealthy": {"http_failures": 1}}})
    assert settings.active.unhealthy_other_statuses is False
    assert compile_health_settings(
        {"active": {"unhealthy": {"other_statuses": None}}}
    ).active.unhealthy_other_statuses is False


def test_other_statuses_true_is_kept() -> None:
    settings = compile_health_settings({"active": {"unhealthy": {"other_statuses": True}}})
    assert settings.active.unhealthy_other_statuses is True


@pytest.mark.parametrize("value", [1, "true", [True]])
def test_other_statuses_must_be_a_boolean(value: object) -> None:
    with pytest.raises(ValueError, match="other_statuses' must be a boolean"):
        compile_health_settings({"active": {"unhealthy": {"other_statuses": value}}})
