"""Make a tiny pure-Python wheel with the standard library only (no network, no pip).

The example pack's requirements.txt names `attune-example-dep`; the demo and the tests
build its wheel here and point pip at this directory with find-links, so installing
the pack's environment needs no package index.

    python3 examples/wheels/make_wheel.py OUT_DIR  # attune_example_dep-1.0.0-py3-none-any.whl
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

NAME, VERSION, MODULE = "attune-example-dep", "1.0.0", "attune_example_dep"
SOURCE = '''"""A stand-in third-party dependency of the example pack."""

__version__ = "1.0.0"


def shout(text):
    return text.upper() + "!"
'''


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(
    out_dir: Path, name: str = NAME, version: str = VERSION, files: dict[str, str] | None = None
) -> Path:
    """Write `<dist>-<version>-py3-none-any.whl` holding `files` (path -> text)."""
    dist = name.replace("-", "_")
    files = files if files is not None else {f"{MODULE}/__init__.py": SOURCE}
    info = f"{dist}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: make_wheel\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{dist}-{version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, text in {**files, **meta}.items():
            data = text.encode()
            zf.writestr(arcname, data)
            records.append(_record_line(arcname, data))
        records.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return wheel


if __name__ == "__main__":
    print(make_wheel(Path(sys.argv[1])))
