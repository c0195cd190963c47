"""The HTTPS scenario's pure parts: its certificate, nginx's TLS config, the wrk script,
summaries, the handshake-alone estimate, ratios and rendering (no process started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bench.tls_bench import (
    CLOSE_SCRIPT,
    PHASES,
    compute_ratios,
    handshake_only_us,
    make_certificate,
    nginx_tls_conf,
    render,
    summarize_phase,
)


def run(scenario: str, round_: int, rps: float, us: float | None, errors: int = 0) -> dict[str, Any]:
    return {
        "scenario": scenario, "round": round_, "requests_per_s": rps, "p50_ms": 1.0, "p99_ms": 3.0,
        "errors": errors, "proxy_cpu_us_per_request": us, "proxy_cpu_fraction": 0.98,
        "proxy_core_us_per_request": None if us is None else us + 2,
    }


KEEPALIVE = [run("nginx", 1, 30_000, 20.0), run("nginx", 2, 32_000, 22.0), run("nginx", 3, 31_000, 21.0),
             run("ferry", 1, 15_000, 40.0), run("ferry", 2, 16_000, 44.0), run("ferry", 3, 14_000, 42.0, errors=1)]
HANDSHAKE = [run("nginx", 1, 2_000, 250.0), run("ferry", 1, 1_000, 420.0)]


def test_the_certificate_is_an_ec_p256_leaf_for_the_sni_wrk_sends_and_bench_test(tmp_path: Path) -> None:
    cert_path, key_path = make_certificate(tmp_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "bench.test"]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert key_path.stat().st_mode & 0o777 == 0o600


def test_nginx_terminates_tls_with_the_bench_pair_and_keeps_its_upstreams_alive(tmp_path: Path) -> None:
    conf = nginx_tls_conf(tmp_path, 8443, [9001, 9002], tmp_path / "c.crt", tmp_path / "k.key")
    assert "listen 127.0.0.1:8443 ssl backlog=4096;" in conf
    assert f"ssl_certificate {tmp_path / 'c.crt'};" in conf and f"ssl_certificate_key {tmp_path / 'k.key'};" in conf
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert "server 127.0.0.1:9001" in conf and "server 127.0.0.1:9002" in conf and "keepalive 128;" in conf


def test_the_handshake_script_closes_every_connection() -> None:
    assert 'wrk.headers["Connection"] = "close"' in CLOSE_SCRIPT


def test_summaries_are_medians_per_proxy_with_errors_summed() -> None:
    summary = summarize_phase(KEEPALIVE)
    assert summary["nginx"]["requests_per_s"] == 31_000 and summary["nginx"]["proxy_cpu_us_per_request"] == 21.0
    assert summary["ferry"]["requests_per_s"] == 15_000 and summary["ferry"]["errors"] == 1
    assert (summary["ferry"]["requests_per_s_min"], summary["ferry"]["requests_per_s_max"]) == (14_000, 16_000)
    assert summarize_phase([run("nginx", 1, 10, 5.0)]).keys() == {"nginx"}


def test_the_handshake_alone_is_a_connection_minus_a_kept_alive_request() -> None:
    assert handshake_only_us(250.0, 21.0) == 229.0
    assert handshake_only_us(None, 21.0) is None and handshake_only_us(250.0, None) is None


def test_ratios_are_nginx_cpu_over_ferry_cpu_and_ferry_rate_over_nginx_rate() -> None:
    ratios = compute_ratios({"keepalive": summarize_phase(KEEPALIVE), "handshake": summarize_phase(HANDSHAKE)})
    assert ratios["keepalive"] == {"cpu_efficiency": 21.0 / 42.0, "throughput": 15_000 / 31_000}
    assert ratios["handshake"] == {"cpu_efficiency": 250.0 / 420.0, "throughput": 0.5}


def test_without_ferry_the_ratios_are_none_and_the_rows_say_not_measured() -> None:
    summary = {"keepalive": summarize_phase(KEEPALIVE[:3]), "handshake": summarize_phase(HANDSHAKE[:1])}
    ratios = compute_ratios(summary)
    assert all(value is None for phase in PHASES for value in ratios[phase].values())
    text = render({
        "settings": {"rounds": 3, "duration_s": 10, "connections": 50, "body_bytes": 16384,
                     "proxy_core": 0, "load_core": 1},
        "summary": summary, "ratios": ratios,
        "handshake_only_us": {"nginx": 229.0, "ferry": None},
        "checks": {"nginx": {"tls_version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384",
                             "certificate": "the bench certificate (SNI localhost)"}},
        "warnings": ["Ferry not measured: no /certificates"],
    })
    assert "Ferry DP, compiled    not measured" in text
    assert "CPU efficiency — (nginx µs ÷ Ferry µs)" in text
    assert "nginx (1 worker) 229.0" in text and "WARNING: Ferry not measured" in text
