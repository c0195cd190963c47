"""The http2 scenario's pure parts: h2load's command line and report, the gRPC request
body, nghttp's trace, nginx's HTTP/2 and gRPC configs, Ferry's listen list, summaries,
ratios and rendering (no process started; the reports are real h2load/nghttp output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import grpc_backend
from bench.h2_bench import (
    PHASES,
    STREAMS,
    compute_ratios,
    ferry_proxy_listen,
    load_command,
    nginx_grpc_conf,
    nginx_h2_conf,
    phase_warnings,
    render,
    summarize_phase,
)
from bench.h2_checks import parse_nghttp_verbose
from bench.h2load import (
    H2loadOutputError,
    grpc_message_frame,
    h2load_command,
    parse_h2load_output,
    protobuf_bytes_field,
    unsupported_protocol,
)
from bench.proxy_bench import nginx_proxy_conf
from ferry_shared.listen import parse_listen_list

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --------------------------------------------------------------------------- h2load


def test_an_h2load_report_gives_requests_rate_latency_and_the_negotiated_protocol() -> None:
    result = parse_h2load_output(fixture("h2load-h2c.txt"))
    assert result.requests == 2000 and result.status_2xx == 2000 and result.errors == 0
    assert result.protocol == "h2c"
    assert result.requests_per_s == pytest.approx(101719.05)
    assert result.duration_s == pytest.approx(0.01966)
    assert result.latency_mean_ms == pytest.approx(0.031)  # "31us"
    assert result.latency_max_ms == pytest.approx(0.222)
    assert result.p50_ms is None and result.p99_ms is None  # h2load prints no percentiles
    assert result.to_json()["errors"] == 0


def test_streams_that_failed_count_as_errors() -> None:
    # nginx's default keepalive_requests (1000) closes connections under load: the
    # streams in flight then fail.
    result = parse_h2load_output(fixture("h2load-h2c-failures.txt"))
    assert result.failed == 80 and result.errors == result.total - result.status_2xx == 80


def test_a_run_that_connected_nowhere_negotiated_no_protocol() -> None:
    result = parse_h2load_output(fixture("h2load-refused.txt"))
    assert result.requests == 0 and result.protocol is None
    assert unsupported_protocol(result.protocol, ("h2c",)) == "h2load negotiated no protocol (no connection succeeded)"


def test_a_fallback_to_http1_does_not_count_as_http2() -> None:
    assert unsupported_protocol("http/1.1", ("h2",)) == "h2load negotiated 'http/1.1', not h2"
    assert unsupported_protocol("h2", ("h2",)) is None


def test_text_that_is_not_an_h2load_report_is_refused() -> None:
    with pytest.raises(H2loadOutputError):
        parse_h2load_output("h2load: unrecognized option '--bogus'\n")


def test_the_h2load_command_keeps_streams_in_flight_for_a_duration_and_posts_grpc_frames(tmp_path: Path) -> None:
    plain = h2load_command("http://127.0.0.1:1/x", duration=3.4, connections=50, streams=10)
    assert plain == ["h2load", "--threads=1", "--clients=50", "--max-concurrent-streams=10", "--duration=3",
                     "--warm-up-time=0", "http://127.0.0.1:1/x"]
    body = tmp_path / "req.bin"
    grpc = load_command("http://127.0.0.1:1/bench.Echo/Call", "grpc", duration=3, connections=50, request_file=body)
    assert grpc.tool == "h2load" and grpc.parse is parse_h2load_output
    assert f"--data={body}" in grpc.argv and f"--max-concurrent-streams={STREAMS}" in grpc.argv
    assert "--header=content-type: application/grpc" in grpc.argv and "--header=te: trailers" in grpc.argv
    h2c = load_command("http://127.0.0.1:1/bench/item", "h2c", duration=3, connections=50, request_file=body)
    assert not any(arg.startswith(("--data", "--header")) for arg in h2c.argv)


# --------------------------------------------------------------------------- gRPC bytes


def test_a_grpc_message_is_a_flag_byte_a_big_endian_length_and_the_message() -> None:
    assert grpc_message_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert grpc_message_frame(b"") == b"\x00\x00\x00\x00\x00"


def test_a_protobuf_bytes_field_is_key_length_value_with_a_varint_length() -> None:
    assert protobuf_bytes_field(1, b"hi") == b"\x0a\x02hi"
    long = protobuf_bytes_field(2, b"x" * 300)
    assert long[:3] == b"\x12\xac\x02" and len(long) == 303
    with pytest.raises(ValueError):
        protobuf_bytes_field(16, b"")


def test_the_backend_request_and_reply_are_one_field_messages() -> None:
    assert grpc_backend.REQUEST.startswith(b"\x0a") and grpc_backend.REPLY.startswith(b"\x0a")
    assert len(grpc_message_frame(grpc_backend.REPLY)) == 71  # the DATA frame nghttp saw
    assert grpc_backend.PATH == "/bench.Echo/Call"


# --------------------------------------------------------------------------- nghttp


def test_the_nghttp_trace_gives_status_trailers_and_data_bytes_of_a_grpc_call() -> None:
    answer = parse_nghttp_verbose(fixture("nghttp-grpc.txt"))
    assert answer["status"] == 200
    assert answer["fields"]["content-type"] == "application/grpc"
    assert answer["fields"]["grpc-status"] == "0" and answer["fields"]["grpc-message"] == ""
    assert answer["data_bytes"] == len(grpc_message_frame(grpc_backend.REPLY))


def test_an_nghttp_trace_without_a_response_has_no_status() -> None:
    answer = parse_nghttp_verbose(fixture("nghttp-refused.txt"))
    assert answer == {"status": None, "fields": {}, "data_bytes": 0}


# --------------------------------------------------------------------------- configs


def test_nginx_speaks_http2_downstream_with_nginx_122s_listen_syntax(tmp_path: Path) -> None:
    h2c = nginx_h2_conf(tmp_path, 8080, [9001, 9002])
    assert "listen 127.0.0.1:8080 http2 backlog=4096;" in h2c and "ssl_certificate" not in h2c
    tls = nginx_h2_conf(tmp_path, 8443, [9001, 9002], tls=(tmp_path / "c.crt", tmp_path / "k.key"))
    assert "listen 127.0.0.1:8443 ssl http2 backlog=4096;" in tls
    assert f"ssl_certificate {tmp_path / 'c.crt'};" in tls
    # Upstream side unchanged: the proxy scenario's HTTP/1.1 keep-alive to both backends.
    for conf in (h2c, tls):
        assert "proxy_http_version 1.1;" in conf and "keepalive 128;" in conf
        assert "server 127.0.0.1:9001" in conf and "server 127.0.0.1:9002" in conf
        assert "keepalive_requests 10000000;" in conf  # else nginx ends each h2 connection after 1000


def test_the_proxy_scenarios_nginx_config_is_unchanged_without_http2(tmp_path: Path) -> None:
    assert "http2" not in nginx_proxy_conf(tmp_path, 8080, [9001])
    assert "listen 127.0.0.1:8080 backlog=4096;" in nginx_proxy_conf(tmp_path, 8080, [9001])


def test_nginx_passes_grpc_to_the_backend_over_kept_alive_connections(tmp_path: Path) -> None:
    conf = nginx_grpc_conf(tmp_path, 8080, 50051)
    assert "listen 127.0.0.1:8080 http2 backlog=4096;" in conf
    assert "location /bench.Echo/ { grpc_pass grpc://grpc_backend; }" in conf
    assert "server 127.0.0.1:50051" in conf and "keepalive 128;" in conf
    assert "worker_processes 1;" in conf and f"pid {tmp_path}/nginx.pid;" in conf


def test_ferrys_listen_list_has_h2c_tls_h2_and_plain_http1_entries() -> None:
    entries = parse_listen_list(ferry_proxy_listen(1001, 1002, 1003))
    assert [(e.port, e.ssl, e.http2) for e in entries] == [(1001, False, True), (1002, True, True),
                                                             (1003, False, False)]


# --------------------------------------------------------------------------- summaries


def run(scenario: str, rps: float, us: float | None, *, errors: int = 0, fraction: float = 0.98,
        load_busy: float = 0.5) -> dict[str, Any]:
    return {
        "scenario": scenario, "requests_per_s": rps, "errors": errors, "proxy_cpu_us_per_request": us,
        "proxy_cpu_fraction": fraction, "proxy_core_us_per_request": None if us is None else us + 1,
        "backends_cpu_us_per_request": 5.0, "load_core_busy_fraction": load_busy,
        "h2load": {"latency_mean_ms": 10.0},
    }


H2C = [run("nginx", 36_000, 28.0), run("nginx", 34_000, 30.0), run("nginx", 35_000, 29.0),
       run("ferry", 12_000, 80.0), run("ferry", 11_000, 84.0, errors=2), run("ferry", 13_000, 82.0)]


def test_summaries_are_medians_per_proxy_with_errors_summed() -> None:
    summary = summarize_phase(H2C)
    assert summary["nginx"]["requests_per_s"] == 35_000 and summary["nginx"]["proxy_cpu_us_per_request"] == 29.0
    assert summary["ferry"]["errors"] == 2 and summary["ferry"]["runs"] == 3
    assert summary["ferry"]["latency_mean_ms"] == 10.0


def test_ratios_are_nginx_cpu_over_ferrys_and_none_where_ferry_was_not_measured() -> None:
    summary = {"h2c": summarize_phase(H2C), "h2": summarize_phase([run("nginx", 25_000, 40.0)])}
    ratios = compute_ratios(summary)
    assert ratios["h2c"]["cpu_efficiency"] == pytest.approx(29.0 / 82.0)
    assert ratios["h2c"]["throughput"] == pytest.approx(12_000 / 35_000)
    assert ratios["h2"] == {"cpu_efficiency": None, "throughput": None}
    assert set(ratios) == set(PHASES)


def test_a_proxy_capped_by_the_load_core_is_flagged_to_compare_cpu_per_request() -> None:
    summary = {"grpc": summarize_phase([run("nginx", 3_900, 55.0, fraction=0.21, load_busy=0.99)])}
    [warning] = phase_warnings(summary)
    assert "used 21% of its core" in warning and "load core" in warning and "CPU µs per request" in warning


def test_the_rendering_shows_each_phase_and_why_ferry_is_missing() -> None:
    summary = {"h2c": summarize_phase(H2C), "h2": summarize_phase([run("nginx", 25_000, 40.0)]), "grpc": {}}
    result = {
        "settings": {"rounds": 3, "duration_s": 10.0, "connections": 50, "streams": 10, "proxy_core": 0,
                     "load_core": 1},
        "summary": summary, "ratios": compute_ratios(summary),
        "unavailable": {"h2": "TLS listener offers no h2", "grpc": "the Admin API refuses protocol grpc"},
        "warnings": [],
    }
    text = render(result)
    assert "h2load -t1 -c50 -m10" in text
    assert "HTTP/2 over TLS (ALPN h2)" in text and "h2c (HTTP/2 cleartext, prior knowledge)" in text
    assert "Ferry unavailable in h2: TLS listener offers no h2" in text
    assert "Ferry unavailable in grpc: the Admin API refuses protocol grpc" in text
    assert "h2c   CPU efficiency 0.35" in text
    assert "nginx (1 worker)" in text and "not measured" in text
