"""Kong route regexes (PCRE syntax) in Python's ``re`` dialect.

Kong users write named captures the PCRE way, ``(?<name>...)``; Python's ``re``
only knows ``(?P<name>...)``. Both planes translate the same way: the control
plane to validate a route, the data plane to compile it.
"""

from __future__ import annotations

import re

# "(?<" followed by a name, not by "=" or "!" (lookbehind), and not escaped.
_PCRE_NAMED_GROUP = re.compile(r"(?<!\\)\(\?<(?=[A-Za-z_])")


def pcre_to_python(pattern: str) -> str:
    """Rewrite PCRE named groups ``(?<name>`` as ``(?P<name>``; the rest is left as is."""
    return _PCRE_NAMED_GROUP.sub("(?P<", pattern)
