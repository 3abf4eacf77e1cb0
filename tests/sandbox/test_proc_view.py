"""What the action sees of /proc (catalog rows 74-75), on a real bwrap.

Host-wide entries an action has no use for are masked: files behind /dev/null (EACCES),
directories empty and read-only. The process's own entries and the usual system
summary stay readable, and ordinary code that reads them keeps working.
"""

from __future__ import annotations

import textwrap

import pytest

from attune.runner import argv
from attune.runner.sandbox import Sandbox
from tests.sandbox.conftest import RunCode

pytestmark = pytest.mark.sandbox

PROBE = textwrap.dedent("""
    import errno, json, os, sys

    def attempt(fn):
        try:
            fn()
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return "OK"

    def run(files, dirs):
        seen = {}
        for name in files:
            path = "/proc/" + name
            if os.path.lexists(path):
                seen[name] = [attempt(lambda: open(path, "rb").read(1)),
                              attempt(lambda: open(path, "wb").close())]
        for name in dirs:
            path = "/proc/" + name
            if os.path.lexists(path):
                seen[name] = [sorted(os.listdir(path)),
                              attempt(lambda: open(path + "/x", "w").close())]
        kept = {name: attempt(lambda: open("/proc/" + name, "rb").read())
                for name in ("cpuinfo", "meminfo", "stat", "loadavg", "uptime", "version",
                             "self/status", "self/limits", "self/mountinfo", "sys/kernel/ostype")}
        return {"masked": seen, "kept": kept, "cpus": os.cpu_count(),
                "loadavg": len(os.getloadavg())}
""")


async def test_74_host_wide_proc_entries_are_masked_and_the_rest_still_works(
    run_code: RunCode,
) -> None:
    outcome = await run_code(
        PROBE,
        params={"files": list(argv.MASKED_PROC_FILES), "dirs": list(argv.MASKED_PROC_DIRS)},
    )
    assert outcome.status == "completed", outcome.result
    data = outcome.result["data"]
    masked = data["masked"]
    for name in ("keys", "partitions", "config.gz", "cmdline", "interrupts", "pressure"):
        assert name in masked, f"/proc/{name} exists on this kernel but was not probed"
    for name in argv.MASKED_PROC_FILES:
        if name in masked:  # a file: neither readable nor writable
            assert masked[name][0] == "EACCES", (name, masked[name])
            assert masked[name][1] in ("EACCES", "EROFS"), (name, masked[name])
    for name in argv.MASKED_PROC_DIRS:
        if name in masked:  # a directory: empty and read-only
            assert masked[name] == [[], "EROFS"], (name, masked[name])
    assert data["kept"] == dict.fromkeys(data["kept"], "OK")
    assert data["cpus"] >= 1 and data["loadavg"] == 3


async def test_75_mountinfo_shows_no_host_path_of_the_run(
    run_code: RunCode, sandbox: Sandbox
) -> None:
    """The result travels through attune-init's pipe, not a bind of a run-dir file:
    no mount of the sandbox names the run dir, whatever field one reads."""
    outcome = await run_code(
        textwrap.dedent("""
        def run():
            return [line.rstrip("\\n") for line in open("/proc/self/mountinfo")]
        """),
        parameter_delivery="file",
        secrets={"token": "s3cr3t-value"},
    )
    assert outcome.status == "completed", outcome.result
    lines = outcome.result["data"]
    run_dir = str(sandbox.run_dir)
    assert [line for line in lines if run_dir in line] == []
    rows = [line.split() for line in lines]
    points = {row[4]: row for row in rows}  # mount point -> row
    out = points["/attune/out"]  # the run's own tmpfs, sized (argv.out_dir_size)
    assert out[3] == "/" and out[out.index("-") + 1] == "tmpfs"
    assert "size=" in out[-1]
    for copied in ("/attune", "/etc/passwd", "/attune/out/parameters", "/attune/out/secrets.json"):
        assert copied not in points  # files copied onto tmpfs, not mounts
    assert "/attune/out/result.json" not in points
