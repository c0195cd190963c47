import pytest

from ferry_shared.listen import ListenAddress, format_host_port, parse_host_port, parse_listen_list


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8001", ("127.0.0.1", 8001)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":8000", ("127.0.0.1", 8000)),
        ("[::1]:8005", ("::1", 8005)),
        ("cp.example.com:8005", ("cp.example.com", 8005)),
    ],
)
def test_parse_host_port_accepts_hosts_ipv4_and_ipv6(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["8000", "host:", "host:http", "host:70000", "[::1]8000"])
def test_parse_host_port_rejects_malformed_addresses_with_the_value_in_the_message(text):
    with pytest.raises(ValueError, match="invalid address"):
        parse_host_port(text)


def test_format_host_port_brackets_ipv6():
    assert format_host_port("::1", 80) == "[::1]:80"
    assert format_host_port("10.0.0.1", 80) == "10.0.0.1:80"


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    import socket

    from ferry_shared.listen import _ephemeral_start, free_port

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    # Below the range outgoing connections take their local ports from (where there is
    # room), so none of them can land on a port between its pick and its bind.
    assert all(port < _ephemeral_start() for port in ports)
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_listen_list_reads_kongs_form_with_ssl_and_http2_flags() -> None:
    assert parse_listen_list("0.0.0.0:8000, 0.0.0.0:8443 ssl") == (
        ListenAddress("0.0.0.0", 8000),
        ListenAddress("0.0.0.0", 8443, ssl=True),
    )
    (entry,) = parse_listen_list(":9443 ssl http2 reuseport", default_host="127.0.0.1")
    assert entry == ListenAddress("127.0.0.1", 9443, ssl=True, http2=True)
    assert str(entry) == "127.0.0.1:9443 ssl http2"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "an entry is empty"),
        ("127.0.0.1:8000,", "an entry is empty"),
        ("127.0.0.1:8443 tls", "unknown flag 'tls'"),
        ("127.0.0.1:8000, 127.0.0.1:8000 ssl", "listed twice"),
        ("8000 ssl", "expected HOST:PORT"),
    ],
)
def test_listen_list_rejects_bad_entries_naming_them(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_listen_list(text)


def test_listen_list_takes_kongs_default_with_backlog() -> None:
    entries = parse_listen_list(
        "0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384"
    )
    assert [(e.port, e.ssl, e.http2, e.backlog) for e in entries] == [
        (8000, False, False, 16384), (8443, True, True, 16384),
    ]
    assert str(entries[1]) == "0.0.0.0:8443 ssl http2 backlog=16384"
    with pytest.raises(ValueError, match="backlog must be"):
        parse_listen_list(":8000 backlog=zero")
    with pytest.raises(ValueError, match="unknown flag 'proxy_protocol'"):
        parse_listen_list(":8000 proxy_protocol")


def test_listen_list_allows_several_ephemeral_ports() -> None:
    assert len(parse_listen_list("127.0.0.1:0, 127.0.0.1:0 ssl")) == 2
