"""Egress networking, the pure part: policy entries, address tiers, the nftables ruleset,
and the command lines of the user-mode network stack. No I/O here (network.py does it).

An egress sandbox gets a tap interface served by slirp4netns, a user-mode TCP/IP stack
that opens ordinary sockets on the worker's side. The stack alone would let the action
reach everything the worker can: the worker's own addresses (its PostgreSQL and
RabbitMQ), its private network, the cloud metadata address. An nftables ruleset,
installed by the worker inside the sandbox's network namespace before the action's first
instruction, decides what leaves. The action holds no capability over that namespace,
so it cannot change the rules. In order:

1. the sandbox's own loopback, and IPv6 neighbour discovery with the gateway (the
   user-mode stack answers it, nothing is forwarded): accepted;
2. DNS to the stack's resolver, only with `dns: resolver`;
3. the fixed tier, refused whatever the configuration says: loopback, "this network",
   link-local (cloud metadata), the user-mode network with its gateway, the host's own
   addresses;
4. the operator's extra denies;
5. allow entries that name addresses inside the default tier: the operator opening them
   explicitly;
6. the default tier, refused unless opened above: private, shared, benchmark, multicast
   and reserved ranges, unique-local IPv6, IPv4-mapped/translated and NAT64 prefixes,
   6to4 and Teredo (they embed IPv4 addresses), the host's connected subnets;
7. the allowlist when there is one (then everything else is refused), otherwise the
   rest of the internet.

A refused packet is rejected, not dropped: TCP gets a reset, anything else an ICMP
"administratively prohibited", so a connect fails at once instead of hanging. A caller
(a pack build, say) may narrow what the operator allows: accepted packets then pass a
second chain holding the narrower list, so the result is the intersection of both.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from attune.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
DnsMode = Literal["resolver", "hosts", "off"]
DNS_MODES: tuple[DnsMode, ...] = ("resolver", "hosts", "off")

# The user-mode network as slirp4netns sets it up (its defaults, made explicit).
SANDBOX_NET4 = ipaddress.ip_network("10.0.2.0/24")
GATEWAY4 = ipaddress.ip_address("10.0.2.2")
RESOLVER4 = ipaddress.ip_address("10.0.2.3")
SANDBOX_NET6 = ipaddress.ip_network("fd00::/64")
GATEWAY6 = ipaddress.ip_address("fd00::2")
RESOLVER6 = ipaddress.ip_address("fd00::3")
TAP = "tap0"
MTU = 65520
TABLE = "attune_egress"

FIXED_TIER: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "0.0.0.0/8",
        "169.254.0.0/16",
        str(SANDBOX_NET4),
        "::1/128",
        "::/128",
        "fe80::/10",
        str(SANDBOX_NET6),
    )
)
DEFAULT_TIER: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "198.18.0.0/15",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, with the limited broadcast address
        "fc00::/7",  # unique local
        "fec0::/10",  # site-local (deprecated, still routed by some stacks)
        "ff00::/8",  # multicast
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # IPv4-translated
        "64:ff9b::/96",  # NAT64
        "64:ff9b:1::/48",  # local-use NAT64
        "2002::/16",  # 6to4: embeds any IPv4 address
        "2001::/32",  # Teredo: likewise
        "100::/64",  # discard-only
    )
)

_PORTS_RE = re.compile(r"^(tcp|udp)(?:/(\d{1,5})(?:-(\d{1,5}))?)?$")
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


@dataclass(frozen=True)
class Ports:
    """A protocol and an inclusive port range (the whole range when unset)."""

    proto: Literal["tcp", "udp"]
    first: int = 1
    last: int = 65535

    def covers(self, other: Ports) -> bool:
        return self.proto == other.proto and self.first <= other.first and other.last <= self.last

    def nft(self) -> str:
        if (self.first, self.last) == (1, 65535):
            return f"meta l4proto {self.proto}"
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.proto} dport {span}"

    def __str__(self) -> str:
        if (self.first, self.last) == (1, 65535):
            return self.proto
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.proto}/{span}"


@dataclass(frozen=True)
class Rule:
    """One allow or deny entry: `CIDR`, `HOST` (allow only), optionally `PROTO[/PORT[-PORT]]`."""

    target: Network | str  # a network, or a host name the worker resolves per run
    ports: Ports | None = None

    def __str__(self) -> str:
        return f"{self.target}{' ' + str(self.ports) if self.ports else ''}"

    def with_target(self, target: Network) -> Rule:
        return Rule(target, self.ports)


def parse_rule(text: str, *, allow_names: bool = True) -> Rule:
    """Parse `203.0.113.0/24`, `2001:db8::1 tcp/443`, `api.example.com tcp/443`, ..."""
    parts = text.split()
    if not 1 <= len(parts) <= 2:
        raise ConfigError(
            f"{text!r}: expected `CIDR` or `CIDR PROTO/PORT` (e.g. 203.0.113.0/24 tcp/443)"
        )
    target: Network | str
    try:
        target = ipaddress.ip_network(parts[0], strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ConfigError(f"{text!r}: {exc}") from None
        if (
            not allow_names
            or ":" in parts[0]
            or not _HOST_RE.match(parts[0])
            or parts[0][0].isdigit()
        ):
            raise ConfigError(f"{text!r}: {parts[0]!r} is not an address or network") from None
        target = parts[0].rstrip(".").lower()
    ports = None
    if len(parts) == 2:
        match = _PORTS_RE.match(parts[1].lower())
        if match is None:
            raise ConfigError(
                f"{text!r}: {parts[1]!r} is not PROTO, PROTO/PORT or PROTO/FIRST-LAST (tcp or udp)"
            )
        proto: Literal["tcp", "udp"] = "tcp" if match[1] == "tcp" else "udp"
        first = int(match[2]) if match[2] else 1
        last = int(match[3]) if match[3] else (first if match[2] else 65535)
        if not 1 <= first <= last <= 65535:
            raise ConfigError(f"{text!r}: ports must satisfy 1 <= first <= last <= 65535")
        ports = Ports(proto, first, last)
    return Rule(target, ports)


@dataclass(frozen=True)
class EgressPolicy:
    """What an egress sandbox may reach; `allow` empty means "the public internet"."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    dns: DnsMode = "resolver"
    # A narrower list from the caller (e.g. a pack build); applies on top of `allow`.
    narrowed: tuple[Rule, ...] | None = None

    def names(self) -> list[str]:
        """Host names the worker must resolve before the run (allow and narrowed lists)."""
        rules = (*self.allow, *(self.narrowed or ()))
        return sorted({r.target for r in rules if isinstance(r.target, str)})


def parse_policy(allow: Sequence[str], deny: Sequence[str], dns: str) -> EgressPolicy:
    """The operator's `network:` section as a policy; ConfigError names the bad entry."""
    if dns not in DNS_MODES:
        raise ConfigError(f"network.dns: expected one of {', '.join(DNS_MODES)}, got {dns!r}")
    allow_rules = tuple(_entries("network.allow", allow, allow_names=True))
    deny_rules = tuple(_entries("network.deny", deny, allow_names=False))
    return EgressPolicy(allow_rules, deny_rules, dns)  # type: ignore[arg-type]


def _entries(key: str, values: Sequence[str], *, allow_names: bool) -> Iterable[Rule]:
    for value in values:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: entries are strings, got {value!r}")
        try:
            yield parse_rule(value, allow_names=allow_names)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def narrow(policy: EgressPolicy, allow: Sequence[str]) -> EgressPolicy:
    """The operator's policy further limited to `allow` (never wider: both must pass)."""
    rules = tuple(_entries("allow", allow, allow_names=True))
    if not rules:
        raise ConfigError("a narrowed allowlist must name at least one destination")
    return EgressPolicy(policy.allow, policy.deny, policy.dns, rules)


def resolve_names(policy: EgressPolicy, resolved: dict[str, list[Address]]) -> EgressPolicy:
    """Replace host-name entries by one entry per resolved address (unresolved: dropped)."""

    def expand(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        out: list[Rule] = []
        for rule in rules:
            if isinstance(rule.target, str):
                out += [
                    rule.with_target(ipaddress.ip_network(a)) for a in resolved.get(rule.target, [])
                ]
            else:
                out.append(rule)
        return tuple(out)

    narrowed = expand(policy.narrowed) if policy.narrowed is not None else None
    return EgressPolicy(expand(policy.allow), policy.deny, policy.dns, narrowed)


def hosts_file(base: str, resolved: dict[str, list[Address]]) -> str:
    """The sandbox's /etc/hosts with the allowlisted names the worker resolved."""
    lines = [base.rstrip("\n")]
    for name in sorted(resolved):
        lines += [f"{address} {name}" for address in resolved[name]]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class HostNetwork:
    """The worker's own addresses and connected subnets (read from /proc per run)."""

    addresses: tuple[Address, ...] = ()
    subnets: tuple[Network, ...] = ()
    ipv6: bool = True


@dataclass(frozen=True)
class Tiers:
    """The address sets of a ruleset, collapsed per family (nft refuses overlaps)."""

    fixed: tuple[Network, ...]
    default: tuple[Network, ...]
    extra: list[str] = field(default_factory=list)


def tiers(host: HostNetwork) -> Tiers:
    fixed = [*FIXED_TIER, *(ipaddress.ip_network(a) for a in host.addresses)]
    default = [*DEFAULT_TIER, *host.subnets]
    return Tiers(tuple(collapse(fixed)), tuple(collapse(default)))


def collapse(networks: Iterable[Network]) -> list[Network]:
    v4 = [n for n in networks if n.version == 4]
    v6 = [n for n in networks if n.version == 6]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]  # type: ignore[arg-type, list-item]


def _within(network: Network, ranges: Iterable[Network]) -> bool:
    return any(network.version == r.version and network.subnet_of(r) for r in ranges)  # type: ignore[arg-type]


def _match(networks: Sequence[Network]) -> list[str]:
    """`ip daddr { ... }` / `ip6 daddr { ... }` selectors, one per family present."""
    out = []
    for family, keyword in ((4, "ip"), (6, "ip6")):
        items = [str(n) for n in networks if n.version == family]
        if items:
            out.append(f"{keyword} daddr {{ {', '.join(items)} }}")
    return out


def _rule_lines(rule: Rule, verdict: str) -> list[str]:
    assert not isinstance(rule.target, str), "host names are resolved before rendering"
    keyword = "ip" if rule.target.version == 4 else "ip6"
    ports = f" {rule.ports.nft()}" if rule.ports else ""
    return [f"{keyword} daddr {rule.target}{ports} {verdict}"]


@functools.lru_cache(maxsize=64)
def ruleset(policy: EgressPolicy, host: HostNetwork) -> str:
    """The whole nftables script for one egress sandbox (names already resolved).

    Cached: policy and host addresses rarely change between runs, and rendering (address
    collapsing, IPv6 text forms) costs a few milliseconds of CPU per run.
    """
    t = tiers(host)
    accept = "goto narrowed" if policy.narrowed is not None else "accept"
    out = [
        f"table inet {TABLE} {{",
        "  chain refuse {",
        "    meta l4proto tcp reject with tcp reset",
        "    reject with icmpx type admin-prohibited",
        "  }",
    ]
    if policy.narrowed is not None:
        out.append("  chain narrowed {")
        out += [f"    {line}" for r in policy.narrowed for line in _rule_lines(r, "accept")]
        out += ["    jump refuse", "  }"]
    out += [
        "  chain output {",
        "    type filter hook output priority filter; policy drop;",
        '    oifname "lo" accept',
        # IPv6 neighbour discovery with the gateway: slirp4netns answers it, never forwards.
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } "
        "ip6 hoplimit 255 accept",
    ]
    if policy.dns == "resolver":
        for keyword, resolver in (("ip", RESOLVER4), ("ip6", RESOLVER6)):
            for proto in ("udp", "tcp"):
                out.append(f"    {keyword} daddr {resolver} {proto} dport 53 accept")
    out += [f"    {sel} jump refuse" for sel in _match(t.fixed)]
    deny = [r for r in policy.deny if not isinstance(r.target, str)]
    out += [f"    {line}" for r in deny for line in _rule_lines(r, "jump refuse")]
    openings = [
        r for r in policy.allow if not isinstance(r.target, str) and _within(r.target, t.default)
    ]
    out += [f"    {line}" for r in openings for line in _rule_lines(r, accept)]
    out += [f"    {sel} jump refuse" for sel in _match(t.default)]
    if policy.allow:
        others = [r for r in policy.allow if r not in openings and not isinstance(r.target, str)]
        out += [f"    {line}" for r in others for line in _rule_lines(r, accept)]
        out.append("    jump refuse")
    else:
        out.append(f"    {accept}")
    out += ["  }", "}"]
    return "\n".join(out) + "\n"


# --- command lines ---------------------------------------------------------------------

SLIRP4NETNS = "/usr/bin/slirp4netns"
UNSHARE = "/usr/bin/unshare"
NFT = "/usr/sbin/nft"  # the operator's tool; the worker uses its library, libnftables
SANDBOX_ADDR4 = "10.0.2.100"
SANDBOX_ADDR6 = "fd00::100"


def slirp_argv(
    netns_fd: int, exit_fd: int, ready_fd: int, *, dns: DnsMode, ipv6: bool
) -> list[str]:
    """slirp4netns in a private mount namespace of its own.

    Its `--enable-sandbox` pivots and unmounts inside its mount namespace; run in the
    worker's (host's) one that unmounted host mounts. No `--configure`: it would bring
    the sandbox's loopback up, racing with bwrap, so the worker configures the tap
    itself (netlink.py) and can start slirp4netns early. `--disable-host-loopback` keeps
    the gateway from mapping to the host's 127.0.0.1. The network namespace is passed
    as a path to an fd root opened, because the sandbox sits in a nested user namespace
    that slirp4netns could not join by pid. It exits when `exit_fd` reaches EOF: the
    worker closes it after the run, the kernel when the worker dies.
    """
    argv = [
        UNSHARE,
        "--mount",
        "--propagation",
        "private",
        "--",
        SLIRP4NETNS,
        f"--mtu={MTU}",
        "--disable-host-loopback",
        "--enable-sandbox",
        "--enable-seccomp",
        f"--exit-fd={exit_fd}",
        f"--ready-fd={ready_fd}",
        "--netns-type=path",
    ]
    if ipv6:
        argv.append("--enable-ipv6")
    if dns != "resolver":
        argv.append("--disable-dns")
    return [*argv, f"/proc/self/fd/{netns_fd}", TAP]


GATE_ENV = "ATTUNE_NETWORK_GATE"  # "stdio": the python wrapper is the gate itself
GATE_READY = b"r"  # the gate's first byte on stdout
GATE_GO = b"go\n"  # the worker's first line on stdin


def gate_command(command: Sequence[str]) -> list[str]:
    """Prefix that holds the action until the worker has attached the network.

    It writes one byte on stdout once bwrap has set the sandbox up (loopback included:
    attaching earlier raced with bwrap's own loopback set-up), then reads one line from
    stdin (the shell reads a pipe byte by byte, so nothing after it is consumed) and
    execs the command only if that line is "go". The worker takes the byte off stdout
    before it collects output. EOF (the worker died or gave up) ends the run unrun.
    Only stdin and stdout are used, so no extra descriptor reaches the action. The
    python wrapper speaks the same protocol itself (GATE_ENV), after its interpreter has
    started and before it loads the action, so that start-up overlaps the attach.
    """
    script = 'printf r && read -r go && [ "$go" = go ] && exec "$@"; exit 125'
    return ["/bin/sh", "-c", script, "attune-gate", *command]


def resolv_conf(dns: DnsMode) -> str:
    """The sandbox's resolv.conf: the user-mode resolver, or no server at all."""
    if dns != "resolver":
        return "# no DNS in this sandbox: names come from /etc/hosts only\n"
    return f"nameserver {RESOLVER4}\nnameserver {RESOLVER6}\noptions timeout:2 attempts:2\n"


def nsswitch(dns: DnsMode) -> str:
    hosts = "files dns" if dns == "resolver" else "files"
    return f"passwd: files\ngroup: files\nhosts: {hosts}\n"
