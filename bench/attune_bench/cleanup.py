"""Undo everything the bench made, in reverse order, even after Ctrl-C.

Each resource registers a plain synchronous undo right after it exists (before it is
used), so an interrupt at any point leaves nothing behind: the undos run after
`trio.run` returns or raises, with SIGINT/SIGTERM ignored so a second Ctrl-C cannot cut
the cleanup short. An undo that fails is reported and the others still run.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path


class Cleanup:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self._undo.append((what, fn))

    def run_all(self) -> list[str]:
        """Run every undo, newest first; returns the failures (also printed)."""
        failures = []
        with _signals_ignored():
            while self._undo:
                what, fn = self._undo.pop()
                try:
                    fn()
                except Exception as exc:  # one failed undo must not stop the others
                    failures.append(f"{what}: {exc}")
                    print(f"bench: cleanup of {what} failed: {exc}", file=sys.stderr)
        return failures

    # --- common undos ---------------------------------------------------------------

    def temp_dir(self, path: Path) -> None:
        self.push(f"directory {path}", lambda: shutil.rmtree(path, ignore_errors=True))

    def process(self, what: str, proc: subprocess.Popen[bytes], *, grace: float = 15.0) -> None:
        """SIGTERM (the worker drains), then SIGKILL after `grace` seconds."""

        def stop() -> None:
            if proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

        self.push(what, stop)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
