"""Open as many connections through the user-mode stack as the run's limits allow."""

import resource
import socket


def run():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    held, error = [], None
    for _ in range(soft):
        try:
            held.append(socket.create_connection(("203.0.113.10", 80), 5))
        except OSError as exc:
            error = exc.strerror
            break
    for s in held:
        s.close()
    return {"opened": len(held), "stopped_by": error}
