"""Runs inside a parked sandbox: start up, say "ready", wait for one action, become it.

A warm-pool sandbox (attune/runner/pool.py) is started before any execution is known:
same namespaces, seccomp filter, uid, cgroup and limits as a cold one, with this file as
the command attune-init runs. The interpreter starts, pre-imports the run() wrapper and
warms the JSON codec and the compiler, writes one byte ("r") on stdout and blocks on
stdin. Nothing of any execution is in it until then.

The worker then writes one handoff on stdin (attune/runner/handoff.py builds it):

    4 bytes big-endian N | N bytes of JSON header | the files' bytes, in header order
    | the action's own stdin (its parameters, when they travel on stdin)

The header holds the action's whole environment, the files to create (the action code,
the parameter and secrets files) and either `call` (a run() action: the wrapper runs it
in this interpreter) or `argv` (anything else: exec'd, as a cold sandbox would run it).
Only the header and the files are read here, with os.read on fd 0, so the rest of
stdin is the action's, unread. Like python_wrapper.py, this file imports only what a
bare interpreter has loaded (the C `_json` scanner through the wrapper).
"""

import os
import sys

sys.path.insert(0, "/attune")
try:
    import python_wrapper
finally:
    del sys.path[0]

CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _read_exact(count):
    chunks = []
    while count > 0:
        chunk = os.read(0, min(count, 1 << 20))
        if not chunk:
            os._exit(125)  # the worker gave up on this sandbox before handing it an action
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _warm_up():
    """Pay the first-use costs now, not on the action's clock."""
    python_wrapper._loads(python_wrapper._dumps({"ok": True, "value": [1, "x", None]}))
    compile("def run():\n    return 1\n", "<warm-up>", "exec")


def main():
    _warm_up()
    os.write(1, b"r")
    size = int.from_bytes(_read_exact(4), "big")
    header = python_wrapper._loads(_read_exact(size).decode("utf-8"))
    for path, mode, length in header["files"]:
        try:
            python_wrapper.write_file(path, CREATE, mode, _read_exact(length))
        except OSError as exc:  # past the tmpfs or file-size limit: as bwrap reports it
            os.write(2, f"cannot write {path}: {exc.strerror}\n".encode())
            os._exit(1)
    env = header["env"]
    if "PWD" in os.environ:  # bwrap's --chdir sets it after the environment: keep it last
        env["PWD"] = os.environ["PWD"]
    os.environ.clear()
    os.environ.update(env)
    if "TZ" in env:
        import time

        time.tzset()
    argv = header.get("argv")
    if argv:
        # The interpreter ignores SIGPIPE and SIGXFSZ, and an ignored signal stays
        # ignored across exec: give the action the defaults a cold sandbox starts with.
        import _signal

        for signo in (_signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(signo, _signal.SIG_DFL)
        try:
            os.execve(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"cannot run {argv[0]}: {exc.strerror}\n".encode())
            os._exit(127)
    python_wrapper.exit_now(python_wrapper.main(header["call"]))


if __name__ == "__main__":
    main()
