"""The ``ferry`` command line.

Every flag can also be set through an environment variable ``FERRY_<FLAG>``
(``--admin-listen`` → ``FERRY_ADMIN_LISTEN``); the flag wins over the variable.
This module is the only place that imports both planes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ferry
from ferry_shared.logging_setup import LOG_FORMATS, configure_logging, current_log_format

_TRUE = {"1", "true", "yes", "on"}
#: ``ferry dump``/``apply``'s control plane: ``ferry control-plane``'s default --admin-listen.
DEFAULT_ADMIN_URL = "http://127.0.0.1:8001"
_FALSE = {"0", "false", "no", "off", ""}


def _env_name(flag: str) -> str:
    return "FERRY_" + flag.lstrip("-").replace("-", "_").upper()


def _flag(parser: argparse.ArgumentParser, flag: str, *, default: Any = None, help: str,
          short: str | None = None, aliases: tuple[str, ...] = (), **kw: Any) -> None:
    """Add ``flag`` (and ``aliases``, other spellings) defaulting to its env variable."""
    env = _env_name(flag)
    value = os.environ.get(env, default)
    if kw.get("type") is not None and isinstance(value, str) and env in os.environ:
        value = kw["type"](value)
    shown = "" if default is None else f" (default: {default})"
    names = ((short,) if short else ()) + (flag, *aliases)
    parser.add_argument(*names, default=value, help=f"{help}{shown} [env {env}]", **kw)


def _switch(parser: argparse.ArgumentParser, flag: str, *, help: str) -> None:
    env = _env_name(flag)
    raw = os.environ.get(env, "").strip().lower()
    if raw not in _TRUE | _FALSE:
        raise SystemExit(f"ferry: {env}={raw!r} is not a boolean (use 1/0, true/false)")
    parser.add_argument(flag, action="store_true", default=raw in _TRUE, help=f"{help} [env {env}]")


def _cluster_tls_flags(parser: argparse.ArgumentParser, *, data_plane: bool) -> None:
    """The cluster-link mTLS flags (Kong's cluster_mtls, cluster_cert, ...); see docs/hybrid-mode.md."""
    _flag(parser, "--cluster-mtls", default="shared", choices=["shared", "pki"],
          help="cluster mTLS mode: shared (one certificate on every plane, from `ferry cert generate`) "
          "or pki (certificates issued by --cluster-ca-cert)")
    _flag(parser, "--cluster-cert", help="this plane's cluster certificate (PEM)")
    _flag(parser, "--cluster-cert-key", aliases=("--cluster-key",),
          help="the private key of --cluster-cert (PEM, unencrypted)")
    _flag(parser, "--cluster-ca-cert", aliases=("--cluster-ca",), help="pki mode: the CA certificate(s) that issued the cluster "
          "certificates (PEM)")
    if data_plane:
        _flag(parser, "--cluster-server-name", help="pki mode: the name expected in the control "
              "plane's certificate (default: the host of --control-plane)")


def _common(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--log-level", default="info", choices=["debug", "info", "warning", "error"],
          help="log verbosity")
    _flag(parser, "--log-format", default="text", choices=list(LOG_FORMATS),
          help="log lines as text, or as one JSON object a line (for log shippers)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry",
        description="Ferry: a hybrid-mode API gateway (control plane + data planes).",
    )
    parser.add_argument("--version", action="version", version=f"ferry {ferry.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cp = sub.add_parser("control-plane", help="run a control plane (Admin API + cluster gRPC)",
                        description="Run a control plane: the Kong-compatible Admin API, the cluster "
                        "gRPC service for data planes, and (without --redis-url) an embedded Redis.")
    _flag(cp, "--admin-listen", default="127.0.0.1:8001",
          help="Admin API listen list, Kong's form: HOST:PORT [ssl], comma-separated "
          "(e.g. '127.0.0.1:8001, 127.0.0.1:8444 ssl'); an ssl entry serves the same API over TLS 1.2+")
    _flag(cp, "--admin-ssl-cert", metavar="FILE", help="certificate (PEM, chain allowed) of the ssl "
          "--admin-listen entries; default: a self-signed one generated under --data-dir/ssl")
    _flag(cp, "--admin-ssl-cert-key", metavar="FILE", help="the private key of --admin-ssl-cert "
          "(PEM, unencrypted)")
    _flag(cp, "--cluster-listen", default="127.0.0.1:8005", help="cluster gRPC address HOST:PORT")
    _flag(cp, "--data-dir", default="./ferry-data", help="state directory (embedded Redis data)")
    _flag(cp, "--redis-url", help="external Redis: redis://[:PASSWORD@]HOST:PORT/DB, rediss://, "
          "unix:///PATH, or redis+sentinel://[:PASSWORD@]SENTINEL:26379[,...]/SERVICE[/DB] "
          "(docs/hybrid-mode.md); default: start an embedded redis-server under --data-dir")
    _flag(cp, "--merge-window", default=0.05, type=float,
          help="at most one update to data planes per this many seconds: a change after a "
          "quiet window goes out at once, changes within a window of the last update go out together")
    _flag(cp, "--data-plane-purge-delay", default=14 * 24 * 3600, type=int,
          help="seconds after which a data plane not seen is dropped from /clustering/data-planes")
    _flag(cp, "--health-report-ttl", default=90.0, type=float,
          help="seconds a data plane's target health counts after its last report or ping")
    _flag(cp, "--health-check-replicas", default=0, type=int,
          help="health-check sharding: data planes that actively probe each target, sharing "
          "their verdicts with the others (0: every data plane probes every target)")
    _flag(cp, "--health-listen", help="plaintext gRPC health service (grpc.health.v1 only) "
          "HOST:PORT, for Kubernetes gRPC probes (the cluster port needs mTLS); default: none")
    _flag(cp, "--admin-tokens", metavar="FILE", help="Admin API tokens file (hashes and roles; "
          "`ferry admin-token add`): every call then needs a Ferry-Admin-Token header; default: none")
    _flag(cp, "--admin-body-limit", default=32 * 1024 * 1024, type=int,
          help="largest Admin API request body in bytes (413 above it)")
    _switch(cp, "--cluster-insecure", help="allow a plaintext cluster link (trusted networks only)")
    _cluster_tls_flags(cp, data_plane=False)
    _common(cp)

    dp = sub.add_parser("data-plane", help="run a data plane (the proxy)",
                        description="Run a data plane: the HTTP proxy, configured by a control plane.")
    _flag(dp, "--control-plane", default="127.0.0.1:8005", help="control plane cluster address HOST:PORT")
    _flag(dp, "--proxy-listen", default="0.0.0.0:8000, 0.0.0.0:8443 ssl",
          help="proxy listeners, Kong's list: 'HOST:PORT[ ssl], ...' (ssl: TLS, certificate by SNI)")
    _flag(dp, "--status-listen", default="127.0.0.1:8100", help="status API address HOST:PORT")
    _flag(dp, "--data-dir", default="./ferry-data", help="state directory (config cache, node id)")
    _flag(dp, "--hostname", default="", help="hostname reported to the control plane (default: this host's)")
    _flag(dp, "--labels", default="", help="comma-separated key=value labels reported to the control plane")
    _flag(dp, "--dns-resolver", default="",
          help="nameservers IP[:PORT][,IP[:PORT]] resolving target host names (default: /etc/resolv.conf's)")
    _flag(dp, "--cluster-ping-interval", default=30.0, type=float,
          help="seconds between keep-alive pings on the cluster link; the control plane pings "
          "back at the same interval and either side drops a peer silent for 1.5 intervals")
    _flag(dp, "--workers", default=1, type=int,
          help="proxy processes sharing --proxy-listen (SO_REUSEPORT), with one cluster link "
          "and one health checker for the node; 1 proxies in this process")
    _switch(dp, "--access-log", help="log one line (or JSON object) per proxied request, "
            "without headers or bodies")
    _client_timeout_flags(dp)
    _switch(dp, "--cluster-insecure", help="allow a plaintext cluster link (trusted networks only)")
    _cluster_tls_flags(dp, data_plane=True)
    _common(dp)

    # Internal: one proxy worker of `data-plane --workers N` (started by the node).
    worker = sub.add_parser("data-plane-worker")
    worker.add_argument("--hub", required=True, help="the node's worker socket")
    worker.add_argument("--proxy-listen", required=True, help="proxy listeners, as for data-plane")
    worker.add_argument("--index", type=int, default=0, help="this worker's number")
    worker.add_argument("--dns-resolver", default="", help="as for data-plane")
    worker.add_argument("--hostname", default="", help="the node's hostname")
    worker.add_argument("--access-log", action="store_true", help="as for data-plane")
    _client_timeout_flags(worker)
    _common(worker)

    up = sub.add_parser("up", help="all in one: embedded Redis + control plane + data planes + demo",
                        description="Start an embedded Redis, a control plane, data planes and two demo "
                        "backends wired as an upstream, and print what to curl. Ctrl-C stops all of it.")
    _flag(up, "--data-dir", default="./ferry-data", help="state directory")
    _flag(up, "--data-planes", default=1, type=int, help="number of data-plane processes")
    _flag(up, "--admin-listen", default="127.0.0.1:8001",
          help="Admin API listen list (as control-plane's; printed and polled: the first plaintext entry)")
    _flag(up, "--cluster-listen", default="127.0.0.1:8005", help="cluster gRPC address")
    _flag(up, "--proxy-listen", default="127.0.0.1:8000, 127.0.0.1:8443 ssl",
          help="proxy listeners of the first data plane (Kong's list); data plane n uses "
          "each port + 10*(n-1)")
    _flag(up, "--status-listen", default="127.0.0.1:8100",
          help="status address of the first data plane; data plane n uses its port + 10*(n-1)")
    _switch(up, "--no-demo", help="do not start the demo backends or create the demo entities")
    _common(up)
    cert = sub.add_parser("cert", help="cluster certificates (mTLS between the planes)",
                          description="Manage the certificates of the cluster link.")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    gen = cert_sub.add_parser("generate", help="write a shared cluster certificate and key",
                              description="Write a self-signed EC P-384 cluster certificate and its key "
                              "(mode 0600) for --cluster-mtls shared, like `kong hybrid gen_cert`.")
    _flag(gen, "--cert", default="cluster.crt", help="certificate file to write")
    _flag(gen, "--key", default="cluster.key", help="private key file to write")
    _flag(gen, "--days", default=1095, type=int, help="validity in days")
    _switch(gen, "--force", help="overwrite existing files")

    token = sub.add_parser("admin-token", help="Admin API tokens (access control)",
                           description="Manage the tokens of --admin-tokens FILE.")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    add = token_sub.add_parser("add", help="generate a token, store its hash, print it once",
                               description="Generate a random token, append its SHA-256 hash with "
                               "NAME and ROLE to FILE (created mode 0600), and print the token: it "
                               "is stored nowhere else. Restart the control planes to use it.")
    add.add_argument("--file", required=True, help="the tokens file (--admin-tokens)")
    add.add_argument("--name", required=True, help="who holds the token (shown in 403 messages)")
    add.add_argument("--role", default="admin", choices=["admin", "read-only"],
                     help="admin: every call; read-only: GET/HEAD/OPTIONS only (default: admin)")

    dump = sub.add_parser("dump", help="write the whole configuration as a declarative YAML file",
                          description="Read the whole configuration from a control plane (one "
                          "consistent read) and write it as Kong's declarative format (YAML).")
    _flag(dump, "--admin-url", default=DEFAULT_ADMIN_URL, metavar="URL", help="the control plane's Admin API")
    _flag(dump, "--output", short="-o", metavar="FILE", help="file to write (default: standard output)")
    _flag(dump, "--admin-token", metavar="TOKEN", help="Admin API token, for a control plane that requires one "
          "(sent as Ferry-Admin-Token; prefer the env variable: a flag shows in `ps`)")
    apply = sub.add_parser("apply", help="make the configuration equal to a declarative file",
                           description="Validate FILE, print what it creates, updates and deletes on "
                           "the control plane, and apply it as one atomic change (POST /config).")
    apply.add_argument("file", metavar="FILE", help="declarative configuration (YAML or JSON; - for stdin)")
    _flag(apply, "--admin-url", default=DEFAULT_ADMIN_URL, metavar="URL", help="the control plane's Admin API")
    _switch(apply, "--dry-run", help="print the diff only; write nothing")
    _flag(apply, "--admin-token", metavar="TOKEN", help="Admin API token, for a control plane that requires one "
          "(sent as Ferry-Admin-Token; prefer the env variable: a flag shows in `ps`)")
    return parser


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"invalid label {item!r}: expected key=value")
        labels[key.strip()] = value.strip()
    return labels


def _fail(message: str) -> int:
    if current_log_format() == "json":
        # A log shipper reading JSON lines gets the fatal error as one of them too.
        logging.getLogger("ferry").error("ferry: error: %s", message)
    else:
        print(f"ferry: error: {message}", file=sys.stderr)
    return 2


async def _serve_until_signalled(start: Any, stop: Any) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    try:
        await stopping.wait()
    finally:
        await stop()


def _run_control_plane(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from control_plane.server import ControlPlane, ControlPlaneSettings

    configure_logging(args.log_level, component="control-plane", log_format=args.log_format)
    try:
        settings = ControlPlaneSettings(
            admin_listen=args.admin_listen,
            admin_ssl_cert=Path(args.admin_ssl_cert) if args.admin_ssl_cert else None,
            admin_ssl_cert_key=Path(args.admin_ssl_cert_key) if args.admin_ssl_cert_key else None,
            cluster_listen=args.cluster_listen,
            data_dir=Path(args.data_dir),
            redis_url=args.redis_url,
            cluster_insecure=args.cluster_insecure,
            cluster_tls=_cluster_tls(args),
            merge_window=args.merge_window,
            data_plane_purge_delay=args.data_plane_purge_delay,
            health_report_ttl=args.health_report_ttl,
            health_check_replicas=args.health_check_replicas,
            health_listen=args.health_listen,
            admin_tokens=Path(args.admin_tokens) if args.admin_tokens else None,
            admin_body_limit=args.admin_body_limit,
        )
    except (ValidationError, ValueError) as exc:
        return _fail(_validation_message(exc) if isinstance(exc, ValidationError) else str(exc))
    plane = ControlPlane(settings)
    return _run(_serve_until_signalled(plane.start, plane.stop))


def _run_data_plane(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from data_plane.server import DataPlane, DataPlaneSettings

    configure_logging(args.log_level, component="data-plane", log_format=args.log_format)
    try:
        settings = DataPlaneSettings(
            control_plane=args.control_plane,
            proxy_listen=args.proxy_listen,
            status_listen=args.status_listen,
            data_dir=Path(args.data_dir),
            cluster_insecure=args.cluster_insecure,
            cluster_tls=_cluster_tls(args),
            hostname=args.hostname,
            labels=parse_labels(args.labels),
            dns_resolver=args.dns_resolver,
            cluster_ping_interval=args.cluster_ping_interval,
            workers=args.workers,
            access_log=args.access_log,
            client_header_timeout=args.client_header_timeout,
            client_body_timeout=args.client_body_timeout,
            send_timeout=args.send_timeout,
        )
    except (ValidationError, ValueError) as exc:
        return _fail(_validation_message(exc) if isinstance(exc, ValidationError) else str(exc))
    from data_plane.startup_objects import freeze_startup_objects

    freeze_startup_objects()  # the imports are done; no config yet (see there)
    plane = DataPlane(settings)
    return _run(_serve_until_signalled(plane.start, plane.stop))


def _run_data_plane_worker(args: argparse.Namespace) -> int:
    import ferry
    from data_plane.proxy import ClientTimeouts
    from data_plane.workers.worker import ProxyWorker, run_worker
    from ferry_shared.listen import parse_listen_list

    configure_logging(args.log_level, component=f"data-plane-worker-{args.index}",
                      log_format=args.log_format)
    listen = parse_listen_list(args.proxy_listen)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        worker = ProxyWorker(Path(args.hub), listen, args.index, via=f"ferry/{ferry.__version__}",
                             dns_resolver=args.dns_resolver, hostname=args.hostname,
                             access_log=args.access_log,
                             client_timeouts=ClientTimeouts(args.client_header_timeout,
                                                            args.client_body_timeout,
                                                            args.send_timeout))
        await run_worker(worker, stopping)

    from data_plane.startup_objects import freeze_startup_objects

    freeze_startup_objects()  # as for the data plane: imports done, no config yet
    return _run(serve())


def _client_timeout_flags(parser: argparse.ArgumentParser) -> None:
    """nginx's three client timeouts (docs/operations.md), on data planes and workers."""
    _flag(parser, "--client-header-timeout", default=60.0, type=float,
          help="seconds for a whole request head to arrive, from its first byte (408 and close)")
    _flag(parser, "--client-body-timeout", default=60.0, type=float,
          help="seconds between two reads of a request body (408, or close once a "
          "response has begun)")
    _flag(parser, "--send-timeout", default=60.0, type=float,
          help="seconds between two successful writes to a client that does not read "
          "(then the client and its upstream connection are closed)")


def _cluster_tls(args: argparse.Namespace) -> Any:
    from ferry_shared.cluster_tls import cluster_tls_from_flags

    return cluster_tls_from_flags(args.cluster_mtls, args.cluster_cert, args.cluster_cert_key,
                                  args.cluster_ca_cert, getattr(args, "cluster_server_name", None))


def _validation_message(exc: Any) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"--{where.replace('_', '-')}: {message}" if where else message)
    return "; ".join(parts)


def _run(coro: Any) -> int:
    import uvloop

    try:
        uvloop.run(coro)
    except OSError as exc:
        return _fail(str(exc))
    except RuntimeError as exc:
        return _fail(str(exc))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "control-plane":
        return _run_control_plane(args)
    if args.command == "data-plane":
        return _run_data_plane(args)
    if args.command == "data-plane-worker":
        return _run_data_plane_worker(args)
    if args.command == "cert":
        from ferry.cluster_certs import run_cert_command

        return run_cert_command(args)
    if args.command == "admin-token":
        from control_plane.admin_tokens import AdminTokenError, add_token

        try:
            print(add_token(Path(args.file), args.name, args.role))
        except AdminTokenError as exc:
            return _fail(str(exc))
        return 0
    if args.command == "up":
        from ferry.up import run_up

        return run_up(args)
    if args.command in ("dump", "apply"):
        from ferry.config_commands import run_apply, run_dump

        if args.command == "dump":
            return run_dump(args.admin_url, args.output, token=args.admin_token)
        return run_apply(args.admin_url, args.file, dry_run=args.dry_run, token=args.admin_token)
    return _fail(f"unknown command {args.command}")
