"""Test-only TCP relay: ports on 127.0.0.1 of a network namespace -> services of ours.

    python3 netns_relay.py /run/netns/NAME LISTEN_PORT:TARGET_HOST:TARGET_PORT ...

A worker started in the fake host of networld.py must reach the real PostgreSQL and
RabbitMQ on this host's loopback, which that namespace has no route to. The listening
sockets are made by a thread that joined the other namespace (sockets stay in the
namespace they were created in; setns is per thread), the connections to the targets by
threads of this one. Nothing else is opened: no route, no veth, no outside address.
Prints "ready" once every port listens; exits when stdin closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def listen_in(netns: str, ports: list[int]) -> list[socket.socket]:
    made: list[socket.socket] = []
    errors: list[BaseException] = []

    def target() -> None:  # this thread ends inside the other namespace
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            os.close(fd)
            for port in ports:
                srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                srv.bind(("127.0.0.1", port))
                srv.listen(64)
                made.append(srv)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return made


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(srv: socket.socket, target: tuple[str, int]) -> None:
    while True:
        conn, _ = srv.accept()
        try:
            out = socket.create_connection(target)
        except OSError:
            conn.close()
            continue
        threading.Thread(target=pump, args=(conn, out), daemon=True).start()
        threading.Thread(target=pump, args=(out, conn), daemon=True).start()


def main() -> None:
    specs = [arg.split(":") for arg in sys.argv[2:]]
    servers = listen_in(sys.argv[1], [int(listen) for listen, _, _ in specs])
    for srv, (_, host, port) in zip(servers, specs, strict=True):
        threading.Thread(target=serve, args=(srv, (host, int(port))), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
