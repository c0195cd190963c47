"""``--redis-url`` parsing, validation and the clients built from it (no I/O here)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from control_plane.redis_connection import (
    COMMAND_RETRIES,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    SentinelMasterRedis,
    SentinelURL,
    create_redis_client,
    describe_client,
    describe_redis_url,
    parse_sentinel_url,
    unreachable_message,
    validate_redis_url,
)
from control_plane.server import ControlPlaneSettings


def test_a_sentinel_url_with_every_part() -> None:
    parsed = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@s1:26380,[::1]:26381,s3/my%20master/2"
        "?sentinel_username=watcher&sentinel_password=sw&socket_timeout=3.5"
        "&socket_connect_timeout=0.25&health_check_interval=30"
    )
    assert parsed == SentinelURL(
        sentinels=(("s1", 26380), ("::1", 26381), ("s3", 26379)),
        service_name="my master",
        db=2,
        username="app",
        password="p@ss",
        sentinel_username="watcher",
        sentinel_password="sw",
        socket_timeout=3.5,
        socket_connect_timeout=0.25,
        health_check_interval=30,
    )
    assert "p@ss" not in repr(parsed) and "sw" not in repr(parsed).replace("sentinel", "")


def test_a_minimal_sentinel_url_takes_the_defaults() -> None:
    parsed = parse_sentinel_url("redis+sentinel://10.0.0.1/mymaster")
    assert parsed.sentinels == (("10.0.0.1", 26379),)
    assert (parsed.service_name, parsed.db, parsed.username, parsed.password) == ("mymaster", 0, None, None)
    assert (parsed.socket_timeout, parsed.socket_connect_timeout) == (
        DEFAULT_SOCKET_TIMEOUT, DEFAULT_CONNECT_TIMEOUT
    )
    # A password without a user, and a trailing slash.
    assert parse_sentinel_url("redis+sentinel://:pw@h:1/m/").password == "pw"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel:///mymaster", "needs at least one Sentinel"),
        ("redis+sentinel://h:26379", "needs the master's service name"),
        ("redis+sentinel://h:26379/", "needs the master's service name"),
        ("redis+sentinel://h:26379/m/x", "database number 'x'"),
        ("redis+sentinel://h:26379/m/0/1", "too many path segments"),
        ("redis+sentinel://h:port/m", "bad Sentinel address 'h:port'"),
        ("redis+sentinel://h:0/m", "1..65535"),
        ("redis+sentinel://a,,b/m", "empty Sentinel address"),
        ("redis+sentinel://::1/m", "IPv6 address in brackets"),
        ("redis+sentinel://[::1/m", "unclosed '['"),
        ("redis+sentinel://h/m?db=1", "unknown option 'db'"),
        ("redis+sentinel://h/m?socket_timeout=1", "must be above 1 s"),
        ("redis+sentinel://h/m?socket_timeout=soon", "not a number of seconds"),
        ("redis+sentinel://h/m?socket_connect_timeout=0", "positive number"),
        ("redis+sentinel://h/m?health_check_interval=1.5", "whole seconds"),
        ("redis+sentinel://h/m?socket_timeout=3&socket_timeout=4", "more than once"),
        ("redis+sentinel://h/m#frag", "no #fragment"),
        ("redis://h/x", "database number 'x'"),
        ("redis://h:99999/0", "bad port"),
        ("redis://h/0?bogus=1", "unknown option 'bogus'"),
        ("redis://h/0?socket_timeout=0.5", "must be above 1 s"),
        ("redis://h/0?socket_timeout=x", "Invalid value for 'socket_timeout'"),
        ("unix://", "needs the socket's path"),
        ("http://h:6379", "unsupported Redis URL scheme 'http'"),
        ("localhost:6379", "unsupported Redis URL scheme"),
        ("sentinel://h:26379/m", "redis+sentinel://host1:26379"),
    ],
)
def test_bad_urls_are_refused_with_what_to_fix(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_redis_url(url)


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://:secret@cache.internal:6380/2", "Redis at cache.internal:6380"),
        ("redis://127.0.0.1", "Redis at 127.0.0.1:6379"),
        ("rediss://user:secret@cache:6390/0?ssl_cert_reqs=none", "Redis at cache:6390 (TLS)"),
        ("unix:///run/redis.sock?db=3", "Redis at unix:/run/redis.sock"),
        ("redis+sentinel://:secret@a:1,[::1]:2/svc/1", "Redis master 'svc' via Sentinel a:1,[::1]:2"),
    ],
)
def test_good_urls_are_accepted_and_described_without_credentials(url: str, where: str) -> None:
    assert validate_redis_url(url) == url
    assert describe_redis_url(url) == where


def test_the_settings_refuse_a_bad_url_without_echoing_its_password() -> None:
    with pytest.raises(ValidationError) as caught:
        ControlPlaneSettings(redis_url="redis+sentinel://:hunter2@h:nope/m", cluster_insecure=True)
    assert "bad Sentinel address 'h:nope'" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    settings = ControlPlaneSettings(redis_url="redis+sentinel://h/m", cluster_insecure=True)
    assert settings.redis_url == "redis+sentinel://h/m"
    assert ControlPlaneSettings(redis_url="", cluster_insecure=True).redis_url is None


async def test_a_plain_client_has_bounded_timeouts_and_retries() -> None:
    client = create_redis_client("redis://:pw@127.0.0.1:6390/4?socket_connect_timeout=3")
    try:
        connection = client.connection_pool.make_connection()
        assert (connection.host, connection.port, connection.db, connection.password) == (
            "127.0.0.1", 6390, 4, "pw"
        )
        assert connection.socket_timeout == DEFAULT_SOCKET_TIMEOUT
        assert connection.socket_connect_timeout == 3.0  # the URL wins over the default
        assert connection.retry.get_retries() == COMMAND_RETRIES
        # Connection errors are retried, timeouts are not (a write may have run).
        assert connection.retry._supported_errors == (RedisConnectionError,)
        assert not issubclass(RedisTimeoutError, RedisConnectionError)
        assert describe_client(client) == "Redis at 127.0.0.1:6390"
    finally:
        await client.aclose()


async def test_a_sentinel_client_asks_the_sentinels_for_the_master() -> None:
    client = create_redis_client(
        "redis+sentinel://app:mpw@127.0.0.1:26390,127.0.0.2:26391/orders/5?sentinel_password=spw"
    )
    try:
        assert isinstance(client, SentinelMasterRedis)
        pool = client.connection_pool
        manager = getattr(pool, "sentinel_manager")  # noqa: B009
        assert isinstance(manager, Sentinel)
        assert getattr(pool, "service_name") == "orders"  # noqa: B009
        assert [
            (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in manager.sentinels
        ] == [("127.0.0.1", 26390), ("127.0.0.2", 26391)]
        assert manager.sentinel_kwargs["password"] == "spw"
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (5, "app", "mpw")
        assert kwargs["retry"].get_retries() == COMMAND_RETRIES
        assert describe_client(client) == "Redis master 'orders' via Sentinel 127.0.0.1:26390,127.0.0.2:26391"
    finally:
        await client.aclose()


async def test_the_outage_message_names_the_redis_and_masks_passwords() -> None:
    client = create_redis_client("redis+sentinel://:mpw@127.0.0.1:26390/orders?sentinel_password=spw")
    try:
        message = unreachable_message(
            RedisConnectionError("No master found for 'orders' (auth mpw / spw failed)."), client
        )
    finally:
        await client.aclose()
    assert message == (
        "the database is unreachable (Redis master 'orders' via Sentinel 127.0.0.1:26390): "
        "No master found for 'orders' (auth *** / *** failed); "
        "data planes keep serving their last configuration"
    )
    assert unreachable_message(TimeoutError()).startswith("the database is unreachable: TimeoutError;")
