"""Ferry's command line: the ``ferry`` commands, ``ferry up``, ``ferry dump``/``apply``,
certificate generation and the demo backend. The only package that imports both
``control_plane`` and ``data_plane``; the code both planes share is ``ferry_shared``.
"""

from ferry_shared import __version__

__all__ = ["__version__"]
