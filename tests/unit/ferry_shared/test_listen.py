import pytest

from ferry_shared.listen import format_host_port, parse_host_port


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
