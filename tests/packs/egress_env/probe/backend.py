"""An in-tree build backend (untrusted code pip runs): it tries to connect to each of
TARGETS and records the outcomes in the wheel it builds, so the test reads what the
build sandbox could reach from the installed environment."""

import base64
import errno
import hashlib
import os
import socket
import zipfile

# The fake host's "PostgreSQL" (its own address), the index host on another port, a
# LAN box, the metadata address, and the index itself (the control: it must answer).
TARGETS = [
    ("198.51.100.2", 5432),
    ("10.99.0.1", 5432),
    ("203.0.113.10", 80),
    ("10.77.0.5", 80),
    ("169.254.169.254", 80),
    ("api.test", 8081),
]


def _try(host, port):
    try:
        with socket.create_connection((host, port), timeout=5):
            return "OK"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _record(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    results = {f"{h}:{p}": _try(h, p) for h, p in TARGETS}
    info = "attune_build_probe-1.0.dist-info"
    files = {
        "attune_build_probe/__init__.py": f"RESULTS = {results!r}\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: attune-build-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: probe\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    name = "attune_build_probe-1.0-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for arcname, text in files.items():
            zf.writestr(arcname, text.encode())
            records.append(_record(arcname, text.encode()))
        records.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return name
