"""``ferry up``'s port layout: no two of its listeners share a port, and a taken port is named."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ferry.cli import build_parser
from ferry.up import PortPlanError, check_port_plan, format_port_plan, port_plan, run_up
from ferry_shared.listen import free_port


def _args(*argv: str) -> object:
    return build_parser().parse_args(["up", *argv])


def _addresses(*argv: str) -> dict[str, str]:
    return {listener.owner: listener.address for listener in port_plan(_args(*argv))}


def test_the_default_layout_of_three_data_planes_steps_by_ten_past_the_control_plane_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("FERRY_ADMIN_LISTEN", "FERRY_CLUSTER_LISTEN", "FERRY_PROXY_LISTEN", "FERRY_STATUS_LISTEN"):
        monkeypatch.delenv(name, raising=False)
    plan = port_plan(_args("--data-planes", "3"))
    assert {listener.owner: listener.address for listener in plan} == {
        "the Admin API": "127.0.0.1:8001",
        "the cluster listener": "127.0.0.1:8005",
        "data plane 1's proxy": "127.0.0.1:8000",
        "data plane 1's TLS proxy": "127.0.0.1:8443",
        "data plane 1's status API": "127.0.0.1:8100",
        "data plane 2's proxy": "127.0.0.1:8010",
        "data plane 2's TLS proxy": "127.0.0.1:8453",
        "data plane 2's status API": "127.0.0.1:8110",
        "data plane 3's proxy": "127.0.0.1:8020",
        "data plane 3's TLS proxy": "127.0.0.1:8463",
        "data plane 3's status API": "127.0.0.1:8120",
    }
    check_port_plan(plan, bind_test=False)  # no two want one port
    printed = format_port_plan(plan)
    assert "data plane 3's proxy" in printed and "127.0.0.1:8020" in printed


def test_two_users_of_one_port_are_named_with_their_flags() -> None:
    plan = port_plan(_args("--proxy-listen", "127.0.0.1:8001", "--admin-listen", "127.0.0.1:8001"))
    with pytest.raises(PortPlanError) as caught:
        check_port_plan(plan, bind_test=False)
    assert str(caught.value) == (
        "port 8001 is wanted by both the Admin API (--admin-listen) "
        "and data plane 1's proxy (--proxy-listen)"
    )


def test_a_data_plane_stepping_onto_another_listener_is_refused() -> None:
    plan = port_plan(_args("--data-planes", "11", "--proxy-listen", "127.0.0.1:8000",
                           "--status-listen", "127.0.0.1:8100", "--admin-listen", "127.0.0.1:8001",
                           "--cluster-listen", "127.0.0.1:8005"))
    with pytest.raises(PortPlanError) as caught:
        check_port_plan(plan, bind_test=False)
    assert str(caught.value) == (
        "port 8100 is wanted by both data plane 1's status API (--status-listen) "
        "and data plane 11's proxy (--proxy-listen + 100)"
    )


def test_a_wildcard_address_collides_with_a_specific_one_on_the_same_port_but_two_hosts_do_not() -> None:
    plan = port_plan(_args("--proxy-listen", "0.0.0.0:8001", "--admin-listen", "127.0.0.1:8001"))
    with pytest.raises(PortPlanError, match="port 8001 is wanted by both the Admin API"):
        check_port_plan(plan, bind_test=False)
    plan = port_plan(_args("--proxy-listen", "127.0.0.2:8001", "--admin-listen", "127.0.0.1:8001"))
    check_port_plan(plan, bind_test=False)


def test_port_zero_never_collides() -> None:
    plan = port_plan(_args("--data-planes", "2", "--admin-listen", "127.0.0.1:0", "--cluster-listen",
                           "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"))
    check_port_plan(plan)


def test_a_port_past_65535_names_the_data_plane() -> None:
    with pytest.raises(PortPlanError, match=r"data plane 2's proxy \(--proxy-listen \+ 10\): .*65535"):
        port_plan(_args("--data-planes", "2", "--proxy-listen", "127.0.0.1:65530"))


def test_a_port_another_program_holds_is_named_as_in_use() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        plan = port_plan(_args("--admin-listen", f"127.0.0.1:{port}", "--cluster-listen", "127.0.0.1:0",
                               "--proxy-listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"))
        with pytest.raises(PortPlanError) as caught:
            check_port_plan(plan)
    message = str(caught.value)
    assert message.startswith(
        f"port {port} (127.0.0.1:{port}), wanted by the Admin API (--admin-listen), "
        "is already in use by another program (pid "
    ), message
    assert message.endswith("; stop it or choose another port")


def test_ferry_up_starts_nothing_when_a_port_is_wanted_twice_or_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "up"
    ports = [free_port() for _ in range(4)]
    listen = ["--admin-listen", f"127.0.0.1:{ports[0]}", "--cluster-listen", f"127.0.0.1:{ports[1]}",
              "--status-listen", f"127.0.0.1:{ports[3]}", "--data-dir", str(data_dir)]
    args = build_parser().parse_args(["up", *listen, "--proxy-listen", f"127.0.0.1:{ports[0]}"])
    assert run_up(args) == 2
    assert "is wanted by both the Admin API (--admin-listen) and data plane 1's proxy" in capsys.readouterr().err
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[2]))
        holder.listen(1)
        args = build_parser().parse_args(["up", *listen, "--proxy-listen", f"127.0.0.1:{ports[2]}"])
        assert run_up(args) == 1
    assert "is already in use by another program" in capsys.readouterr().err
    assert not data_dir.exists(), "nothing was started or written"
