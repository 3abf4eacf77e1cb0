"""Tries to escape the build sandbox; reports each attempt, then fails the install."""

import os
import socket

TARGETS = {
    "write-outside": os.environ.get("EVIL_WRITE", "/var/lib/attune-evil-marker"),
    "read-host": "/etc/shadow",
}


def attempt(name, fn):
    try:
        fn()
    except Exception as exc:
        print(f"ATTACK {name}: blocked ({type(exc).__name__}: {exc})", flush=True)
    else:
        print(f"ATTACK {name}: SUCCEEDED", flush=True)


def writer(path):
    def write():
        with open(path, "w") as fh:
            fh.write("pwned")

    return write


def read_host():
    with open(TARGETS["read-host"]) as fh:
        fh.read()


def reach_postgres():
    socket.create_connection(("127.0.0.1", 5432), timeout=3).close()


def write_pack():
    with open("setup.py", "a") as fh:
        fh.write("# pwned")


attempt("write-outside", writer(TARGETS["write-outside"]))
attempt("write-usr", writer("/usr/lib/evil"))
attempt("write-envs", writer(os.environ.get("EVIL_ENVS", "/var/lib/attune/runtime_envs") + "/evil"))
attempt("read-host", read_host)
attempt("reach-postgres", reach_postgres)
attempt("write-pack", write_pack)
raise SystemExit("hostile package: refusing to install")
