"""The http2 scenario's gRPC backend: a grpcio server with one trivial unary method.

``python -m bench.grpc_backend --port P`` serves ``/bench.Echo/Call`` on 127.0.0.1:P
until SIGTERM. The method answers every request with one fixed reply message; both are
handled as raw bytes (no generated code: the wire format is a protobuf message of one
``bytes`` field either way, see :func:`bench.h2load.protobuf_bytes_field`).

It runs grpcio's thread-pool server with 4 threads: on this rig (sharing the load core
with h2load) it served ~7,000 calls/s where grpcio's asyncio server served ~4,500 and a
1-thread pool ~5,400. It runs in its own process on the load core, so its CPU is never
counted as the proxy's; a Python backend caps the rate far below what the proxies could
do, so compare the proxies' CPU per call, not calls/s.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import grpc

from bench.h2load import protobuf_bytes_field

SERVICE = "bench.Echo"
METHOD = "Call"
#: The path gRPC clients (and h2load) POST to.
PATH = f"/{SERVICE}/{METHOD}"
#: A unary request: ``{1: "ferry bench: unary call"}``.
REQUEST = protobuf_bytes_field(1, b"ferry bench: unary call")
#: The reply to every call: ``{1: 64 bytes}``.
REPLY = protobuf_bytes_field(1, b"ferry bench: the unary reply of the gRPC backend, 64 bytes long.")


#: The server's threads (see the module's docstring for why 4).
THREADS = 4


def _call(request: bytes, context: grpc.ServicerContext) -> bytes:
    return REPLY


def _handler() -> grpc.GenericRpcHandler:
    # No (de)serializers: the method gets and returns the serialized bytes.
    return grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(_call)})


def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    server = grpc.server(ThreadPoolExecutor(max_workers=THREADS), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_handler(),))
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"bench.grpc_backend: cannot listen on 127.0.0.1:{port}")
    stopped = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"bench.grpc_backend: serving {PATH} on 127.0.0.1:{port} ({THREADS} threads)", flush=True)
    stopped.wait()
    server.stop(grace=1.0).wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_backend")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
