"""rtnetlink messages that configure the sandbox's tap interface (pure bytes).

slirp4netns can configure the tap itself (`--configure`), but it then also brings the
sandbox's loopback up, which races with bwrap's own loopback set-up; and it leaves IPv6
to router advertisements, which arrive seconds after the action has started. So it
only creates the tap, early, and the worker configures it once bwrap is done: link up
with the MTU, 10.0.2.100/24 and fd00::100/64 (no duplicate detection: the link has no
other host), default routes via the user-mode gateway. The messages are sent from a
thread inside the sandbox's namespace (netns.py); building them is plain data,
unit-tested here without a socket.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFF_UP = 0x1
IFLA_MTU = 4
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid


def _attr(kind: int, data: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(data), kind) + data
    return body + b"\0" * (-len(body) % 4)


def _message(kind: int, seq: int, payload: bytes, *, create: bool = True) -> bytes:
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if create else 0)
    return _HEADER.pack(_HEADER.size + len(payload), kind, flags, seq, 0) + payload


def link_up(ifindex: int, mtu: int, seq: int) -> bytes:
    """RTM_NEWLINK: set the link up with `mtu`."""
    ifinfomsg = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, ifindex, IFF_UP, IFF_UP)
    return _message(
        RTM_NEWLINK, seq, ifinfomsg + _attr(IFLA_MTU, struct.pack("=I", mtu)), create=False
    )


def add_address(ifindex: int, address: str, prefix: int, seq: int) -> bytes:
    """RTM_NEWADDR: `address/prefix` on `ifindex` (IPv6 without duplicate detection)."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    flags = IFA_F_NODAD if ip.version == 6 else 0
    ifaddrmsg = struct.pack("=BBBBI", family, prefix, flags, 0, ifindex)
    attrs = _attr(IFA_ADDRESS, ip.packed)
    if ip.version == 4:
        attrs += _attr(IFA_LOCAL, ip.packed)
    return _message(RTM_NEWADDR, seq, ifaddrmsg + attrs)


def add_default_route(ifindex: int, gateway: str, seq: int) -> bytes:
    """RTM_NEWROUTE: the default route via `gateway` on `ifindex`, main table."""
    ip = ipaddress.ip_address(gateway)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    rtmsg = struct.pack(
        "=BBBBBBBBI",
        family,
        0,  # dst_len: the default route
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
    )
    attrs = _attr(RTA_GATEWAY, ip.packed) + _attr(RTA_OIF, struct.pack("=I", ifindex))
    return _message(RTM_NEWROUTE, seq, rtmsg + attrs)


def configure_tap(
    ifindex: int, *, mtu: int, addresses: list[tuple[str, int]], gateways: list[str]
) -> list[bytes]:
    """The whole configuration, in the order the kernel needs it (seq 1, 2, ...)."""
    messages = [link_up(ifindex, mtu, 1)]
    for address, prefix in addresses:
        messages.append(add_address(ifindex, address, prefix, len(messages) + 1))
    for gateway in gateways:
        messages.append(add_default_route(ifindex, gateway, len(messages) + 1))
    return messages


def ack_errors(data: bytes) -> dict[int, int]:
    """{seq: errno} of the NLMSG_ERROR replies in `data` (errno 0 is an ack)."""
    found: dict[int, int] = {}
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if kind == NLMSG_ERROR and length >= _HEADER.size + 4:
            (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            found[seq] = -error
        offset += (length + 3) & ~3
    return found
