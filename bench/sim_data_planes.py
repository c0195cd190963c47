"""Many simulated data planes in one process: light ``Cluster.Connect`` streams.

Run by :mod:`bench.cluster_bench` (scenario *scale*) as its own process, so the
control plane is measured alone::

    python -m bench.sim_data_planes --control-plane 127.0.0.1:8005 --streams 1000 --channels 20

Each stream behaves as a data plane does on the wire: it says ``Hello`` (a new
node holding nothing, announcing a one-hour ping interval so the control plane
neither pings it nor drops it as silent during the run), receives the full
snapshot (gRPC parses every message: the stub's deserializer is the protobuf
parser), acknowledges it, then acknowledges every delta. It does not compile
configs: that is the data plane's apply time, measured separately.

It reports on standard output, one JSON object per line:

- ``{"event": "connecting", "t": T}`` just before opening the streams;
- ``{"event": "snapshots", "version": V, "hash": H, "resources": R, "bytes": B,
  "times": [...]}`` once every stream has its snapshot (``times``: receipt,
  epoch seconds, one per stream);
- ``{"event": "delta", "version": V, "upserts": U, "times": [...]}`` once every stream
  has received version V (receipt times of that version's message);
- ``{"event": "error", "stream": N, "error": "..."}`` when a stream fails;
- ``{"event": "cpu", "user": U, "system": S}`` on exit (this process's CPU seconds).

It stops on SIGTERM (and, started by the benchmark, when the benchmark dies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc

import ferry
from proto import cluster_pb2, cluster_pb2_grpc

#: The longest ping interval a control plane accepts: no keep-alive traffic during a run.
PING_INTERVAL = 3600.0


@dataclass
class Tracker:
    """Receipt times per version across streams; emits a line when all streams have one."""

    streams: int
    snapshot_times: dict[int, float] = field(default_factory=dict)
    snapshot_info: dict[str, Any] = field(default_factory=dict)
    #: version -> stream -> receipt time
    versions: dict[int, dict[int, float]] = field(default_factory=dict)
    upserts: dict[int, int] = field(default_factory=dict)
    reported: set[int] = field(default_factory=set)

    def snapshot(self, stream: int, t: float, snapshot: cluster_pb2.Snapshot, size: int) -> None:
        self.snapshot_times[stream] = t
        if not self.snapshot_info:
            self.snapshot_info = {
                "version": snapshot.version,
                "hash": snapshot.hash,
                "resources": len(snapshot.resources),
                "bytes": size,
            }
        if len(self.snapshot_times) == self.streams:
            emit({"event": "snapshots", **self.snapshot_info,
                  "times": [self.snapshot_times[n] for n in range(self.streams)]})

    def delta(self, stream: int, t: float, version: int, upserts: int) -> None:
        seen = self.versions.setdefault(version, {})
        seen[stream] = t
        self.upserts[version] = upserts
        if len(seen) == self.streams and version not in self.reported:
            self.reported.add(version)
            emit({"event": "delta", "version": version, "upserts": upserts,
                  "times": [seen[n] for n in range(self.streams)]})
            del self.versions[version]


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def one_stream(stub: cluster_pb2_grpc.ClusterStub, n: int, tracker: Tracker, run: str) -> None:
    call = stub.Connect()
    try:
        await call.write(cluster_pb2.DataPlaneMessage(hello=cluster_pb2.Hello(
            node_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"ferry-bench/{run}/{n}")),
            hostname=f"sim-{n:04d}",
            version=ferry.__version__,
            labels={"bench": "scale"},
            ping_interval=PING_INTERVAL,
        )))
        while True:
            message = await call.read()
            received = time.time()
            if message is grpc.aio.EOF:
                emit({"event": "error", "stream": n, "error": "the control plane ended the stream"})
                return
            kind = message.WhichOneof("message")
            if kind == "snapshot":
                snapshot = message.snapshot
                tracker.snapshot(n, received, snapshot, message.ByteSize() if not tracker.snapshot_info else 0)
                ack = cluster_pb2.Ack(version=snapshot.version, hash=snapshot.hash)
            elif kind == "delta":
                delta = message.delta
                tracker.delta(n, received, delta.version, len(delta.upserts) + len(delta.removals))
                ack = cluster_pb2.Ack(version=delta.version, hash=delta.hash)
            elif kind == "ping":
                ack = None
                await call.write(cluster_pb2.DataPlaneMessage(ping=cluster_pb2.Ping()))
                continue
            else:
                continue
            await call.write(cluster_pb2.DataPlaneMessage(ack=ack))
    except grpc.aio.AioRpcError as exc:
        emit({"event": "error", "stream": n, "error": f"{exc.code().name}: {exc.details()}"})
    finally:
        call.cancel()


async def main_async(args: argparse.Namespace) -> None:
    options = [
        ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
        # Separate connections per channel even with equal arguments.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [
        grpc.aio.insecure_channel(args.control_plane, options=[*options, ("ferry.bench.channel", c)])
        for c in range(args.channels)
    ]
    tracker = Tracker(args.streams)
    run = uuid.uuid4().hex
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    emit({"event": "connecting", "t": time.time()})
    tasks = [
        asyncio.create_task(
            one_stream(cluster_pb2_grpc.ClusterStub(channels[n % len(channels)]), n, tracker, run)
        )
        for n in range(args.streams)
    ]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        emit({"event": "cpu", "user": round(usage.ru_utime, 2), "system": round(usage.ru_stime, 2)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control-plane", required=True, help="cluster gRPC address HOST:PORT")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--no-uvloop", action="store_true", help="run on asyncio's own loop")
    args = parser.parse_args()
    if args.no_uvloop:
        asyncio.run(main_async(args))
    else:
        import uvloop

        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
