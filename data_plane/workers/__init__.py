"""Proxy worker processes (``--workers N``): the worker process itself
(:mod:`.worker`), the node's side that spawns workers and feeds them configs
(:mod:`.hub`), the local link between them (:mod:`.link`) and the metrics files the
node sums (:mod:`.metrics`).
"""
