"""Resolution of targets whose host is a DNS name (Kong's DNS client, for balancers).

A target such as ``backend.internal:8080`` is balanced as one peer per A (or AAAA)
record of ``backend.internal``, each with the target's port and weight.
:class:`TargetResolver` keeps that expansion current:

- :meth:`TargetResolver.apply` is awaited by the cluster client between compiling a
  config and swapping it in. It resolves the names the new config needs that are not
  cached yet (bounded by ``timeout``) and hands every upstream's balancer its expanded
  address list, so the first requests on the new config already balance over IPs.
- :meth:`TargetResolver.run` is the one long-lived refresh task. It keeps a heap of
  "when is this name due" entries (one per name, however many targets or upstreams
  share it), re-queries each name when its TTL expires, and re-expands the balancers
  of the current config when an answer changes. Each in-flight lookup is a short-lived
  task so one slow name never delays the others.

Per name the state is one of:

* **pending** — never answered yet (``apply`` timed out, or it is still in flight):
  the target stays in the balancer as the hostname itself and the connection pool
  resolves it per connection (``getaddrinfo``), as before this module existed;
* **resolved** — the sorted addresses of the last good answer, re-queried after
  ``max(ttl, min_ttl)`` seconds;
* **stale** — a refresh failed: the last good answer is kept until ``stale_ttl``
  seconds past its expiry (Kong's ``dns_stale_ttl``), with retries every
  ``error_ttl`` (server errors, timeouts) or ``not_found_ttl`` (NXDOMAIN, no records);
* **failed** — no good answer within the stale window: the target has **no address**
  in the balancer and :meth:`TargetResolver.dns_errors` lists it (``DNS_ERROR`` in the
  health view). Retries continue, and the target comes back when a lookup succeeds.

Lookups follow Kong: ``/etc/hosts`` first (``localhost`` always resolves, to
127.0.0.1, even when the hosts file lacks it), then DNS with A before AAAA — the
first type that has records wins, so a dual-stack name is balanced over its IPv4
addresses, as with Kong's default ``dns_order``. CNAME chains are followed (dnspython
does) and the TTL used is the smallest one along the chain. The resolv.conf
``search``/``ndots`` options apply, so short Kubernetes service names work.

A name with SRV records (Kong's default ``dns_order`` asks SRV before A) is balanced
over the records of the lowest priority value, each with the record's port and weight;
a record whose target is a name is resolved in turn (hosts file, A, AAAA) and the
smallest TTL of the two levels decides when the name is queried again.

Ordering is deterministic: configured targets keep their (sorted) configuration
order and each name's addresses are sorted, so every data plane given the same DNS
answers builds the same address list (consistent hashing needs that). Addresses are
kept per target: when two targets of one upstream expand to the same ``ip:port``,
each keeps its own address (weight, health), as in Kong.

Concurrency: everything runs on the data plane's single event loop; balancers are
mutated only from that loop (``after_targets_changed`` never awaits).

Why past ~600 lines: :class:`TargetResolver` is one state machine (the name states
above, the due-heap, the in-flight lookups and the balancers they feed share its
fields); splitting it would pass that state between modules, not simplify it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import heapq
import ipaddress
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from data_plane.balancers import Address, Balancer
from data_plane.balancers.base import ResolvedAddress
from data_plane.runtime import CompiledUpstream, RuntimeConfig

__all__ = [
    "DEFAULT_DNS_PORT",
    "ResolvedAddress",
    "TargetResolver",
    "is_ip_literal",
    "parse_nameservers",
]

log = logging.getLogger("ferry.data_plane.dns")

DEFAULT_DNS_PORT = 53
_MAX_WEIGHT = 65535
#: Kong's wording for the errors a health view shows next to ``DNS_ERROR``.
_E_NAME = "dns server error: 3 name error"
_E_SERVFAIL = "dns server error: 2 server failure"
_E_EMPTY = "dns client error: 101 empty record received"
_E_TIMEOUT = "dns client error: timeout"
_LOCALHOST = ("127.0.0.1", "::1")


@functools.lru_cache(maxsize=65536)
def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 literal (never resolved).

    Cached: every config applied asks again for every target (twice), and
    ``ipaddress`` takes microseconds per call (60 ms for 10 000 targets).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_nameservers(text: str) -> list[tuple[str, int]]:
    """Parse Kong's ``dns_resolver``: comma-separated ``IP[:PORT]`` (IPv6 as ``[::1]:53``
    or bare). The port defaults to 53. Empty text gives ``[]`` (use the system's).

    Raises ``ValueError`` naming the bad entry; hosts must be IP literals because a
    nameserver cannot be found by name.
    """
    servers: list[tuple[str, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        port_text: str | None = None
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"invalid nameserver {item!r}: expected [IPv6]:PORT")
            port_text = rest[1:] if rest else None
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host = item
        if not is_ip_literal(host):
            raise ValueError(f"invalid nameserver {item!r}: the host must be an IP address")
        port = DEFAULT_DNS_PORT
        if port_text is not None:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueError(f"invalid nameserver {item!r}: bad port")
            port = int(port_text)
        servers.append((host, port))
    return servers




@dataclass(frozen=True, slots=True)
class _Dest:
    """One address a name's answer gives: an IP, plus for an SRV record its port,
    weight and target name (``None`` for A/AAAA answers; ``name`` ``None`` when the
    record's target is an IP literal)."""

    ip: str
    port: int | None = None
    weight: int | None = None
    name: str | None = None


@dataclass(slots=True)
class _Lookup:
    """The outcome of one lookup: sorted destinations and their TTL, or an error."""

    ips: tuple[_Dest, ...] = ()
    ttl: float = 0.0
    error: str | None = None
    not_found: bool = False


@dataclass(slots=True)
class _Entry:
    """What is known about one name. ``good`` is ``None`` until a lookup succeeds."""

    name: str
    good: tuple[_Dest, ...] | None = None
    good_until: float = 0.0  # expiry of the good answer (its TTL)
    error: str | None = None  # error of the latest lookup, None after a success
    next_query: float = 0.0
    wake: float = 0.0  # the heap key currently valid for this name
    task: asyncio.Task[None] | None = None
    queried: bool = False  # a lookup was started at least once

    def visible(self, now: float, stale_ttl: float) -> tuple[_Dest, ...] | None:
        """The destinations balanced now: ``None`` = pending (keep the hostname), ``()`` = failed."""
        if self.error is None:
            return self.good
        if self.good is not None and now < self.good_until + stale_ttl:
            return self.good  # stale, within the window
        return ()


class TargetResolver:
    """Resolves hostname targets of the current config and keeps balancers expanded.

    ``nameservers`` are ``(ip, port)`` pairs (Kong's ``dns_resolver``); ``None`` or an
    empty list uses /etc/resolv.conf. ``min_ttl`` floors every record TTL (a TTL of 0
    would otherwise mean a query loop); ``stale_ttl`` is how long past its TTL a good
    answer keeps serving while refreshes fail (Kong's ``dns_stale_ttl``, default 4);
    ``not_found_ttl`` and ``error_ttl`` are Kong's ``dns_not_found_ttl`` (30) and
    ``dns_error_ttl`` (1): how long until a name that had no records, or whose lookup
    failed, is queried again. ``lifetime`` bounds one lookup (all nameservers and
    retries). ``hosts_ttl`` is how often a name found in ``hosts_file`` is looked up
    again (the file is re-read when its mtime changes). ``clock`` is monotonic seconds.

    Use: ``await apply(config, timeout)`` before every config swap, one task running
    :meth:`run`, :meth:`stop` at shutdown. Single event loop only.
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_ttl: float = 1.0,
        stale_ttl: float = 4.0,
        not_found_ttl: float = 30.0,
        error_ttl: float = 1.0,
        lifetime: float = 5.0,
        hosts_file: str | os.PathLike[str] | None = "/etc/hosts",
        hosts_ttl: float = 60.0,
    ) -> None:
        self._clock = clock
        self._min_ttl = min_ttl
        self._stale_ttl = stale_ttl
        self._not_found_ttl = not_found_ttl
        self._error_ttl = error_ttl
        self._lifetime = lifetime
        self._hosts_ttl = hosts_ttl
        self._hosts_path = os.fspath(hosts_file) if hosts_file is not None else None
        self._hosts_mtime: float | None = None
        self._hosts: dict[str, tuple[str, ...]] = {}
        self._resolver = self._make_resolver(nameservers)
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._config: RuntimeConfig | None = None
        #: id(balancer) -> (that balancer, its configured (unexpanded) targets), for the
        #: balancers of the current config this resolver expanded. Not a
        #: WeakKeyDictionary: the compiled balancers (mypyc native classes) take no
        #: weak references; :meth:`apply` drops the entries of replaced balancers.
        self._configured: dict[int, tuple[Balancer, tuple[Address, ...]]] = {}
        self._wakeup = asyncio.Event()
        self._stopped = False
        #: Called (no arguments, never awaited) after an expansion changed the
        #: addresses of any balancer; the health supervisor re-reports its view.
        self.on_change: Callable[[], None] | None = None
        #: Upstream id -> the host names among its targets (upstreams with any only).
        self._named: dict[str, frozenset[str]] = {}
        #: ``dns_errors()`` when ``on_change`` last ran (a new error is a change too).
        self._last_dns_errors: Mapping[str, str] = {}

    # ------------------------------------------------------------------ public API

    async def apply(self, config: RuntimeConfig, timeout: float) -> None:
        """Make ``config`` the current config and expand its upstreams' balancers.

        Names not known yet are looked up first; this waits at most ``timeout``
        seconds for them (names still unanswered then stay as hostnames and are
        expanded when their answer arrives). Cached names are reused as they are,
        even when expired (the refresh loop renews them). Names the previous config
        used and this one does not are forgotten. Never raises for DNS failures.

        An upstream the previous config had as the very same object (a delta left
        it alone) is not expanded again: its balancer is the one every lookup since
        has kept expanded.
        """
        previous = self._config
        kept = previous.upstreams if previous is not None else {}
        changed = [u for u in config.upstreams.values() if kept.get(u.id) is not u]
        named = {
            upstream_id: names
            for upstream_id, names in self._named.items()
            if upstream_id in config.upstreams and kept.get(upstream_id) is config.upstreams[upstream_id]
        }
        for upstream in changed:
            hosts = frozenset(t.host for t in self._targets_of(upstream) if not is_ip_literal(t.host))
            if hosts:
                named[upstream.id] = hosts
        names: set[str] = set().union(*named.values())
        for name in names:
            entry = self._entries.get(name)
            if entry is None:
                entry = self._entries[name] = _Entry(name)
            if not entry.queried:
                self._start_query(entry)
        waiting = [
            e.task
            for e in (self._entries[n] for n in names)
            if e.task is not None and e.good is None and e.error is None
        ]
        if waiting:
            await asyncio.wait(waiting, timeout=max(timeout, 0.0))
        for name in set(self._entries) - names:
            dropped = self._entries.pop(name)
            if dropped.task is not None:
                dropped.task.cancel()
        self._config = config
        self._named = named
        for upstream in changed:
            self._configured[id(upstream.balancer)] = (upstream.balancer, self._targets_of(upstream))
        if changed or len(self._configured) > len(config.upstreams):
            live = {id(u.balancer) for u in config.upstreams.values()}
            self._configured = {k: v for k, v in self._configured.items() if k in live}
        self._expand(config, changed)
        self._wakeup.set()

    async def run(self) -> None:
        """Refresh names as they fall due until :meth:`stop` or cancellation."""
        try:
            while not self._stopped:
                self._wakeup.clear()
                now = self._clock()
                changed = False
                while self._heap and self._heap[0][0] <= now:
                    when, _, name = heapq.heappop(self._heap)
                    entry = self._entries.get(name)
                    if entry is None or entry.wake != when:
                        continue  # superseded or forgotten
                    changed = True  # a stale window may have ended; re-expand below
                    if entry.task is not None:
                        continue  # its completion reschedules it
                    if entry.next_query <= now:
                        self._start_query(entry)
                    else:
                        self._schedule(entry, now)
                if changed and self._config is not None:
                    self._expand(self._config)
                delay = self._heap[0][0] - now if self._heap else None
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            self._cancel_queries()

    def stop(self) -> None:
        """End :meth:`run` and cancel lookups in flight. Idempotent."""
        self._stopped = True
        self._wakeup.set()
        self._cancel_queries()

    def dns_errors(self) -> Mapping[str, str]:
        """Targets of the current config left without any address by DNS, keyed by
        the target (``host:port``), with Kong's error text (``DNS_ERROR`` in health)."""
        if self._config is None:
            return {}
        now = self._clock()
        errors: dict[str, str] = {}
        named = self._named
        for upstream in self._config.upstreams.values():
            if upstream.id not in named:
                continue  # IP targets only: never an error
            for target in self._targets_of(upstream):
                entry = self._entries.get(target.host)
                if entry is not None and entry.visible(now, self._stale_ttl) == ():
                    errors[target.key] = entry.error or _E_EMPTY
        return errors

    def addresses_of(self, name: str) -> tuple[str, ...] | None:
        """The IPs ``name`` is balanced over now; ``None`` while it is pending or
        unknown, ``()`` when its lookups failed (for status views and tests)."""
        entry = self._entries.get(name.lower())
        if entry is None:
            return None
        dests = entry.visible(self._clock(), self._stale_ttl)
        return None if dests is None else tuple(dict.fromkeys(d.ip for d in dests))

    # ------------------------------------------------------------------ expansion

    def _targets_of(self, upstream: CompiledUpstream) -> tuple[Address, ...]:
        configured: tuple[Address, ...] | None = getattr(upstream, "targets", None)
        if configured is not None:
            return configured
        known = self._configured.get(id(upstream.balancer))
        # A balancer this resolver has not expanded yet still lists configured targets.
        return known[1] if known is not None else upstream.balancer.addresses

    def _expand(self, config: RuntimeConfig, only: Iterable[CompiledUpstream] | None = None) -> None:
        """Expand the balancers of ``config``'s upstreams (of ``only`` those, when given)."""
        now = self._clock()
        changed = False
        for upstream in config.upstreams.values() if only is None else only:
            expanded = self.expand_targets(
                self._targets_of(upstream), now, use_srv_name=getattr(upstream, "use_srv_name", False)
            )
            balancer = upstream.balancer
            if _identity(balancer.addresses) != _identity(expanded):
                balancer.after_targets_changed(expanded)
                changed = True
        errors = self.dns_errors()
        if errors != self._last_dns_errors:
            self._last_dns_errors = errors
            changed = True
        if changed and self.on_change is not None:
            self.on_change()

    def expand_targets(
        self, targets: Iterable[Address], now: float | None = None, *, use_srv_name: bool = False
    ) -> list[Address]:
        """The balanced addresses for ``targets`` given what is known now.

        IP targets as they are; a resolved name becomes one :class:`ResolvedAddress`
        per IP (sorted) with the target's port and weight, or per SRV record (lowest
        priority value only) with the record's port and weight; a pending name stays
        as the target; a failed name contributes nothing. Addresses are kept per
        target: two targets resolving to the same IP give two addresses (their keys
        differ), each with its own weight and health. ``use_srv_name`` (the
        upstream's) sends an SRV record's target name as Host/SNI instead of the
        target's name.
        """
        if now is None:
            now = self._clock()
        out: list[Address] = []
        index: dict[str, int] = {}
        for target in targets:
            entry = None if is_ip_literal(target.host) else self._entries.get(target.host)
            dests = None if entry is None else entry.visible(now, self._stale_ttl)
            if dests is None:
                candidates: list[Address] = [target]
            else:
                candidates = [_resolved(target, d, use_srv_name) for d in dests]
            for address in candidates:
                at = index.get(address.key)
                if at is None:
                    index[address.key] = len(out)
                    out.append(address)
                else:
                    # The same SRV record listed twice: one address, weights summed.
                    first = out[at]
                    weight = min(first.weight + address.weight, _MAX_WEIGHT)
                    out[at] = dataclasses.replace(first, weight=weight)
        return out

    # ------------------------------------------------------------------ lookups

    def _start_query(self, entry: _Entry) -> None:
        entry.queried = True
        entry.task = asyncio.get_running_loop().create_task(
            self._refresh(entry), name=f"ferry-dns-{entry.name}"
        )

    async def _refresh(self, entry: _Entry) -> None:
        try:
            result = await self._lookup(entry.name)
        except Exception as exc:  # a bug must not end refreshes of this name
            log.exception("lookup of %s failed", entry.name)
            result = _Lookup(error=f"dns client error: {exc}")
        finally:
            entry.task = None
        if self._entries.get(entry.name) is not entry:
            return  # forgotten while the lookup was in flight
        now = self._clock()
        before = entry.visible(now, self._stale_ttl)
        if result.error is None:
            ttl = max(result.ttl, self._min_ttl)
            if entry.good != result.ips:
                log.info("%s resolved to %s (ttl %ds)", entry.name, _describe(result.ips), ttl)
            entry.good, entry.good_until, entry.error = result.ips, now + ttl, None
            entry.next_query = now + ttl
        else:
            # Warn on a change only: a failing name is retried every error_ttl.
            warn = log.warning if entry.error != result.error else log.debug
            entry.error = result.error
            entry.next_query = now + (self._not_found_ttl if result.not_found else self._error_ttl)
            if entry.good is None or now >= entry.good_until + self._stale_ttl:
                warn("%s: %s; its targets have no address", entry.name, result.error)
            else:
                warn(
                    "%s: %s; serving the last answer for up to %.0fs more",
                    entry.name,
                    result.error,
                    entry.good_until + self._stale_ttl - now,
                )
        self._schedule(entry, now)
        if self._config is not None and entry.visible(now, self._stale_ttl) != before:
            self._expand(self._config)
        self._wakeup.set()

    def _schedule(self, entry: _Entry, now: float) -> None:
        wake = entry.next_query
        if entry.error is not None and entry.good is not None:
            stale_end = entry.good_until + self._stale_ttl
            if now < stale_end:
                wake = min(wake, stale_end)
        entry.wake = wake
        heapq.heappush(self._heap, (wake, next(self._seq), entry.name))

    async def _lookup(self, name: str) -> _Lookup:
        """Kong's order: the hosts file, then SRV, then A, then AAAA."""
        hosts = self._hosts_lookup(name)
        if hosts is not None:
            return _Lookup(ips=tuple(_Dest(ip) for ip in hosts), ttl=self._hosts_ttl)
        if self._resolver is None:
            return _Lookup(error="dns client error: no nameservers configured", not_found=False)
        srv = await self._query(name, dns.rdatatype.SRV)
        if not isinstance(srv, _Lookup):
            return await self._srv_lookup(srv[0], srv[1])
        if srv.error in (_E_NAME, _E_TIMEOUT):
            return srv  # no type can exist / the server does not answer
        return await self._address_lookup(name, hosts_checked=True)

    async def _srv_lookup(self, records: list[Any], ttl: float) -> _Lookup:
        """Destinations of an SRV answer: the records of the lowest priority value, each
        record target resolved to its addresses (A, then AAAA; the hosts file first)."""
        lowest = min(int(r.priority) for r in records)
        chosen = [r for r in records if int(r.priority) == lowest and r.target.to_text() != "."]
        if not chosen:
            return _Lookup(error=_E_EMPTY, not_found=True)
        names = {r.target.to_text(omit_final_dot=True).lower() for r in chosen}
        names = {n for n in names if not is_ip_literal(n)}
        ordered = sorted(names)
        answers = dict(
            zip(ordered, await asyncio.gather(*(self._address_lookup(n) for n in ordered)), strict=True)
        )
        dests: list[_Dest] = []
        errors: list[_Lookup] = []
        for record in chosen:
            target = record.target.to_text(omit_final_dot=True).lower()
            port, weight = int(record.port), int(record.weight)
            if is_ip_literal(target):
                dests.append(_Dest(str(ipaddress.ip_address(target)), port, weight, None))
                continue
            answer = answers[target]
            if answer.error is not None:
                errors.append(answer)
                continue
            ttl = min(ttl, answer.ttl)
            dests.extend(_Dest(d.ip, port, weight, target) for d in answer.ips)
        if not dests:
            real = [e for e in errors if not e.not_found]
            return real[0] if real else errors[0]
        unique = dict.fromkeys(dests)  # a record listed twice counts once
        return _Lookup(ips=tuple(sorted(unique, key=_dest_order)), ttl=ttl)

    async def _address_lookup(self, name: str, *, hosts_checked: bool = False) -> _Lookup:
        """A, else AAAA records of ``name`` (the hosts file first unless checked)."""
        if not hosts_checked:
            hosts = self._hosts_lookup(name)
            if hosts is not None:
                return _Lookup(ips=tuple(_Dest(ip) for ip in hosts), ttl=self._hosts_ttl)
        errors: list[_Lookup] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            result = await self._query(name, rdtype)
            if isinstance(result, _Lookup):
                if result.error == _E_NAME:
                    return result  # no type can exist
                errors.append(result)
                continue
            ips = _sorted_ips(str(r.address) for r in result[0])
            return _Lookup(ips=tuple(_Dest(ip) for ip in ips), ttl=result[1])
        real = [e for e in errors if not e.not_found]
        return real[0] if real else _Lookup(error=_E_EMPTY, not_found=True)

    async def _query(
        self, name: str, rdtype: dns.rdatatype.RdataType
    ) -> tuple[list[Any], float] | _Lookup:
        """The records of one type and their TTL (smallest along a CNAME chain), or
        the error as a :class:`_Lookup` (``not_found`` for NXDOMAIN and no records)."""
        assert self._resolver is not None
        try:
            answer = await self._resolver.resolve(
                name, rdtype, raise_on_no_answer=False, lifetime=self._lifetime
            )
        except dns.resolver.NXDOMAIN:
            return _Lookup(error=_E_NAME, not_found=True)
        except dns.resolver.NoNameservers:
            return _Lookup(error=_E_SERVFAIL)
        except dns.exception.Timeout:
            return _Lookup(error=_E_TIMEOUT)
        except (dns.exception.DNSException, ValueError) as exc:
            return _Lookup(error=f"dns client error: {exc}")
        if answer.rrset is not None and len(answer.rrset) > 0:
            return list(answer.rrset), float(answer.chaining_result.minimum_ttl)
        return _Lookup(error=_E_EMPTY, not_found=True)

    def _hosts_lookup(self, name: str) -> tuple[str, ...] | None:
        """IPv4 entries of ``name`` in the hosts file, else IPv6 ones, else ``None``."""
        self._reload_hosts()
        name = name.rstrip(".")
        ips = self._hosts.get(name)
        if ips is None and name == "localhost":
            ips = _LOCALHOST
        if not ips:
            return None
        v4 = [ip for ip in ips if ":" not in ip]
        return _sorted_ips(v4 or ips)

    def _reload_hosts(self) -> None:
        if self._hosts_path is None:
            return
        try:
            mtime = os.stat(self._hosts_path).st_mtime
        except OSError:
            self._hosts, self._hosts_mtime = {}, None
            return
        if mtime == self._hosts_mtime:
            return
        self._hosts_mtime = mtime
        hosts: dict[str, list[str]] = {}
        try:
            with open(self._hosts_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split("#", 1)[0].split()
                    if len(fields) < 2:
                        continue
                    ip = fields[0].split("%", 1)[0]
                    if not is_ip_literal(ip):
                        continue
                    ip = str(ipaddress.ip_address(ip))
                    for host in fields[1:]:
                        known = hosts.setdefault(host.lower().rstrip("."), [])
                        if ip not in known:
                            known.append(ip)
        except OSError as exc:
            log.warning("cannot read %s: %s", self._hosts_path, exc)
        self._hosts = {k: tuple(v) for k, v in hosts.items()}

    def _make_resolver(
        self, nameservers: Sequence[tuple[str, int]] | None
    ) -> dns.asyncresolver.Resolver | None:
        try:
            # The system config still supplies search domains and ndots when
            # explicit nameservers are given (as Kong's dns_resolver does).
            resolver = dns.asyncresolver.Resolver(configure=True)
            resolver.use_search_by_default = True
        except dns.exception.DNSException as exc:
            if not nameservers:
                log.error(
                    "no DNS configuration (%s): target names are resolved per connection", exc
                )
                return None
            resolver = dns.asyncresolver.Resolver(configure=False)
        if nameservers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
        resolver.lifetime = self._lifetime
        resolver.cache = None  # TTLs are ours to track
        return resolver

    def _cancel_queries(self) -> None:
        for entry in self._entries.values():
            if entry.task is not None:
                entry.task.cancel()


def _dest_order(dest: _Dest) -> tuple[str, int, int, int]:
    ip = ipaddress.ip_address(dest.ip)
    return (dest.name or "", dest.port or 0, ip.version, int(ip))


def _sorted_ips(ips: Iterable[str]) -> tuple[str, ...]:
    parsed = sorted({ipaddress.ip_address(ip) for ip in ips}, key=lambda a: (a.version, int(a)))
    return tuple(str(a) for a in parsed)


def _identity(addresses: Iterable[Address]) -> list[tuple[str, int, str, bool]]:
    return [(a.key, a.weight, getattr(a, "hostname", ""), a.failover) for a in addresses]


def _resolved(target: Address, dest: _Dest, use_srv_name: bool) -> ResolvedAddress:
    if dest.port is None:  # an A/AAAA answer: the target's port and weight
        return ResolvedAddress(
            host=dest.ip,
            port=target.port,
            weight=target.weight,
            hostname=target.host,
            target=target.key,
            failover=target.failover,
        )
    # An SRV record: its port and weight replace the target's (a target of weight 0
    # stays disabled; a record of weight 0 gets the smallest weight, 1, as RFC 2782
    # gives such records a very small share).
    port = dest.port
    weight = 0 if target.weight == 0 else max(dest.weight or 0, 1)
    endpoint = Address(dest.name, port).key if dest.name else ""
    hostname = dest.name if use_srv_name and dest.name else target.host
    return ResolvedAddress(
        host=dest.ip,
        port=port,
        weight=weight,
        hostname=hostname,
        target=target.key,
        endpoint=endpoint,
        failover=target.failover,  # every address of a failover target is one
    )


def _describe(dests: Iterable[_Dest]) -> str:
    return ", ".join(
        d.ip if d.port is None else f"{d.name or d.ip}:{d.port} ({d.ip}, weight {d.weight})"
        for d in dests
    )
