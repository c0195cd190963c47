"""Log formats: one JSON object a line, text lines, and secrets masked in both."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from ferry_shared import logging_setup
from ferry_shared.logging_setup import JSONFormatter, TextFormatter, configure_logging, redact


@pytest.fixture
def restore_root_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # configure_logging remembers the format for the whole process: undo that too.
    monkeypatch.setattr(logging_setup, "_format", logging_setup.current_log_format())
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("ferry.test", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_time_level_component_logger_message_and_fields() -> None:
    line = JSONFormatter("data-plane").format(
        _record("proxied %s", "GET /", fields={"status": 200, "uri": "/a?b=1"})
    )
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["component"] == "data-plane"
    assert entry["logger"] == "ferry.test"
    assert entry["message"] == "proxied GET /"
    assert entry["status"] == 200 and entry["uri"] == "/a?b=1"
    assert entry["time"].endswith("Z") and entry["time"][10] == "T"


def test_a_traceback_stays_inside_one_json_line() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JSONFormatter("cp").format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_fields_cannot_overwrite_the_standard_keys() -> None:
    entry = json.loads(JSONFormatter("cp").format(_record("hello", fields={"message": "forged"})))
    assert entry["message"] == "hello"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("cannot reach redis://:s3cret@10.0.0.1:6379/0", "s3cret"),
        ("using rediss://default:hunter2@redis.example:6380", "hunter2"),
        ("redis+sentinel://:pw1@s1:26379,s2:26379/mymaster", "pw1"),
        ("header Ferry-Admin-Token: ferry_abcDEF123", "ferry_abcDEF123"),
        ("Authorization: Bearer ferry_tok", "ferry_tok"),
        ('{"kong-admin-token": "kat"}', "kat"),
    ],
)
def test_secrets_are_masked_in_every_format(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "***" in redact(text)
    assert secret not in TextFormatter("cp").format(_record("%s", text))
    assert secret not in JSONFormatter("cp").format(_record("%s", text))
    assert secret not in JSONFormatter("cp").format(_record("x", fields={"detail": text}))


def test_text_without_secrets_is_left_alone() -> None:
    text = "data plane 1f0c connected from 10.0.0.7 (http://example.com/a@b is not a password)"
    assert redact(text) == text


def test_configure_logging_switches_format_and_level(
    restore_root_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("warning", component="cp", log_format="json")
    logging.getLogger("ferry.x").info("hidden")
    logging.getLogger("ferry.x").warning("shown %d", 1)
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["shown 1"]


def test_an_unknown_format_is_refused(restore_root_logger: None) -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("info", log_format="xml")  # type: ignore[arg-type]


def test_the_text_format_is_one_human_line(restore_root_logger: None) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("dp"))
    logger = logging.getLogger("ferry.text-test")
    logger.addHandler(handler)
    try:
        logger.warning("target %s down", "10.0.0.3:80")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().strip().endswith("WARNING [dp] ferry.text-test: target 10.0.0.3:80 down")
