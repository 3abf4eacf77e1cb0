"""Try every destination in `targets` ([host, port, proto]) and say what happened."""

import errno
import socket


def attempt(host, port, proto):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.settimeout(4)
    try:
        s.connect((host, port))
        if proto == "udp":
            s.send(b"ping")
        data = s.recv(200)
        return "OK " + data.decode().strip()
    except TimeoutError:
        return "TIMEOUT"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()


def run(targets):
    return {f"{h} {p}/{proto}": attempt(h, p, proto) for h, p, proto in targets}
