"""Start-up sweep: processes left running as this worker's slot uids are killed."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from attune.runner import process

pytestmark = pytest.mark.sandbox


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another uid")
def test_leftover_processes_of_the_slot_uids_are_killed_and_others_spared() -> None:
    base = 261000
    mine = subprocess.Popen(
        ["setpriv", f"--reuid={base + 1}", f"--regid={base + 1}", "--clear-groups", "sleep", "100"]
    )
    other = subprocess.Popen(
        ["setpriv", f"--reuid={base + 5}", f"--regid={base + 5}", "--clear-groups", "sleep", "100"]
    )
    try:
        time.sleep(0.2)
        killed = process.kill_uid_range(base, 2)
        assert mine.pid in killed
        assert other.pid not in killed
        assert mine.wait(timeout=5) == -9
        assert other.poll() is None
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()
