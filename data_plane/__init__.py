"""The data plane. Importing it chooses, once, whether the hot path runs compiled
or as plain Python (:mod:`data_plane.hot_path`), before any module of it loads."""

from data_plane import hot_path as _hot_path

_hot_path.install()
