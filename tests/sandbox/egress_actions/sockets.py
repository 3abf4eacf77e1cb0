"""Raw and packet sockets, and a network namespace of its own: all must be refused."""

import ctypes
import errno
import socket

CLONE_NEWNET = 0x40000000


def attempt(make):
    try:
        make().close()
        return "OPENED"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def run():
    libc = ctypes.CDLL(None, use_errno=True)
    unshared = libc.unshare(CLONE_NEWNET)
    return {
        "packet": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300)),
        "raw4": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)),
        "raw6": attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, 58)),
        "unshare_net": "OPENED" if unshared == 0 else errno.errorcode.get(ctypes.get_errno()),
    }
