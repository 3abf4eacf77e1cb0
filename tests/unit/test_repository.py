"""Repository-wide rules that no single module's tests would catch."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return [ROOT / name for name in listed if name and (ROOT / name).is_file()]


def test_no_file_refers_to_planning_notes_outside_the_repository() -> None:
    needles = ("../" + "shared", "shared" + "/spec")
    offenders = []
    for path in _tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if any(needle in text for needle in needles):
            offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == [], "cite docs/ instead"


def test_contract_documents_exist() -> None:
    for name in ("protocol.md", "sandbox.md", "security.md"):
        assert (ROOT / "docs" / name).is_file(), name
    assert "## Hostile-action catalog" in (ROOT / "docs/security.md").read_text()
