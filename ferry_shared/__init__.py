"""Code both planes import: the cluster link and its TLS, the snapshot format, target
health, route regexes, the one parser of Kong's target grammar, logging and listen
addresses. It imports neither ``control_plane`` nor ``data_plane`` (arrows point down
only: CLI → planes → this package).
"""

__version__ = "0.1.0"
