"""`python -m attune_bench.reaper -- COMMAND...`: run COMMAND under a child subreaper.

A bwrap that exits before its sandbox's init orphans the init; without a subreaper above
it, the init (and the CPU of everything it reaped) leaves the tree the bench measures.
The Celery worker runs under this, so its bwrap variant's sandboxes are counted like the
worker's (which is a subreaper itself). SIGTERM and SIGINT are passed on to COMMAND.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("reaper: cannot become a child subreaper", file=sys.stderr)
    child = subprocess.Popen(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: child.send_signal(s))
    code = 0
    while True:  # reap the child and every orphan that comes back to us
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)
            child.returncode = code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
