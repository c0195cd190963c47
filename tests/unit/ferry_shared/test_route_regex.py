import re

import pytest

from ferry_shared.route_regex import (
    MAX_GROUP_DEPTH,
    RouteRegexError,
    compile_header_regex,
    compile_path_regex,
    pcre_to_python,
)


def test_pcre_named_groups_become_python_named_groups():
    pattern = pcre_to_python(r"/items/(?<id>\d+)/(?<rest>.*)")
    assert re.match(pattern, "/items/42/x").groupdict() == {"id": "42", "rest": "x"}  # type: ignore[union-attr]


def test_lookbehinds_escapes_and_python_groups_are_left_alone():
    for pattern in [r"(?<=a)b", r"(?<!a)b", r"\(?<id>", r"(?P<id>\d+)"]:
        assert pcre_to_python(pattern) == pattern


# ------------------------------------------------- the one compiler both planes use


def test_paths_compile_as_bytes_patterns_with_python_named_groups():
    pattern = compile_path_regex(r"/items/(?<id>\d+)")
    match = pattern.match(b"/items/42")
    assert match is not None and match.groupdict() == {"id": b"42"}
    assert compile_path_regex("/é+").fullmatch("/éé".encode()) is None  # "+" repeats a byte
    assert compile_path_regex(r"/\xc3\xa9").match("/é".encode())


def test_header_regexes_ignore_case():
    assert compile_header_regex(r"^v\d$").search(b"V2")


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"/\u0041bc", r"bad escape \u at position 1"),
        (r"/\U0001F600", r"bad escape \U at position 1"),
        (r"/\N{LATIN SMALL LETTER A}", r"bad escape \N at position 1"),
        ("/(?u)a", "bad inline flags: cannot use 'u' flag with a bytes pattern at position 4"),
        # Positions count characters as written: not UTF-8 bytes, not the inserted "P".
        ("/é(", "missing ), unterminated subpattern at position 2"),
        ("/(?<a>x)(?<b>y)(", "missing ), unterminated subpattern at position 15"),
        ("/a{99999999999}", "the repetition number is too large"),
        ("/\ud800", "not valid Unicode text (a lone surrogate) at position 1"),
        ("(" * (MAX_GROUP_DEPTH + 1), f"parentheses nested {MAX_GROUP_DEPTH + 1} deep (at most {MAX_GROUP_DEPTH})"),
    ],
)
def test_what_cannot_compile_raises_one_error_type_with_the_reason(pattern: str, reason: str):
    for compile_ in (compile_path_regex, compile_header_regex):
        with pytest.raises(RouteRegexError) as raised:
            compile_(pattern)
        assert str(raised.value) == reason


def test_nesting_is_counted_outside_classes_and_escapes():
    deep = "(" * MAX_GROUP_DEPTH + ")" * MAX_GROUP_DEPTH
    assert compile_path_regex(deep)
    assert compile_path_regex(deep + r"[(((]\(\(")
    assert compile_path_regex("[](]" + deep)  # "]" first in a class is a literal
