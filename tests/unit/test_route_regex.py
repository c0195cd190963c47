import re

from ferry.route_regex import pcre_to_python


def test_pcre_named_groups_become_python_named_groups():
    pattern = pcre_to_python(r"/items/(?<id>\d+)/(?<rest>.*)")
    assert re.match(pattern, "/items/42/x").groupdict() == {"id": "42", "rest": "x"}  # type: ignore[union-attr]


def test_lookbehinds_escapes_and_python_groups_are_left_alone():
    for pattern in [r"(?<=a)b", r"(?<!a)b", r"\(?<id>", r"(?P<id>\d+)"]:
        assert pcre_to_python(pattern) == pattern
