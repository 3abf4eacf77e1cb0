"""Stand-in services of the egress test world, run inside its namespaces.

    python3 networld_servers.py host LOG      # the fake host: "PostgreSQL" on :5432
    python3 networld_servers.py internet LOG  # the fake internet: line servers on
                                              # :80/:8080, HTTP on :8000, UDP echo :7,
                                              # DNS on :53

Every TCP server answers one line naming itself and the address it was reached on, and
appends `HIT <role> <local address> <port>` to LOG; the DNS server answers every A query
with 203.0.113.10 and logs `DNS <name>`. Prints "ready" once everything listens.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading

ANSWER = socket.inet_aton("203.0.113.10")
lock = threading.Lock()


def log(path: str, line: str) -> None:
    with lock, open(path, "a") as handle:
        handle.write(line + "\n")


def listener(port: int) -> socket.socket:
    """TCP on every address of the namespace, IPv4 and IPv6."""
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(512)
    return srv


def tcp(port: int, role: str, path: str) -> None:
    srv = listener(port)

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            local = conn.getsockname()[0].removeprefix("::ffff:")
            log(path, f"HIT {role} {local} {port}")
            with contextlib.suppress(OSError):
                conn.sendall(f"{role} {local} {port}\n".encode())
            conn.close()

    threading.Thread(target=serve, daemon=True).start()


def http(port: int, path: str) -> None:
    """A one-request HTTP/1.0 server: reads the request head, answers 200."""
    srv = listener(port)

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            with conn, contextlib.suppress(OSError):
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 8192:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                local = conn.getsockname()[0].removeprefix("::ffff:")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                log(path, f"HTTP {local} {line}")
                body = f"hello from {local} ({line})\n".encode()
                conn.sendall(
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    threading.Thread(target=serve, daemon=True).start()


def udp_echo(path: str, family: socket.AddressFamily, address: str) -> None:
    srv = socket.socket(family, socket.SOCK_DGRAM)
    srv.bind((address, 7))  # bound, so replies come from the address asked

    def serve() -> None:
        while True:
            data, peer = srv.recvfrom(2048)
            log(path, f"UDP {data[:64]!r}")
            srv.sendto(data, peer)

    threading.Thread(target=serve, daemon=True).start()


def qname(packet: bytes) -> tuple[str, int]:
    labels, i = [], 12
    while packet[i]:
        labels.append(packet[i + 1 : i + 1 + packet[i]].decode("ascii", "replace"))
        i += packet[i] + 1
    return ".".join(labels), i + 5


def dns(path: str) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("203.0.113.53", 53))

    def serve() -> None:
        while True:
            packet, peer = srv.recvfrom(2048)
            try:
                name, end = qname(packet)
            except IndexError:
                continue
            log(path, f"DNS {name}")
            qtype = struct.unpack("!H", packet[end - 4 : end - 2])[0]
            header = packet[:2] + b"\x81\x80" + packet[4:6]
            if qtype == 1:  # A
                answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + ANSWER
                srv.sendto(header + b"\x00\x01\x00\x00\x00\x00" + packet[12:end] + answer, peer)
            else:
                srv.sendto(header + b"\x00\x00\x00\x00\x00\x00" + packet[12:end], peer)

    threading.Thread(target=serve, daemon=True).start()


def main() -> None:
    role, path = sys.argv[1], sys.argv[2]
    if role == "host":
        tcp(5432, "postgres", path)
    else:
        tcp(80, "web", path)
        tcp(8080, "web", path)
        http(8000, path)
        udp_echo(path, socket.AF_INET, "203.0.113.10")
        udp_echo(path, socket.AF_INET6, "2001:db8::10")
        dns(path)
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)


if __name__ == "__main__":
    main()
