"""Runs the health checkers of the data plane's current config and collects their
transitions for the control plane.

The config installer gives each compiled upstream its :class:`HealthChecker`
(``config_installer.attach_checkers``: the previous version's, or a new one handed
its state); :meth:`HealthSupervisor.apply` is called right after a config is swapped in: it starts the new checkers' probe loops and
stops the replaced ones. Transitions and full views are queued for the cluster client,
which sends them as ``HealthReport`` messages; manual overrides from the control plane
arrive through :meth:`override`.

Every full view carries every address of every upstream (``HEALTHCHECKS_OFF`` where
checks are off, so the control plane lists them) and one ``DNS_ERROR`` row (no
address) for each target whose name did not resolve (``dns_errors``, set to the DNS
resolver's).

An upstream that is deleted and created again (a new id, the same name) within
``RETIRED_KEEP_SECONDS`` gets back the addresses its predecessor held unhealthy, as
Kong's health checker keeps its state for a while after its upstream is removed
(``delayed_clear``).

Single event loop; :meth:`apply` and :meth:`override` never await.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator, Mapping

import aiohttp

import ferry_shared
from data_plane.config_installer import attach_checkers
from data_plane.health.checker import (
    HealthChecker,
    HealthTransition,
    Prober,
    endpoint_of,
    target_key_of,
)
from data_plane.health.grpc_probe import GrpcProber
from data_plane.health.probe import ActiveProber
from data_plane.health.settings import GRPC_PROBE_TYPES
from data_plane.runtime import RuntimeConfig

__all__ = ["HealthSupervisor", "ReportBatch"]

log = logging.getLogger("ferry.data_plane.health")

#: ``(full, rows)``: a full view replaces everything reported before.
ReportBatch = tuple[bool, list[HealthTransition]]

#: Transitions kept while nobody sends them (the next full view supersedes them).
_MAX_QUEUED = 10_000

#: How long the unhealthy addresses of a deleted upstream wait for an upstream of
#: the same name to take them over, seconds.
RETIRED_KEEP_SECONDS = 300.0


def _address_value(key: str) -> tuple[object, str]:
    """``ip:port`` / ``[v6]:port`` as a comparable value (the text when not an IP)."""
    host, _, port = key.rpartition(":")
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host), port
    except ValueError:
        return host.lower(), port


def _changed_rows(checker: HealthChecker, replaced: HealthChecker | None) -> list[HealthTransition]:
    """``checker``'s rows that say something ``replaced`` (the checker it took over
    from, whose rows the control plane holds) did not: new addresses and changed
    states. All its rows when it replaced none."""
    return checker.report_rows(unless=replaced.row_summaries() if replaced is not None else None)


class HealthSupervisor:
    """Owns the running checkers and the report queue. Create it on the event loop."""

    def __init__(self, node_name: str = "") -> None:
        self._user_agent = f"ferry/{ferry_shared.__version__} health-check" + (
            f" ({node_name})" if node_name else ""
        )
        #: Health-check sharding: upstream id -> the targets this DP probes; ``None``
        #: when the control plane does not shard (every DP probes every target).
        self._assignment: dict[str, frozenset[str]] | None = None
        self._running: dict[str, HealthChecker] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._config: RuntimeConfig | None = None
        #: Batches for the control plane, in order. The cluster client drains it.
        self.reports: asyncio.Queue[ReportBatch] = asyncio.Queue()
        #: Called with every transition as it happens (the worker hub shares them).
        self.listeners: list[Callable[[HealthTransition], None]] = []
        #: Targets (``host:port``) left without an address by DNS, with the error
        #: (the DNS resolver's ``dns_errors``); reported as ``DNS_ERROR`` rows.
        self.dns_errors: Callable[[], Mapping[str, str]] | None = None
        #: Upstream name -> (monotonic deadline, address key -> reason) of the
        #: unhealthy addresses of upstreams that were deleted.
        self._retired: dict[str, tuple[float, dict[str, str]]] = {}
        self._monotonic: Callable[[], float] = time.monotonic

    def _probe_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Probes never reuse connections (Kong sends Connection: close).
            connector = aiohttp.TCPConnector(force_close=True, limit=0)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False
            )
        return self._session

    def _prober_for(self, checker: HealthChecker) -> Prober:
        """The probes of ``checker``'s active type: gRPC health calls or HTTP/TCP."""
        active = checker.settings.active
        if active.type in GRPC_PROBE_TYPES:
            return GrpcProber(active, user_agent=self._user_agent)
        return ActiveProber(active, self._probe_session(), user_agent=self._user_agent)

    def apply(self, config: RuntimeConfig) -> None:
        """Start the checkers of ``config`` and stop those it replaced; queue what changed.

        Only checkers that changed are touched. What goes to the control plane is a
        full view when an upstream went away, or a replaced checker lost an address
        or a target (a report of rows cannot remove them), else just the rows of
        the new checkers that say something the control plane does not hold yet
        (new addresses, changed states; nothing at all when no row changed).
        """
        previous, self._config = self._config, config
        attach_checkers(config, previous)  # a config not installed by the installer
        wanted = {
            u.id: u.health for u in config.upstreams.values() if u.health is not None
        }
        self._retire(previous, config)
        full = previous is None
        replaced: dict[str, HealthChecker] = {}
        for upstream_id, checker in list(self._running.items()):
            if wanted.get(upstream_id) is not checker:
                del self._running[upstream_id]
                if upstream_id in wanted:
                    replaced[upstream_id] = checker
                else:
                    full = True  # its rows must go
                task = asyncio.create_task(checker.stop())
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
        started: list[str] = []
        for upstream_id, checker in wanted.items():
            if self._running.get(upstream_id) is checker:
                continue
            started.append(upstream_id)
            self._running[upstream_id] = checker
            checker.on_transition = self._transition
            checker.on_panic = self._panic_changed
            self._revive(config, upstream_id, checker)
            checker.probe_targets = self._targets_for(upstream_id)
            checker.start(self._prober_for(checker))
        if full or any(
            self._lost_rows(previous, config, upstream_id, old)
            for upstream_id, old in replaced.items()
        ):
            self.queue_full_view()
        elif started:
            rows: list[HealthTransition] = []
            for upstream_id in started:
                rows.extend(_changed_rows(self._running[upstream_id], replaced.get(upstream_id)))
            rows.extend(self._dns_error_rows(started))
            panic_flipped = any(
                self._running[u].panic != (u in replaced and replaced[u].panic) for u in started
            )
            if rows or panic_flipped:
                self._queue(False, rows)  # every report carries the panic set

    @staticmethod
    def _lost_rows(
        previous: RuntimeConfig | None, config: RuntimeConfig, upstream_id: str, old: HealthChecker
    ) -> bool:
        """Whether the rows ``old`` (replaced) reported include one the new checker of
        ``upstream_id`` will not report: an address or a configured target gone."""
        new = config.upstreams[upstream_id]
        before = previous.upstreams.get(upstream_id) if previous is not None else None
        if before is None:
            return True
        if not {t.key for t in before.targets} <= {t.key for t in new.targets}:
            return True
        if new.health is None:
            return True
        shown = {(target_key_of(a), endpoint_of(a)) for a in new.health.balancer.addresses}
        return any((target_key_of(a), endpoint_of(a)) not in shown for a in old.balancer.addresses)

    def _retire(self, previous: RuntimeConfig | None, config: RuntimeConfig) -> None:
        """Remember the unhealthy addresses of upstreams ``config`` deleted (by name)."""
        now = self._monotonic()
        self._retired = {n: r for n, r in self._retired.items() if r[0] > now}
        if previous is None:
            return
        for upstream in previous.upstreams.values():
            checker = self._running.get(upstream.id)
            if upstream.id in config.upstreams or checker is None:
                continue
            down = {v.address.key: v.reason for v in checker.view() if v.state == "UNHEALTHY"}
            if down:
                self._retired[upstream.name] = (now + RETIRED_KEEP_SECONDS, down)

    def _revive(self, config: RuntimeConfig, upstream_id: str, checker: HealthChecker) -> None:
        """Hand a re-created upstream the unhealthy addresses its predecessor had."""
        if not self._retired:
            return
        upstream = config.upstreams.get(upstream_id)
        retired = self._retired.pop(upstream.name, None) if upstream is not None else None
        if retired is None or retired[0] <= self._monotonic():
            return
        for key, reason in retired[1].items():
            checker.set_health([key], False, reason or "unhealthy before the upstream was re-created")

    def addresses_changed(self) -> None:
        """Balancers were re-expanded (DNS): refresh thresholds, re-report the view."""
        for checker in self._running.values():
            checker.refresh()
        if self._running:
            self.queue_full_view()

    def _dns_error_rows(self, only: list[str] | None = None) -> list[HealthTransition]:
        """A ``DNS_ERROR`` row (no address) per target of a running upstream (of those
        in ``only``, when given) that DNS left without any address."""
        errors = self.dns_errors() if self.dns_errors is not None else {}
        if not errors or self._config is None:
            return []
        rows: list[HealthTransition] = []
        now = time.time()
        running = self._running
        for upstream_id in running if only is None else only:
            checker = running[upstream_id]
            upstream = self._config.upstreams.get(upstream_id)
            if upstream is None:
                continue
            resolved = {target_key_of(a) for a in checker.balancer.addresses}
            for target in upstream.targets:
                if target.key in errors and target.key not in resolved and target.weight > 0:
                    rows.append(
                        HealthTransition(
                            upstream_id=upstream_id,
                            target_id=checker.target_ids.get(target.key, ""),
                            target=target.key,
                            address="",
                            state="DNS_ERROR",
                            reason=errors[target.key],
                            time=now,
                            weight=target.weight,
                        )
                    )
        return rows

    def queue_full_view(self) -> None:
        """Queue this data plane's complete health view (after connecting or applying)."""
        rows: list[HealthTransition] = []
        for checker in self._running.values():
            # Upstreams without checks too: the control plane lists their addresses.
            rows.extend(checker.report_rows())
        rows.extend(self._dns_error_rows())
        self._queue(True, rows)

    def _queue(self, full: bool, rows: list[HealthTransition]) -> None:
        if full:
            # A full view supersedes everything still queued.
            while not self.reports.empty():
                self.reports.get_nowait()
        elif self.reports.qsize() >= _MAX_QUEUED:
            self.queue_full_view()
            return
        self.reports.put_nowait((full, rows))

    def all_rows(self) -> list[HealthTransition]:
        """The state of every address of every running checker, as report rows."""
        return [row for checker in self._running.values() for row in checker.report_rows()]

    def adopt(self, rows: list[tuple[str, str, str, str, str]]) -> int:
        """Take transitions another process of this node made (a proxy worker's
        passive checks): ``(upstream_id, target, address, state, reason)`` rows, set
        as this node's state whatever it probes. Returns how many changed anything."""
        return sum(
            checker.adopt(key, healthy, reason)
            for checker, keys, _target, healthy, reason in self._usable(rows)
            for key in keys
        )

    def _usable(
        self, rows: list[tuple[str, str, str, str, str]]
    ) -> Iterator[tuple[HealthChecker, list[str], str, bool, str]]:
        """``(checker, local address keys, target, healthy, reason)`` for each row of a
        running upstream with a HEALTHY/UNHEALTHY state; other rows are skipped."""
        for upstream_id, target, address, state, reason in rows:
            checker = self._running.get(upstream_id)
            if checker is None or state not in ("HEALTHY", "UNHEALTHY") or not address:
                continue
            keys = self._local_keys(checker, target, address)
            yield checker, keys, target, state == "HEALTHY", reason

    def _transition(self, transition: HealthTransition) -> None:
        for listener in self.listeners:
            listener(transition)
        if self.reports.qsize() >= _MAX_QUEUED:
            self.queue_full_view()
            return
        self.reports.put_nowait((False, [transition]))

    def _panic_changed(self, panic: bool) -> None:
        """A running checker entered or left panic mode: queue a report (an empty
        batch is enough, since every report carries :meth:`panic_upstreams`)."""
        if self.reports.qsize() >= _MAX_QUEUED:
            self.queue_full_view()
            return
        self.reports.put_nowait((False, []))

    def panic_upstreams(self) -> list[str]:
        """Ids of the running upstreams in panic mode now (sorted)."""
        return sorted(u for u, checker in self._running.items() if checker.panic)

    def _targets_for(self, upstream_id: str) -> frozenset[str] | None:
        if self._assignment is None:
            return None
        return self._assignment.get(upstream_id, frozenset())

    def assign(self, sharded: bool, keys: list[str]) -> None:
        """The control plane's probe assignment: ``upstream_id|target`` keys this DP
        probes actively (``sharded`` False: probe everything, as without sharding)."""
        if not sharded:
            self._assignment = None
        else:
            assignment: dict[str, set[str]] = {}
            for key in keys:
                upstream_id, sep, target = key.partition("|")
                if sep:
                    assignment.setdefault(upstream_id, set()).add(target)
            self._assignment = {u: frozenset(t) for u, t in assignment.items()}
        for upstream_id, checker in self._running.items():
            checker.probe_targets = self._targets_for(upstream_id)

    def verdicts(self, rows: list[tuple[str, str, str, str, str]]) -> int:
        """Apply other data planes' probe verdicts: ``(upstream_id, target, address,
        state, reason)`` rows; states other than HEALTHY/UNHEALTHY are ignored.
        Returns how many were applied."""
        return sum(
            checker.apply_verdict(key, target, healthy, reason)
            for checker, keys, target, healthy, reason in self._usable(rows)
            for key in keys
        )

    @staticmethod
    def _local_keys(checker: HealthChecker, target: str, address: str) -> list[str]:
        """The keys of ``target``'s addresses shown as ``address`` (compared by value:
        the CP writes IPv6 expanded, DNS answers compressed). Several when an SRV
        record's name has several IPs; ``[address]`` when none matches (a state kept
        for when it appears). An empty ``target`` matches any target."""
        wanted = _address_value(address)
        owner = _address_value(target) if target else None
        keys = [
            a.key
            for a in checker.balancer.addresses
            if _address_value(endpoint_of(a)) == wanted
            and (owner is None or _address_value(target_key_of(a)) == owner)
        ]
        return keys or [address]

    def checker(self, upstream_id: str) -> HealthChecker | None:
        return self._running.get(upstream_id)

    def override(self, upstream_id: str, target: str, address: str, healthy: bool) -> bool:
        """Apply an operator's override; False when the upstream or target is unknown.

        ``target`` is the configured ``host:port``; ``address`` one ``ip:port`` of it,
        or ``""`` for all of its addresses.
        """
        checker = self._running.get(upstream_id)
        if checker is None:
            return False
        if address:
            keys = self._local_keys(checker, target, address)
        else:
            owner = _address_value(target)
            keys = [
                a.key for a in checker.balancer.addresses if _address_value(target_key_of(a)) == owner
            ]
            if not keys and target in checker.target_ids:
                keys = [target]  # not resolved (yet): remembered for when it is
        if not keys:
            return False
        checker.set_health(keys, healthy, "manual")
        log.info(
            "upstream %s: %s set %s by the control plane",
            upstream_id, ", ".join(keys), "healthy" if healthy else "unhealthy",
        )
        return True

    async def stop(self) -> None:
        checkers, self._running = list(self._running.values()), {}
        await asyncio.gather(*(c.stop() for c in checkers), *self._stopping, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
