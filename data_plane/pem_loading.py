"""Loading a certificate and its private key into an ``ssl.SSLContext`` from PEM text,
for the proxy's TLS listeners (``tls_termination``) and for TLS to targets
(``upstream_tls``).

``SSLContext.load_cert_chain`` reads paths only, and a key must never reach the disk,
so the PEM text goes through anonymous memory files (``os.memfd_create``, Linux) that
are closed as soon as OpenSSL has read them. An encrypted key fails at once instead
of OpenSSL prompting for a pass phrase on the terminal.
"""

from __future__ import annotations

import os
import ssl


class PemLoadError(ValueError):
    """A certificate or key OpenSSL refused; the message gives OpenSSL's reason, never PEM text."""


def _memory_file(name: str, text: str) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(text.encode())
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _no_password() -> bytes:
    raise PemLoadError("the private key is encrypted")


def load_pem_pair(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Load ``cert_pem`` (a chain: leaf first) and ``key_pem`` into ``context``.

    Raises :class:`PemLoadError`: unparsable PEM, a key that does not match, an
    encrypted key, or no ``memfd_create`` (not Linux).
    """
    if not hasattr(os, "memfd_create"):
        raise PemLoadError("loading certificates needs Linux (memfd_create)")
    cert_fd = _memory_file("ferry-cert", cert_pem)
    try:
        key_fd = _memory_file("ferry-key", key_pem)
        try:
            context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}", password=_no_password)
        finally:
            os.close(key_fd)
    except PemLoadError:
        raise
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None)
        raise PemLoadError(str(reason) if reason else str(exc) or type(exc).__name__) from None
    finally:
        os.close(cert_fd)
