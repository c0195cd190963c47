"""Target health on a data plane: Kong's health checker (active probes and passive
counters, :mod:`.checker`), its compiled settings (:mod:`.settings`), the probes over
real sockets (:mod:`.probe`), the supervisor that runs checkers and reports to the
control plane (:mod:`.supervisor`) and the health messages it sends (:mod:`.messages`).
"""
