"""Ferry: a hybrid-mode API gateway.

This package holds what both planes share (the snapshot format, the embedded
Redis runner, logging set-up) and the ``ferry`` command line, which is the only
place that imports both ``control_plane`` and ``data_plane``.
"""

__version__ = "0.1.0"
