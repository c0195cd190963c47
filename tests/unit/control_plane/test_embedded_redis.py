import logging
import os
import signal
import socket
from pathlib import Path

import redis
import redis.asyncio as aioredis
from tenacity import wait_exponential

from control_plane.embedded_redis import EmbeddedRedis, RedisSupervisor, describe_exit
from tests.support.polling import wait_for


def test_embedded_redis_persists_writes_in_aof_across_restart(tmp_path):
    server = EmbeddedRedis(tmp_path)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("ferry:probe", "kept")
        client.close()
    finally:
        server.stop()
    assert list(tmp_path.rglob("*.aof*")), "AOF files are written under the data dir"

    again = EmbeddedRedis(tmp_path)
    again.start()
    try:
        client = redis.Redis.from_url(again.url)
        assert client.get("ferry:probe") == b"kept"
        client.close()
    finally:
        again.stop()


def test_embedded_redis_stop_leaves_no_process(tmp_path):
    server = EmbeddedRedis(tmp_path, appendonly=False)
    server.start()
    proc = server._process
    assert proc is not None
    server.stop()
    assert proc.poll() is not None


def test_embedded_redis_fsyncs_every_write_before_answering(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        try:
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
            assert client.config_get("appendonly") == {"appendonly": "yes"}
        finally:
            client.close()


def test_describe_exit_names_the_signal_or_the_code():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(None) == "still running"


def _hold(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
    except OSError:
        sock.close()
        return None
    return sock


async def test_supervisor_reaps_a_killed_redis_and_restarts_it_on_the_same_port_with_its_data(tmp_path):
    server = EmbeddedRedis(tmp_path)
    server.start()
    supervisor = RedisSupervisor(server, check_interval=0.01)
    supervisor.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        for i in range(100):
            await client.set(f"k{i}", i)  # acknowledged: must survive the SIGKILL
        old = server.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        await wait_for(lambda: server.pid not in (None, old) and supervisor.running, timeout=10,
                       message="a new redis-server")
        assert not Path(f"/proc/{old}").exists(), "the killed redis-server was reaped"
        assert supervisor.restarts == 1
        assert await client.mget([f"k{i}" for i in range(100)]) == [str(i).encode() for i in range(100)]
        await client.set("after", 1)  # the same client reconnects
        assert await client.get("after") == b"1"
    finally:
        await client.aclose()
        await supervisor.stop()
        server.stop()


async def test_supervisor_backs_off_while_the_restart_fails_and_says_why_redis_is_down(tmp_path, caplog):
    server = EmbeddedRedis(tmp_path, appendonly=False)
    server.start()
    supervisor = RedisSupervisor(
        server, check_interval=0.01, backoff=wait_exponential(multiplier=0.05, max=0.2)
    )
    supervisor.start()
    held = None
    try:
        old = server.pid
        assert old is not None
        # Take the port before the supervisor restarts Redis: its attempts fail.
        await supervisor.stop()
        os.kill(old, signal.SIGKILL)
        held = await wait_for(lambda: _hold(server.port), timeout=10, message="Redis's port")
        with caplog.at_level(logging.ERROR, logger="ferry.redis"):
            supervisor.start()
            await wait_for(lambda: "restart attempt 3 failed" in caplog.text, timeout=10,
                           message="three failed attempts")
        assert supervisor.down_reason == "the embedded redis-server exited (killed by SIGKILL) and is restarting"
        assert "Address already in use" in caplog.text, "Redis's own reason is logged"
        held.close()
        held = None
        await wait_for(lambda: supervisor.running, timeout=10, message="the restart to succeed")
        assert server.poll() is None and supervisor.restarts == 1
    finally:
        if held is not None:
            held.close()
        await supervisor.stop()
        server.stop()


async def test_a_redis_that_dies_again_soon_after_its_restart_is_restarted_after_a_wait(tmp_path, caplog):
    server = EmbeddedRedis(tmp_path, appendonly=False)
    server.start()
    supervisor = RedisSupervisor(
        server, check_interval=0.01, backoff=wait_exponential(multiplier=0.05, max=0.2), stable_after=30
    )
    supervisor.start()
    try:
        with caplog.at_level(logging.ERROR, logger="ferry.redis"):
            for restarts in (1, 2):
                pid = server.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await wait_for(lambda: server.pid not in (None, pid) and supervisor.running,  # noqa: B023
                               timeout=10, message=f"restart {restarts}")
        assert "restart attempt 1 failed: it exited again (killed by SIGKILL)" in caplog.text
        assert supervisor.restarts == 2
    finally:
        await supervisor.stop()
        server.stop()
