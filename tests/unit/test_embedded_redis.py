import redis

from ferry.redis_server import EmbeddedRedis


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
