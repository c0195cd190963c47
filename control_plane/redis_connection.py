"""One place that turns ``--redis-url`` into a ``redis.asyncio.Redis`` client.

Accepted URLs (validated by :func:`validate_redis_url` when the settings are
built, before any port is bound):

``redis://[[user]:password@]host[:port][/db][?option=value...]``
``rediss://...``   the same over TLS
``unix://[[user]:password@]/path/to/redis.sock[?db=N&option=value...]``
    Handed to redis-py's own URL parser (``Redis.from_url``) unchanged.

``redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/service_name[/db][?option=value...]``
    Redis Sentinel: the hosts are Sentinels (port 26379 when left out; IPv6
    literals in brackets), ``service_name`` is the master's name in the
    Sentinels' configuration (``sentinel monitor <service_name> ...``), ``db``
    the database number (default 0). The user and password in the URL are for
    the *master* (and its replicas after a failover); the Sentinels take their
    own with the ``sentinel_username`` / ``sentinel_password`` options (none
    by default). This is the grammar the ``Redis-Sentinel-Url`` package
    defined, and the one Prefect and RedisVL accept. Each connection asks a
    Sentinel for the current master (redis-py's ``Sentinel.master_for``), so
    after a failover new connections go to the new master, and a connection
    to a demoted master is dropped.

Options (query parameters; percent-encode special characters in passwords):
``socket_timeout`` (seconds, default 2; must be above 1 s, the time the
config followers block on ``XREAD``), ``socket_connect_timeout`` (seconds,
default 1), ``health_check_interval`` (seconds, default 10). Plain URLs also
take every other option redis-py's URL parser knows (``ssl_ca_certs`` ...);
unknown options are refused when the settings are built.

Outage behaviour of every client built here: a command that fails with a
connection error (refused, reset, closed, no master known to the Sentinels,
``READONLY`` from a demoted master) is retried :data:`COMMAND_RETRIES` times
with a short jittered backoff, at most ``COMMAND_RETRIES + 1`` attempts in all
(a blip of a few hundred milliseconds goes unnoticed); a timeout is not retried
(a write may have run). So with Redis down a command fails within about half a
second (refused), ``socket_connect_timeout`` (connects time out) or
``socket_timeout`` (Redis hung), and the Admin API answers 503.
"""

from __future__ import annotations

import collections
import contextvars
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

SENTINEL_SCHEME = "redis+sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_DEFAULT_PORT = 26379

#: Seconds the config and stream followers block in ``XREAD`` (their ``block_ms``).
FOLLOWER_BLOCK_SECONDS = 1.0
#: Seconds to wait for a reply. Above :data:`FOLLOWER_BLOCK_SECONDS` with a
#: margin, or an idle ``XREAD`` would look like a dead Redis.
DEFAULT_SOCKET_TIMEOUT = 2.0
#: Seconds to wait for a TCP (and TLS) connection to Redis or a Sentinel.
DEFAULT_CONNECT_TIMEOUT = 1.0
#: Seconds a pooled connection may sit idle before it is PINGed on next use.
DEFAULT_HEALTH_CHECK_INTERVAL = 10
#: Retries of a command that failed with a connection error.
COMMAND_RETRIES = 3
#: Backoff between those retries: uniform in [0, min(cap, base * 2**n)] seconds.
RETRY_BACKOFF_BASE = 0.05
RETRY_BACKOFF_CAP = 0.2

#: Options a ``redis+sentinel://`` URL takes (the query parameters).
_SENTINEL_OPTIONS = (
    "health_check_interval",
    "sentinel_password",
    "sentinel_username",
    "socket_connect_timeout",
    "socket_timeout",
)


#: How many retry loops of :class:`OutermostRetry` the running task is inside.
_retry_depth: contextvars.ContextVar[int] = contextvars.ContextVar("ferry_redis_retry_depth", default=0)


class OutermostRetry(Retry):
    """redis-py's :class:`Retry`, but only the outermost loop of a task retries.

    redis-py runs a command in a retry loop and, inside it, (re)connects in
    another loop of the same policy, so a server that accepts connections and
    closes them would see (retries + 1) squared attempts per command. With this
    policy a command makes at most ``retries + 1`` attempts in all: a loop
    nested in another makes one attempt and leaves retrying to the outer one.
    """

    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        depth = _retry_depth.get()
        if depth > 0:
            return await do()
        token = _retry_depth.set(depth + 1)

        async def count_and_fail(error: BaseException, *failures: int) -> Any:
            # Every failed attempt, retried or not: a flapping link shows here
            # before any command gives up. (redis-py passes the failure count
            # too when its caller asks for it: pass it on unchanged.)
            REDIS_ERRORS[_error_kind(error)] += 1
            return await fail(error, *failures)

        try:
            return await super().call_with_retry(do, count_and_fail, *args, **kwargs)
        except RedisConnectionError:
            raise  # counted in count_and_fail
        except WatchError:
            raise  # an optimistic-lock conflict: Redis works as designed
        except (RedisError, OSError) as exc:
            REDIS_ERRORS[_error_kind(exc)] += 1
            raise
        finally:
            _retry_depth.reset(token)


#: Failed Redis operations of this process by kind (``connection``, ``timeout``,
#: ``response``, ``other``): the CP's ``ferry_redis_errors_total``. Plain integers
#: bumped on one event loop; read at scrape time.
REDIS_ERRORS: collections.Counter[str] = collections.Counter()


def _error_kind(error: BaseException) -> str:
    if isinstance(error, RedisTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, RedisConnectionError | OSError):
        return "connection"
    if isinstance(error, ResponseError):
        return "response"
    return "other"


#: Connections per client (redis-py's default maximum) and how long a command
#: waits for a free one before failing (plain URLs; Sentinel's pool does not wait).
POOL_SIZE = 100
POOL_WAIT = 5.0


def command_retry() -> Retry:
    """The retry policy of every client built here (a fresh object each call).

    Only connection errors are retried: they mean the command did not reach
    Redis or Redis went away; a timeout may hide a write that ran. A command
    makes at most ``COMMAND_RETRIES + 1`` attempts (see :class:`OutermostRetry`).
    """
    return OutermostRetry(
        ExponentialWithJitterBackoff(base=RETRY_BACKOFF_BASE, cap=RETRY_BACKOFF_CAP),
        COMMAND_RETRIES,
        supported_errors=(RedisConnectionError,),
    )


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL. Passwords are left out of ``repr``."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT
    socket_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL

    def describe(self) -> str:
        """``Redis master 'svc' via Sentinel h1:26379,h2:26379`` (no secrets)."""
        hosts = ",".join(_host_port(host, port) for host, port in self.sentinels)
        return f"Redis master {self.service_name!r} via Sentinel {hosts}"


def _host_port(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep:
        return ""
    return scheme.lower()


def _unsupported_scheme(url: str) -> ValueError:
    shown = _scheme(url) or url.split(":", 1)[0]
    return ValueError(
        f"unsupported Redis URL scheme {shown!r}: use redis://host:port/db, rediss:// (TLS), "
        "unix:///path/to/redis.sock or "
        "redis+sentinel://host1:26379,host2:26379/service_name[/db]"
    )


def _parse_sentinel_host(text: str) -> tuple[str, int]:
    if not text:
        raise ValueError("empty Sentinel address (two commas in a row?)")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"bad Sentinel address {text!r}: unclosed '[' of an IPv6 address")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad Sentinel address {text!r}: expected ':port' after ']'")
        port_text = rest[1:] if rest else ""
    else:
        if text.count(":") > 1:
            raise ValueError(
                f"bad Sentinel address {text!r}: write an IPv6 address in brackets, [::1]:26379"
            )
        host, _, port_text = text.partition(":")
        if not host:
            raise ValueError(f"bad Sentinel address {text!r}: no host")
    if not port_text:
        return host, SENTINEL_DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad Sentinel address {text!r}: the port must be a number in 1..65535")
    return host, int(port_text)


def _positive_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"option {name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"option {name}={raw!r} must be a positive number of seconds")
    return value


def _check_socket_timeout(value: float | None) -> None:
    if value is not None and value <= FOLLOWER_BLOCK_SECONDS:
        raise ValueError(
            f"socket_timeout={value:g} is too short: it must be above {FOLLOWER_BLOCK_SECONDS:g} s, "
            "the time the config followers wait in a blocking XREAD"
        )


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://...`` (grammar in the module docstring).

    Raises :class:`ValueError` with a message that names the bad part and never
    contains a password.
    """
    if _scheme(url) != SENTINEL_SCHEME:
        raise _unsupported_scheme(url)
    rest = url.split("://", 1)[1]
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ValueError("a Redis URL has no #fragment")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    username: str | None = None
    password: str | None = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon and password_text else None
    if not hosts:
        raise ValueError(
            "redis+sentinel:// needs at least one Sentinel: "
            "redis+sentinel://host1:26379[,host2:26379...]/service_name[/db]"
        )
    sentinels = tuple(_parse_sentinel_host(part) for part in hosts.split(","))
    segments = path.split("/") if slash else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise ValueError(
            "redis+sentinel:// needs the master's service name after the Sentinels: "
            "redis+sentinel://host:26379/mymaster[/db]"
        )
    if len(segments) > 2:
        raise ValueError(
            f"too many path segments in {'/' + '/'.join(segments)!r}: expected /service_name[/db]"
        )
    service_name = unquote(segments[0])
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(f"the database number {segments[1]!r} is not a non-negative integer")
        db = int(segments[1])
    options: dict[str, Any] = {}
    try:
        parsed_query = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("the query string is not name=value pairs joined by '&'") from None
    for name, values in parsed_query.items():
        if name not in _SENTINEL_OPTIONS:
            raise ValueError(
                f"unknown option {name!r} in a redis+sentinel:// URL; known: "
                + ", ".join(_SENTINEL_OPTIONS)
            )
        if len(values) != 1:
            raise ValueError(f"option {name!r} is given more than once")
        raw = values[0]
        if name in ("socket_timeout", "socket_connect_timeout"):
            options[name] = _positive_seconds(name, raw)
        elif name == "health_check_interval":
            if not raw.isdigit():
                raise ValueError(f"option health_check_interval={raw!r} must be whole seconds")
            options[name] = int(raw)
        else:
            options[name] = raw or None
    _check_socket_timeout(options.get("socket_timeout"))
    return SentinelURL(
        sentinels=sentinels,
        service_name=service_name,
        db=db,
        username=username,
        password=password,
        **options,
    )


def _plain_client(url: str) -> aioredis.Redis:
    # A blocking pool: with a thousand data planes' rows, health reports and pings
    # in flight, redis-py's default pool fails commands with "Too many connections"
    # once it has 100; this one makes them wait (up to POOL_WAIT s) for a free one.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT,
        socket_timeout=DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        health_check_interval=DEFAULT_HEALTH_CHECK_INTERVAL,
        retry=command_retry(),
    )
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool, as from_url's does
    return client


def _validate_plain(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port in the Redis URL: {exc}") from None
        db_text = parts.path.strip("/")
        if db_text and not db_text.isdigit():
            raise ValueError(
                f"the database number {db_text!r} in the path is not a non-negative integer"
            )
    elif parts.scheme == "unix" and not parts.path:
        raise ValueError("unix:// needs the socket's path: unix:///path/to/redis.sock")
    try:
        client = _plain_client(url)
        # Builds a connection object without connecting: redis-py rejects unknown
        # options and bad values here rather than at the first command.
        connection = client.connection_pool.make_connection()
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if "unexpected keyword argument" in message:
            name = message.rsplit(" ", 1)[-1].strip("'\"")
            raise ValueError(f"unknown option {name!r} in the Redis URL") from None
        raise ValueError(f"bad Redis URL: {message}") from None
    _check_socket_timeout(connection.socket_timeout)


def validate_redis_url(url: str) -> str:
    """Return ``url`` if a client can be built from it; else raise :class:`ValueError`.

    Does no I/O. The message says what to fix and never contains a password.
    """
    scheme = _scheme(url)
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
    elif scheme in PLAIN_SCHEMES:
        _validate_plain(url)
    else:
        raise _unsupported_scheme(url)
    return url


def describe_redis_url(url: str) -> str:
    """Where ``url`` points, for logs and error messages, without credentials.

    ``Redis at host:6379``, ``Redis at unix:/run/redis.sock`` or
    ``Redis master 'mymaster' via Sentinel h1:26379,h2:26379``. ``url`` must be valid.
    """
    if _scheme(url) == SENTINEL_SCHEME:
        return parse_sentinel_url(url).describe()
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"Redis at unix:{unquote(parts.path)}"
    tls = " (TLS)" if parts.scheme == "rediss" else ""
    return f"Redis at {_host_port(parts.hostname or 'localhost', parts.port or 6379)}{tls}"


class SentinelMasterRedis(aioredis.Redis):
    """The client of a Sentinel-managed master; ``aclose`` also closes the Sentinel clients."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        try:
            await super().aclose(close_connection_pool)
        finally:
            if isinstance(manager, Sentinel):
                await manager.aclose()


def _sentinel_client(parsed: SentinelURL) -> aioredis.Redis:
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": parsed.socket_timeout,
        "socket_connect_timeout": parsed.socket_connect_timeout,
        # One attempt per Sentinel: discovery moves on to the next Sentinel, and
        # the master connection's own retries cover a blip.
        "retry": Retry(NoBackoff(), 0),
    }
    if parsed.sentinel_username is not None:
        sentinel_kwargs["username"] = parsed.sentinel_username
    if parsed.sentinel_password is not None:
        sentinel_kwargs["password"] = parsed.sentinel_password
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
    client: aioredis.Redis = sentinel.master_for(
        parsed.service_name,
        redis_class=SentinelMasterRedis,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        socket_timeout=parsed.socket_timeout,
        socket_connect_timeout=parsed.socket_connect_timeout,
        health_check_interval=parsed.health_check_interval,
        retry=command_retry(),
    )
    return client


def create_redis_client(url: str) -> aioredis.Redis:
    """A client for ``url`` with Ferry's timeouts and retries (see the module docstring).

    Does not connect (the first command does); raises :class:`ValueError` for
    a URL :func:`validate_redis_url` refuses. The caller owns the client and
    closes it with ``aclose()`` (for Sentinel that also closes the Sentinel
    clients). Replies are bytes (``decode_responses`` off).
    """
    validate_redis_url(url)
    if _scheme(url) == SENTINEL_SCHEME:
        return _sentinel_client(parse_sentinel_url(url))
    return _plain_client(url)


def describe_client(client: aioredis.Redis) -> str:
    """Where ``client`` connects, from its pool, without credentials (any client works)."""
    pool = client.connection_pool
    manager = getattr(pool, "sentinel_manager", None)
    if isinstance(manager, Sentinel):
        hosts = []
        for sentinel in manager.sentinels:
            kwargs = sentinel.connection_pool.connection_kwargs
            hosts.append(_host_port(str(kwargs.get("host")), kwargs.get("port", "")))
        where = f"Redis master {getattr(pool, 'service_name', '?')!r} via Sentinel {','.join(hosts)}"
        master = getattr(pool, "master_address", None)
        if master:
            where += f", last at {_host_port(str(master[0]), master[1])}"
        return where
    kwargs = pool.connection_kwargs
    if kwargs.get("path"):
        return f"Redis at unix:{kwargs['path']}"
    return f"Redis at {_host_port(str(kwargs.get('host', 'localhost')), kwargs.get('port', 6379))}"


def _secrets(client: aioredis.Redis | None) -> Iterable[str]:
    if client is None:
        return ()
    found: list[Any] = [client.connection_pool.connection_kwargs.get("password")]
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if isinstance(manager, Sentinel):
        found.append(manager.sentinel_kwargs.get("password"))
    return [s for s in found if isinstance(s, str) and s]


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def unreachable_message(exc: BaseException, client: aioredis.Redis | None = None) -> str:
    """The Admin API's 503 message for a Redis failure ``exc`` of ``client``.

    ``the database is unreachable (Redis at host:port): <reason>; data planes
    keep serving their last configuration``. Any password of ``client`` that
    shows up in the reason is masked.
    """
    where = f" ({describe_client(client)})" if client is not None else ""
    reason = redact(str(exc).strip() or type(exc).__name__, _secrets(client)).rstrip(".")
    return (
        f"the database is unreachable{where}: {reason}; "
        "data planes keep serving their last configuration"
    )
