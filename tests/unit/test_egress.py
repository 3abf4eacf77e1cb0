"""The egress policy, its nftables ruleset and command lines: pure, no processes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import msgspec
import pytest

from attune.config import load_config
from attune.errors import ConfigError
from attune.runner import egress, network
from attune.runner.egress import HostNetwork, Ports, Rule, parse_policy, parse_rule, ruleset

HOST = HostNetwork(
    addresses=(
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("198.51.100.2"),
        ipaddress.ip_address("2001:db8:5::2"),
    ),
    subnets=(ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:5::/64")),
)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def output_chain(text: str) -> list[str]:
    body = lines(text)
    start = body.index("chain output {")
    return body[start + 1 : body.index("}", start)]


def test_rule_entries_parse_cidr_host_and_ports() -> None:
    assert parse_rule("203.0.113.0/24") == Rule(ipaddress.ip_network("203.0.113.0/24"))
    assert parse_rule("2001:db8::1 tcp/443") == Rule(
        ipaddress.ip_network("2001:db8::1/128"), Ports("tcp", 443, 443)
    )
    assert parse_rule("203.0.113.7 UDP/5000-5100").ports == Ports("udp", 5000, 5100)
    assert parse_rule("203.0.113.7 tcp").ports == Ports("tcp")
    assert parse_rule("API.Example.com. tcp/443").target == "api.example.com"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.0.0.1/8",  # host bits set
        "203.0.113.0/24 icmp",
        "203.0.113.0/24 tcp/0",
        "203.0.113.0/24 tcp/70000",
        "203.0.113.0/24 tcp/90-80",
        "203.0.113.0/24 tcp/443 extra",
        "300.1.2.3",
        "bad_name!",
    ],
)
def test_bad_entries_are_refused_with_the_entry_named(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy([text], [], "resolver")
    assert "network.allow" in str(info.value)


def test_deny_entries_must_be_addresses_not_names() -> None:
    with pytest.raises(ConfigError, match=r"network\.deny"):
        parse_policy([], ["example.com"], "resolver")


def test_unknown_dns_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"network\.dns"):
        parse_policy([], [], "google")


def test_fixed_tier_comes_first_and_no_allow_entry_opens_it() -> None:
    policy = parse_policy(["127.0.0.0/8", "169.254.169.254 tcp/80", "0.0.0.0/0"], [], "off")
    chain = output_chain(ruleset(policy, HOST))
    fixed4 = next(i for i, line in enumerate(chain) if "127.0.0.0/8" in line and "refuse" in line)
    assert chain[:2] == [
        "type filter hook output priority filter; policy drop;",
        'oifname "lo" accept',
    ]
    assert fixed4 == 3  # straight after loopback and neighbour discovery (dns off)
    fixed = chain[fixed4]
    for net in ("0.0.0.0/8", "10.0.2.0/24", "169.254.0.0/16", "198.51.100.2/32"):
        assert net in fixed
    fixed6 = chain[fixed4 + 1]
    for net in ("::/127", "fd00::/64", "fe80::/10", "2001:db8:5::2/128"):
        assert net in fixed6
    assert fixed6.startswith("ip6 daddr {") and fixed6.endswith("jump refuse")


def test_default_tier_is_refused_unless_an_allow_entry_names_an_address_inside_it() -> None:
    policy = parse_policy(["10.1.2.3 tcp/5432", "0.0.0.0/0"], [], "resolver")
    chain = output_chain(ruleset(policy, HOST))
    opening = chain.index("ip daddr 10.1.2.3/32 tcp dport 5432 accept")
    default = next(i for i, line in enumerate(chain) if "172.16.0.0/12" in line)
    assert opening < default
    assert "198.51.100.0/24" in chain[default]  # the host's connected subnet
    v6 = chain[default + 1]
    for net in ("fc00::/7", "::ffff:0:0/96", "64:ff9b::/96", "2002::/16", "ff00::/8"):
        assert net in v6
    assert "2001:db8:5::/64" in v6
    # 0.0.0.0/0 is not an explicit opening: it comes after the default tier
    assert chain.index("ip daddr 0.0.0.0/0 accept") > default
    assert chain[-1] == "jump refuse"


def test_without_an_allowlist_the_rest_is_accepted_and_with_one_refused() -> None:
    open_chain = output_chain(ruleset(parse_policy([], [], "resolver"), HOST))
    assert open_chain[-1] == "accept"
    closed = output_chain(ruleset(parse_policy(["203.0.113.0/24 tcp/443"], [], "resolver"), HOST))
    assert closed[-2:] == ["ip daddr 203.0.113.0/24 tcp dport 443 accept", "jump refuse"]


def test_operator_denies_come_before_any_allow() -> None:
    policy = parse_policy(["203.0.113.0/24"], ["203.0.113.66 tcp/25"], "resolver")
    chain = output_chain(ruleset(policy, HOST))
    deny = chain.index("ip daddr 203.0.113.66/32 tcp dport 25 jump refuse")
    assert deny < chain.index("ip daddr 203.0.113.0/24 accept")


def test_refusals_reject_at_once_instead_of_dropping() -> None:
    body = lines(ruleset(parse_policy([], [], "resolver"), HOST))
    refuse = body[body.index("chain refuse {") + 1 : body.index("chain refuse {") + 3]
    assert refuse == [
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx type admin-prohibited",
    ]


@pytest.mark.parametrize("mode", ["resolver", "hosts", "off"])
def test_dns_rule_exists_only_in_resolver_mode(mode: str) -> None:
    chain = output_chain(ruleset(parse_policy([], [], mode), HOST))
    dns = [line for line in chain if "dport 53" in line]
    if mode == "resolver":
        assert dns == [
            "ip daddr 10.0.2.3 udp dport 53 accept",
            "ip daddr 10.0.2.3 tcp dport 53 accept",
            "ip6 daddr fd00::3 udp dport 53 accept",
            "ip6 daddr fd00::3 tcp dport 53 accept",
        ]
    else:
        assert dns == []
    assert ("--disable-dns" in egress.slirp_argv(3, 4, 5, dns=mode, ipv6=True)) is (  # type: ignore[arg-type]
        mode != "resolver"
    )
    conf = egress.resolv_conf(mode)  # type: ignore[arg-type]
    assert ("nameserver" in conf) is (mode == "resolver")
    assert ("dns" in egress.nsswitch(mode)) is (mode == "resolver")  # type: ignore[arg-type]


def test_narrowing_adds_a_second_chain_so_both_lists_must_pass() -> None:
    operator = parse_policy(["203.0.113.0/24 tcp"], [], "hosts")
    narrowed = egress.narrow(operator, ["203.0.113.10 tcp/443"])
    text = ruleset(narrowed, HOST)
    assert "ip daddr 203.0.113.0/24 meta l4proto tcp goto narrowed" in output_chain(text)
    body = lines(text)
    chain = body[body.index("chain narrowed {") + 1 :]
    assert chain[:2] == ["ip daddr 203.0.113.10/32 tcp dport 443 accept", "jump refuse"]
    with pytest.raises(ConfigError):
        egress.narrow(operator, [])


def test_host_names_become_one_entry_per_resolved_address_and_land_in_hosts() -> None:
    policy = parse_policy(["pypi.example tcp/443", "gone.example"], [], "hosts")
    assert policy.names() == ["gone.example", "pypi.example"]
    resolved = {
        "pypi.example": [ipaddress.ip_address("203.0.113.5"), ipaddress.ip_address("2001:db8::5")]
    }
    chain = output_chain(ruleset(egress.resolve_names(policy, resolved), HOST))
    assert "ip daddr 203.0.113.5/32 tcp dport 443 accept" in chain
    assert "ip6 daddr 2001:db8::5/128 tcp dport 443 accept" in chain
    assert not any("gone" in line for line in chain)
    hosts = egress.hosts_file("127.0.0.1 localhost\n", resolved)
    assert hosts == "127.0.0.1 localhost\n203.0.113.5 pypi.example\n2001:db8::5 pypi.example\n"


def test_overlapping_host_addresses_are_collapsed_for_nft() -> None:
    host = HostNetwork(
        addresses=(ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("127.0.0.2")),
        subnets=(ipaddress.ip_network("10.5.0.0/16"),),
    )
    chain = output_chain(ruleset(parse_policy([], [], "off"), host))
    assert sum("127.0.0" in line for line in chain) == 1
    assert not any("10.5.0.0/16" in line for line in chain)  # inside 10.0.0.0/8 already


def test_slirp_runs_in_a_private_mount_namespace_without_host_loopback() -> None:
    args = egress.slirp_argv(7, 8, 9, dns="resolver", ipv6=True)
    assert args[:5] == ["/usr/bin/unshare", "--mount", "--propagation", "private", "--"]
    for flag in (
        "--disable-host-loopback",
        "--enable-sandbox",
        "--enable-seccomp",
        "--exit-fd=8",
        "--ready-fd=9",
        "--netns-type=path",
        "--enable-ipv6",
    ):
        assert flag in args
    assert "--configure" not in args  # it would bring lo up, racing with bwrap
    assert args[-2:] == ["/proc/self/fd/7", "tap0"]


def test_gate_uses_only_stdin_and_stdout_and_execs_the_command_on_go() -> None:
    argv = egress.gate_command(["/usr/bin/python3", "/attune/action/a.py"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:] == ["attune-gate", "/usr/bin/python3", "/attune/action/a.py"]
    assert "&" not in argv[2].replace("&&", "")  # no redirection to another descriptor


def test_worker_network_is_read_from_proc_formats() -> None:
    trie = (
        "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n"
        "     |-- 198.51.100.2\n        /32 host LOCAL\n     |-- 198.51.100.255\n"
        "        /32 link BROADCAST\n"
    )
    assert [str(a) for a in network.parse_fib_trie(trie)] == ["127.0.0.1", "198.51.100.2"]
    route = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t016433C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert [str(n) for n in network.parse_route(route)] == ["198.51.100.0/24"]
    inet6 = (
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "20010db8000500000000000000000002 02 40 00 80     eth0\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
    )
    addresses, subnets = network.parse_if_inet6(inet6)
    assert [str(a) for a in addresses] == ["::1", "2001:db8:5::2", "fe80::1"]
    assert [str(n) for n in subnets] == ["2001:db8:5::/64"]


def test_network_section_of_the_worker_config_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("network:\n  egress: true\n  allow: ['203.0.113.0/24 tcp/443']\n  dns: hosts\n")
    config = load_config(path, {})
    assert config.network.egress and config.network.dns == "hosts"
    assert config.network.policy().allow == (parse_rule("203.0.113.0/24 tcp/443"),)
    assert load_config(None, {}).network.egress is False  # off by default
    path.write_text("network:\n  egres: true\n")
    with pytest.raises(ConfigError, match=r"did you mean network\.egress"):
        load_config(path, {})
    path.write_text("network:\n  dns: google\n")
    with pytest.raises(ConfigError, match=r"network\.dns"):
        load_config(path, {})
    path.write_text("network:\n  allow: ['10.0.0.1/8']\n")
    with pytest.raises(ConfigError, match="host bits set"):
        load_config(path, {})


def test_worker_refuses_an_egress_action_it_does_not_offer_before_running_it() -> None:
    from attune.config import Config, NetworkConfig
    from attune.errors import ExecutionError
    from attune.launcher import egress_of
    from tests.unit.test_pipeline import ACTION

    action = msgspec.structs.replace(ACTION, network="egress")
    with pytest.raises(ExecutionError, match="does not offer egress"):
        egress_of(Config(), action)
    offering = Config(network=NetworkConfig(egress=True, allow=["203.0.113.0/24 tcp/443"]))
    policy = egress_of(offering, action)
    assert policy is not None and [str(r) for r in policy.allow] == ["203.0.113.0/24 tcp/443"]
    assert egress_of(offering, ACTION) is None


def test_netlink_messages_configure_the_tap_link_addresses_and_routes_in_order() -> None:
    import socket
    import struct

    from attune.runner import netlink

    messages = netlink.configure_tap(
        3,
        mtu=65520,
        addresses=[("10.0.2.100", 24), ("fd00::100", 64)],
        gateways=["10.0.2.2", "fd00::2"],
    )
    kinds = [struct.unpack_from("=IHHII", m)[1] for m in messages]
    assert kinds == [
        netlink.RTM_NEWLINK,
        netlink.RTM_NEWADDR,
        netlink.RTM_NEWADDR,
        netlink.RTM_NEWROUTE,
        netlink.RTM_NEWROUTE,
    ]
    assert [struct.unpack_from("=IHHII", m)[3] for m in messages] == [1, 2, 3, 4, 5]
    for m in messages:
        assert struct.unpack_from("=I", m)[0] == len(m)
    link = messages[0]
    assert struct.unpack_from("=BxHiII", link, 16)[2:] == (3, netlink.IFF_UP, netlink.IFF_UP)
    assert link.endswith(struct.pack("=HHI", 8, netlink.IFLA_MTU, 65520))
    family, prefix, flags, _scope, index = struct.unpack_from("=BBBBI", messages[2], 16)
    assert (family, prefix, flags, index) == (socket.AF_INET6, 64, netlink.IFA_F_NODAD, 3)
    assert ipaddress.IPv4Address("10.0.2.100").packed in messages[1]
    assert ipaddress.IPv6Address("fd00::2").packed in messages[4]
    assert messages[4].endswith(struct.pack("=HHI", 8, netlink.RTA_OIF, 3))
    addr = messages[1]
    ack = struct.pack("=IHHII", 36, netlink.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", 0) + addr[:16]
    nack = struct.pack("=IHHII", 36, netlink.NLMSG_ERROR, 0, 2, 0) + struct.pack("=i", -17)
    nack += addr[:16]
    assert netlink.ack_errors(ack + nack) == {1: 0, 2: 17}
