"""rtnetlink messages for the sandbox's IPv6 address and default route (pure bytes).

slirp4netns configures IPv4 on the tap but leaves IPv6 to router advertisements, which
arrive seconds after the action has started. The worker sets both itself, from a thread
that has joined the sandbox's network namespace (network.py); building the messages is
plain data, unit-tested here without a socket.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFA_ADDRESS = 1
IFA_F_NODAD = 0x02  # the link has no other host: skip duplicate address detection
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid


def _attr(kind: int, data: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(data), kind) + data
    return body + b"\0" * (-len(body) % 4)


def _message(kind: int, seq: int, payload: bytes) -> bytes:
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return _HEADER.pack(_HEADER.size + len(payload), kind, flags, seq, 0) + payload


def add_address6(ifindex: int, address: str, prefix: int, seq: int = 1) -> bytes:
    """RTM_NEWADDR: `address/prefix` on `ifindex`, without duplicate detection."""
    ifaddrmsg = struct.pack("=BBBBI", socket.AF_INET6, prefix, IFA_F_NODAD, 0, ifindex)
    packed = ipaddress.IPv6Address(address).packed
    return _message(RTM_NEWADDR, seq, ifaddrmsg + _attr(IFA_ADDRESS, packed))


def add_default_route6(ifindex: int, gateway: str, seq: int = 2) -> bytes:
    """RTM_NEWROUTE: ::/0 via `gateway` on `ifindex`, main table."""
    rtmsg = struct.pack(
        "=BBBBBBBBI",
        socket.AF_INET6,
        0,  # dst_len: the default route
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
    )
    attrs = _attr(RTA_GATEWAY, ipaddress.IPv6Address(gateway).packed)
    attrs += _attr(RTA_OIF, struct.pack("=I", ifindex))
    return _message(RTM_NEWROUTE, seq, rtmsg + attrs)


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
