"""Egress mode end to end: `attune exec --network egress` inside a world of namespaces.

Every test runs the real CLI in the fake host of tests/sandbox/networld.py; the only way
out of it is a veth into the fake internet, whose stray counter records every packet not
addressed to a test server. Tests are named `test_<catalog row>_g<guarantee>_...`: rows
36-47 of the hostile-action catalog (docs/security.md) and guarantees 1-8 of
docs/network.md, over IPv4 and IPv6.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attune.runner import host
from tests.sandbox.networld import (
    DNS4,
    GW4,
    GW6,
    HOST4,
    HOST6,
    HOST_PRIVATE,
    LAN4,
    LAN6,
    METADATA,
    WEB4,
    WEB6,
    World,
)
from tests.unavailable import unavailable

ACTIONS = Path(__file__).resolve().parent / "egress_actions"
PROBE = ACTIONS / "probe.py"
EGRESS = ("--network", "egress")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    ok, detail = host.egress_detail()
    if os.geteuid() != 0 or not ok:
        unavailable(f"egress tests need root and the egress tools: {detail}")
    w = World()
    w.build()
    try:
        yield w
    finally:
        w.destroy()
    assert not Path(f"/run/netns/{w.host}").exists()


@pytest.fixture(autouse=True)
def _no_stray_and_no_slirp_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test here: no slirp4netns in the fake host, no stray packet."""
    if "world" not in request.fixturenames:
        yield
        return
    w: World = request.getfixturevalue("world")
    before = w.stray()
    yield
    # Killed before the run returned; its exit (mount namespace teardown) takes a moment.
    deadline = time.monotonic() + 10
    while w.host_netns_processes("slirp4netns"):
        assert time.monotonic() < deadline, "slirp4netns outlived its run"
        time.sleep(0.02)
    if "leak" not in request.node.name:  # the negative control leaks on purpose
        assert w.stray() == before, "a packet reached the fake internet that no rule allows"


def probe(world: World, targets: list[tuple[str, int, str]], *args: str) -> dict[str, str]:
    out = world.run(PROBE, *EGRESS, "--params-json", json.dumps({"targets": targets}), *args)
    assert out["status"] == "completed", out
    return dict(out["result"]["data"])


def refused(results: dict[str, str]) -> None:
    """Every attempt failed at once: an error, never a timeout, never a reply."""
    for target, outcome in results.items():
        assert outcome in ("ECONNREFUSED", "EHOSTUNREACH", "EACCES", "ENETUNREACH", "EPERM"), (
            f"{target}: {outcome}"
        )


def hits(world: World, role: str) -> list[str]:
    return [line for line in world.log_lines() if line.startswith(f"HIT {role}")]


POSTGRES_ADDRESSES = [
    "127.0.0.1",
    "127.1.2.3",
    "0.0.0.0",
    "10.0.2.2",  # the user-mode gateway
    "10.0.2.3",  # its resolver address
    HOST4,
    HOST_PRIVATE,
    "::1",
    "::",
    "fd00::2",
    "fd00::3",
    HOST6,
    "::ffff:127.0.0.1",
    "::ffff:10.0.2.2",
    f"::ffff:{HOST4}",
    f"::ffff:{HOST_PRIVATE}",
]


def test_negative_control_without_rules_the_world_sees_the_leak(world: World) -> None:
    targets = [(HOST4, 5432, "tcp"), (HOST6, 5432, "tcp"), (METADATA, 80, "tcp"), (WEB4, 80, "tcp")]
    before, pg_before = world.stray(), len(hits(world, "postgres"))
    out = world.run(PROBE, *EGRESS, "--params-json", json.dumps({"targets": targets}), unruled=True)
    data = out["result"]["data"]
    assert data[f"{HOST4} 5432/tcp"].startswith("OK postgres")
    assert data[f"{HOST6} 5432/tcp"].startswith("OK postgres")
    assert data[f"{WEB4} 80/tcp"].startswith("OK web")
    assert len(hits(world, "postgres")) == pg_before + 2
    assert world.stray() > before  # the metadata attempt reached the fake internet


def test_36_g1_host_loopback_services_unreachable_through_every_address(world: World) -> None:
    pg_before = len(hits(world, "postgres"))
    results = probe(world, [(a, 5432, "tcp") for a in POSTGRES_ADDRESSES])
    refused(results)
    assert len(hits(world, "postgres")) == pg_before


def test_37_g2_fixed_tier_and_metadata_cannot_be_opened_by_any_allowlist(world: World) -> None:
    opened = [
        "127.0.0.0/8",
        "169.254.0.0/16 tcp/80",
        f"{HOST4}/32",
        "10.0.2.0/24",
        "fd00::/64",
        f"{HOST6}/128",
        "fe80::/10",
        "0.0.0.0/0",
        "::/0",
    ]
    args = [a for entry in opened for a in ("--allow", entry)]
    targets = [
        (METADATA, 80, "tcp"),
        ("127.0.0.1", 5432, "tcp"),
        (HOST4, 5432, "tcp"),
        ("10.0.2.2", 5432, "tcp"),
        (HOST6, 5432, "tcp"),
        ("fd00::2", 5432, "tcp"),
    ]
    results = probe(world, [*targets, (WEB4, 80, "tcp"), (WEB6, 80, "tcp")], *args)
    assert results.pop(f"{WEB4} 80/tcp") == f"OK web {WEB4} 80"
    assert results.pop(f"{WEB6} 80/tcp") == f"OK web {WEB6} 80"
    refused(results)


def test_38_g3_private_addresses_refused_until_opened_address_by_address(world: World) -> None:
    private = [(LAN4, 80, "tcp"), (LAN6, 80, "tcp"), (GW4, 80, "tcp"), (GW6, 80, "tcp")]
    refused(probe(world, private))
    args = ["--allow", f"{LAN4}/32 tcp/80", "--allow", f"{LAN6}/128 tcp/80"]
    args += ["--allow", "0.0.0.0/0", "--allow", "::/0"]
    results = probe(world, [*private, (LAN4, 8080, "tcp")], *args)
    assert results.pop(f"{LAN4} 80/tcp") == f"OK web {LAN4} 80"
    assert results.pop(f"{LAN6} 80/tcp") == f"OK web {LAN6} 80"
    refused(results)  # the connected subnet stays closed, and so does another port


def test_39_g4_allowlist_refuses_everything_else(world: World) -> None:
    args = ["--allow", f"{WEB4}/32 tcp/80", "--allow", f"{WEB6}/128 tcp/80"]
    targets = [
        (WEB4, 80, "tcp"),
        (WEB6, 80, "tcp"),
        (WEB4, 8080, "tcp"),
        (WEB6, 8080, "tcp"),
        (WEB4, 7, "udp"),
        (WEB6, 7, "udp"),
        (DNS4, 53, "udp"),
    ]
    results = probe(world, targets, *args)
    assert results.pop(f"{WEB4} 80/tcp") == f"OK web {WEB4} 80"
    assert results.pop(f"{WEB6} 80/tcp") == f"OK web {WEB6} 80"
    refused(results)


def test_77_g4_an_egress_run_takes_a_parked_sandbox_and_reaches_only_what_is_allowed(
    world: World,
) -> None:
    """Parked with its network attached and its rules loaded, then handed the run."""
    stray, pg_before = world.stray(), len(hits(world, "postgres"))
    targets = [
        (WEB4, 80, "tcp"),
        (WEB6, 80, "tcp"),
        (WEB4, 8080, "tcp"),
        (LAN4, 80, "tcp"),
        (METADATA, 80, "tcp"),
        (HOST4, 5432, "tcp"),
        ("10.0.2.2", 5432, "tcp"),
        (HOST6, 5432, "tcp"),
    ]
    out = world.run(
        PROBE,
        *EGRESS,
        "--allow",
        f"{WEB4}/32 tcp/80",
        "--allow",
        f"{WEB6}/128 tcp/80",
        "--params-json",
        json.dumps({"targets": targets}),
        pooled=True,
    )
    assert out["status"] == "completed", out
    assert out["pool_taken"] == 1  # the run took the parked sandbox
    results = dict(out["result"]["data"])
    assert results.pop(f"{WEB4} 80/tcp") == f"OK web {WEB4} 80"
    assert results.pop(f"{WEB6} 80/tcp") == f"OK web {WEB6} 80"
    refused(results)
    assert len(hits(world, "postgres")) == pg_before
    assert world.stray() == stray


def test_g4_without_an_allowlist_the_public_internet_is_reachable(world: World) -> None:
    results = probe(world, [(WEB4, 8080, "tcp"), (WEB6, 80, "tcp"), (WEB4, 7, "udp")])
    assert results == {
        f"{WEB4} 8080/tcp": f"OK web {WEB4} 8080",
        f"{WEB6} 80/tcp": f"OK web {WEB6} 80",
        f"{WEB4} 7/udp": "OK ping",
    }


def test_40_g5_refused_connections_fail_at_once_not_by_timeout(world: World) -> None:
    results = probe(
        world,
        [(HOST4, 5432, "tcp"), (HOST6, 5432, "tcp"), (LAN4, 7, "udp"), (LAN6, 7, "udp")],
        "--allow",
        f"{WEB4}/32",
    )
    assert results[f"{HOST4} 5432/tcp"] == "ECONNREFUSED"  # a TCP reset
    assert results[f"{HOST6} 5432/tcp"] == "ECONNREFUSED"
    refused(results)  # UDP: an ICMP error on the connected socket, not silence


def test_41_42_g6_rules_hold_from_the_first_instruction_and_cannot_be_changed(
    world: World,
) -> None:
    pg_before = len(hits(world, "postgres"))
    out = world.run(ACTIONS / "tamper.sh", *EGRESS, "--output-format", "text")
    lines = out["result"]["stdout"].splitlines()
    assert lines[0] == "first: refused", lines
    assert "flush: denied" in lines
    assert "link: denied" in lines
    assert "route: denied" in lines
    assert "netns: denied" in lines
    assert "after: refused" in lines
    assert f"web: web {WEB4} 80" in lines
    assert len(hits(world, "postgres")) == pg_before


def test_47_g7_nothing_outlives_a_run(world: World) -> None:
    probe(world, [(WEB4, 80, "tcp")])
    deadline = time.monotonic() + 10  # SIGKILLed before the run returned
    while world.host_netns_processes("slirp4netns"):
        assert time.monotonic() < deadline, "slirp4netns outlived its run"
        time.sleep(0.02)


def test_47_g7_nothing_outlives_a_sigkilled_worker(world: World) -> None:
    marker = f"sleeper{os.getpid()}"
    action = world.root / f"{marker}.py"
    action.write_text(
        "import socket, time\n"
        f"socket.create_connection(('{WEB4}', 8080), 5).recv(100)\n"
        "time.sleep(120)\n"
    )
    os.chmod(world.root, 0o711)
    action.chmod(0o644)
    before = len([h for h in hits(world, "web") if h.endswith(" 8080")])
    proc = subprocess.Popen(world.exec_argv(action, *EGRESS), env=world.env())
    try:
        deadline = time.monotonic() + 60
        while len([h for h in hits(world, "web") if h.endswith(" 8080")]) == before:
            assert proc.poll() is None and time.monotonic() < deadline, "the action never ran"
            time.sleep(0.05)
        assert world.host_netns_processes("slirp4netns")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while world.host_netns_processes("slirp4netns") or _processes_running(marker):
            assert time.monotonic() < deadline, "slirp4netns or the sandbox outlived the worker"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _processes_running(word: str) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if word.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def test_46_g8_dns_resolver_mode_answers_through_the_user_mode_resolver_only(world: World) -> None:
    out = world.run(
        ACTIONS / "dns.py",
        *EGRESS,
        "--allow",
        f"{WEB4}/32 tcp/80",
        "--params-json",
        json.dumps(
            {
                "names": ["anything.test"],
                "query": [DNS4, "10.0.2.3"],
                "qname": "asked-through-the-resolver.test",
            }
        ),
    )
    data = out["result"]["data"]
    assert data["names"] == {"anything.test": [WEB4]}  # answered by the fake internet's DNS
    assert data["web"] == f"web {WEB4} 80"
    assert data["query"][DNS4] in ("ECONNREFUSED", "EHOSTUNREACH", "EACCES", "EPERM")  # direct: no
    assert data["query"]["10.0.2.3"] == "answered"
    assert "DNS anything.test" in world.log_lines()
    assert "DNS asked-through-the-resolver.test" in world.log_lines()


@pytest.mark.parametrize("mode", ["hosts", "off"])
def test_45_g8_dns_exfiltration_is_closed_with_dns_hosts_or_off(world: World, mode: str) -> None:
    secret = f"secret-{mode}-{os.getpid()}.exfil.test"
    out = world.run(
        ACTIONS / "dns.py",
        *EGRESS,
        "--dns",
        mode,
        "--allow",
        "api.test tcp/80",
        "--allow",
        "api6.test tcp/80",
        "--params-json",
        json.dumps(
            {
                "names": ["api.test", "api6.test", secret],
                "query": [DNS4, "10.0.2.3", "fd00::3"],
                "qname": f"tunnel.{secret}",
            }
        ),
    )
    data = out["result"]["data"]
    if mode == "hosts":  # the worker resolved the allowlisted names into /etc/hosts
        assert data["names"] == {"api.test": [WEB4], "api6.test": [WEB6], secret: "gaierror"}
        assert data["web"] == f"web {WEB4} 80"
    else:
        assert set(data["names"].values()) == {"gaierror"}
    for server, outcome in data["query"].items():
        assert outcome in ("ECONNREFUSED", "EHOSTUNREACH", "EACCES", "EPERM"), (server, outcome)
    assert not any(secret in line for line in world.log_lines())


def test_42_43_new_network_namespace_raw_and_packet_sockets_are_refused(world: World) -> None:
    out = world.run(ACTIONS / "sockets.py", *EGRESS)
    data: dict[str, Any] = out["result"]["data"]
    assert set(data) == {"packet", "raw4", "raw6", "unshare_net"}
    for kind, outcome in data.items():
        # EPROTONOSUPPORT: the syscall filter's protocol allowlist (row 67) refuses first
        assert outcome in ("EPERM", "EACCES", "EAFNOSUPPORT", "EINVAL", "EPROTONOSUPPORT"), (
            kind,
            outcome,
        )


def test_44_exhausting_the_user_mode_stack_harms_only_its_own_run(world: World) -> None:
    out = world.run(ACTIONS / "exhaust.py", *EGRESS)
    assert out["status"] == "completed", out
    assert out["result"]["data"]["opened"] > 100
    # the next run gets a fresh user-mode stack of its own
    assert probe(world, [(WEB4, 80, "tcp")]) == {f"{WEB4} 80/tcp": f"OK web {WEB4} 80"}


def test_action_declaring_egress_fails_unrun_without_it(world: World, tmp_path: Path) -> None:
    action = tmp_path / "wants.py"
    action.write_text("def run():\n    return 1\n")
    (tmp_path / "wants.yaml").write_text("network: egress\n")
    done = subprocess.run(
        world.exec_argv(action), capture_output=True, text=True, env=world.env(), check=False
    )
    assert done.returncode == 2
    assert "network: egress" in done.stderr and "--network egress" in done.stderr
