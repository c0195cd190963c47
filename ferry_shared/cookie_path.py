"""The ``Path`` of the cookie consistent hashing generates, checked once for both planes.

An upstream hashing on a cookie (``hash_on: cookie``) makes the data plane answer a
request without that cookie with ``Set-Cookie: <name>=<uuid>; Path=<hash_on_cookie_path>;
HttpOnly``. The path is written into that header as it is, so it must be a valid
``path-value`` of RFC 6265 §4.1.1 (any CHAR except CTLs or ``;``): a ``;`` would end the
attribute and start another, a CR or LF would end the header. The data plane refuses a
config with such a path (a NACK), so the control plane must refuse it first, with this
same function (issue 12: what the CP accepts, every DP of the same version applies).
"""

from __future__ import annotations

__all__ = ["cookie_path_problem"]


def cookie_path_problem(path: object) -> str | None:
    """Why ``path`` cannot be a cookie's ``Path`` attribute, or ``None`` when it can.

    It must be a string starting with ``/`` made of printable ASCII (``0x20``-``0x7e``)
    without ``;``. The reason is one short phrase, e.g. ``"';' is not allowed"``.
    """
    if not isinstance(path, str):
        return "expected a string"
    if not path.startswith("/"):
        return "must start with '/'"
    if ";" in path:
        return "';' is not allowed"
    if not all(" " <= char <= "~" for char in path):
        return "only printable ASCII characters are allowed"
    return None
