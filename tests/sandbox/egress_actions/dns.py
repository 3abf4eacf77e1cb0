"""Resolve `names`, connect to the first one that resolves, send one DNS query for
`qname` to each server in `query` and say what came back."""

import errno
import socket
import struct


def ask(server, qname):
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    name = b"".join(bytes([len(p)]) + p.encode() for p in qname.split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
    try:
        s.connect((server, 53))
        s.send(packet)
        s.recv(512)
        return "answered"
    except TimeoutError:
        return "TIMEOUT"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()


def run(names, query, qname):
    resolved = {}
    for name in names:
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
            resolved[name] = sorted({info[4][0] for info in infos})
        except socket.gaierror:
            resolved[name] = "gaierror"
    web = None
    first = next((v for v in resolved.values() if isinstance(v, list)), None)
    if first:
        with socket.create_connection((first[0], 80), 4) as conn:
            web = conn.recv(200).decode().strip()
    return {"names": resolved, "web": web, "query": {q: ask(q, qname) for q in query}}
