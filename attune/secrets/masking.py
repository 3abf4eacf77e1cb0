"""Masking: every secret of a run, and its common encodings, becomes `***` on the way out.

A `Masker` is built from the run's secret values. It replaces the plaintext and the
forms an action (or a library, or a log formatter) is likely to turn it into:

- JSON-escaped (with and without `ensure_ascii`, once and twice: a log field holding
  JSON is escaped again when the line is written),
- URL-encoded (`quote` with and without `/` safe, `quote_plus`),
- base64, standard and urlsafe, padded and not; for the value embedded in a longer
  encoded stream, the part of its encoding that depends on the value alone, for each
  of the three byte alignments (only when that part is at least 8 characters, so a
  short random run of base64 in unrelated output is not masked).

Values shorter than `MIN_MASK_CHARS` are not masked: replacing every `abc` in a log
would hide everything and protect nothing (the caller warns about them instead).

Output is masked as it streams (`StreamMasker` holds back just enough bytes that a
secret split across two chunks is still caught), the result dict is masked key and
value, and log lines are masked by one global redactor that consults the maskers of
all runs in progress (so concurrent runs need no coordination, and a line about one
run that mentions another run's secret is masked too).
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import trio

from attune.jsonsafe import heavier_than
from attune.log import add_redactor
from attune.runner.output import parse_output, truncation_notice
from attune.secrets.pointer import replace_paths, schema_secret_paths, values_at

MASK = "***"
MIN_MASK_CHARS = 4
_MIN_FRAGMENT_BYTES = 6  # a misaligned base64 fragment must cover this much of the value


def encodings(secret: str) -> set[str]:
    """The plaintext and each encoded form of it that is worth masking."""
    forms = {secret}
    for ascii_only in (True, False):
        once = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms.add(once)
        forms.add(json.dumps(once, ensure_ascii=ascii_only)[1:-1])
    forms.update((quote(secret, safe=""), quote(secret), quote_plus(secret)))
    data = secret.encode("utf-8")
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(data).decode("ascii")
        forms.update((whole, whole.rstrip("=")))
        for skip in (0, 1, 2):  # the value starts at offset 0, 2 or 1 of a 3-byte group
            part = data[skip:]
            full = len(part) // 3 * 3
            if full >= _MIN_FRAGMENT_BYTES:
                forms.add(encode(part[:full]).decode("ascii"))
    return {f for f in forms if len(f) >= MIN_MASK_CHARS}


def secret_texts(value: Any) -> list[str]:
    """The strings a secret value can show up as: string leaves, numbers, whole JSON.

    Booleans and null are never secrets by themselves (masking every `true` would
    only hide information); object keys are structure, not secret.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [json.dumps(value)]
    texts: list[str] = []
    if isinstance(value, dict):
        for item in value.values():
            texts += secret_texts(item)
    elif isinstance(value, list):
        for item in value:
            texts += secret_texts(item)
    with contextlib.suppress(TypeError, ValueError):
        texts.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    return texts


class Masker:
    """Replaces a fixed set of secrets (and their encodings) in text, bytes and JSON."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: frozenset[str] = frozenset(s for s in secrets if len(s) >= MIN_MASK_CHARS)
        # Longest first: at one position the regex takes the first alternative that
        # matches, so a secret that contains another is masked whole.
        patterns = sorted(
            {f for s in self.secrets for f in encodings(s)}, key=lambda p: (-len(p.encode()), p)
        )
        self._text = re.compile("|".join(map(re.escape, patterns))) if patterns else None
        raw = [p.encode("utf-8") for p in patterns]
        self._bytes = re.compile(b"|".join(map(re.escape, raw))) if raw else None
        self.max_bytes = max((len(p) for p in raw), default=0)
        self._forms = patterns
        self._raw_forms = raw

    def __bool__(self) -> bool:
        return self._text is not None

    def extended(self, more: Iterable[str]) -> Masker:
        """A masker for these secrets plus `more` (self when nothing new is maskable)."""
        extra = {s for s in more if len(s) >= MIN_MASK_CHARS} - self.secrets
        return Masker(self.secrets | extra) if extra else self

    def text(self, text: str) -> str:
        return self._text.sub(MASK, text) if self._text is not None else text

    def bytes(self, data: bytes) -> bytes:
        return self._bytes.sub(MASK.encode(), data) if self._bytes is not None else data

    def cut_text(self, text: str) -> str:
        """`text` ends where output was cut: mask a trailing start of a secret too.

        A cap can cut a secret in two; the kept half is no full match, so the plain
        masking leaves it. Here the longest end of `text` that begins any masked form
        becomes `***` (only at a cut: at a normal end it could be anything).
        """
        cut = _trailing_prefix(text, self._forms)
        return self.text(text[: len(text) - cut]) + MASK if cut else self.text(text)

    def cut_bytes(self, data: builtins.bytes) -> builtins.bytes:
        """Like `cut_text`, for a byte stream that was cut."""
        cut = _trailing_prefix(data, self._raw_forms)
        return self.bytes(data[: len(data) - cut]) + MASK.encode() if cut else self.bytes(data)

    def json(self, value: Any) -> Any:
        """A masked copy of a JSON value: strings and keys masked, numbers checked too."""
        if self._text is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = json.dumps(value)
            return MASK if self.text(shown) != shown else value
        return value


def _trailing_prefix(data: Any, forms: list[Any]) -> int:
    """Length of the longest end of `data` that is a proper start of one of `forms`."""
    best = 0
    for form in forms:
        for size in range(min(len(form) - 1, len(data)), best, -1):
            if data.endswith(form[:size]):
                best = size
                break
    return best


class StreamMasker:
    """Masks a byte stream chunk by chunk; a secret split across chunks is still caught.

    It keeps back the last `max_bytes - 1` bytes of what it has seen (nothing is
    decided about a match that could still grow), so the output lags the input by at
    most the longest pattern; `flush()` releases the rest at the end.
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        pattern = self._masker._bytes
        if pattern is None:
            return chunk
        buf = self._pending + chunk
        safe = len(buf) - (self._masker.max_bytes - 1)
        if safe <= 0:
            self._pending = buf
            return b""
        out: list[bytes] = []
        pos = 0
        for match in pattern.finditer(buf):
            if match.start() >= safe:
                break
            # A match starting before `safe` is final: any longer alternative starting
            # at the same place would end inside `buf` and would have been preferred.
            out += [buf[pos : match.start()], MASK.encode()]
            pos = match.end()
        cut = max(safe, pos)
        out.append(buf[pos:cut])
        self._pending = buf[cut:]
        return b"".join(out)

    def flush(self, *, cut: bool = False) -> bytes:
        """The held-back end, masked; `cut`: the stream was truncated right here."""
        rest, self._pending = self._pending, b""
        return self._masker.cut_bytes(rest) if cut else self._masker.bytes(rest)


# --- results -------------------------------------------------------------------------


def redact_result(
    result: dict[str, Any], masker: Masker, out_schema: Any
) -> tuple[dict[str, Any], Masker]:
    """Mask a run's result; paths marked `secret: true` in the output schema are hidden.

    Values found at those paths become secrets of the run too (returned in the new
    masker), so the same value printed to stdout or quoted in the error is masked
    as well.
    """
    paths = schema_secret_paths(out_schema)
    if paths:
        found: list[Any] = []
        if "data" in result:
            found = values_at(result["data"], paths)
            result = {**result, "data": replace_paths(result["data"], paths, MASK)}
        elif isinstance(result.get("stdout"), str):
            # A failed run has no `data`, but its stdout may still hold the values the
            # schema calls secret: read it every way an output_format could.
            for candidate in _output_candidates(result["stdout"]):
                found += values_at(candidate, paths)
        masker = masker.extended(t for v in found for t in secret_texts(v))
    masked: dict[str, Any] = masker.json(result)
    for name in ("stdout", "stderr"):
        # Where a stream was cut at its cap, a secret may have been cut in two.
        text = result.get(name)
        notice = truncation_notice(name)
        if result.get(f"{name}_truncated") and isinstance(text, str) and text.endswith(notice):
            masked[name] = masker.cut_text(text[: -len(notice)]) + notice
    return masked, masker


def _output_candidates(stdout: str) -> list[Any]:
    """Every value stdout parses to as json, a last json line, json lines or yaml."""
    from attune.jsonsafe import DataRefused

    candidates: list[Any] = []
    for fmt in ("json", "jsonl", "yaml"):
        try:
            parsed, value = parse_output(stdout, fmt)  # type: ignore[arg-type]
        except DataRefused:
            continue
        if parsed:
            candidates += value if fmt == "jsonl" else [value]
    return candidates


def mask_file(path: Path, masker: Masker) -> None:
    """Rewrite a worker-written file through the masker (atomically, never via a link)."""
    if not masker:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    masked = masker.bytes(data)
    if masked == data:
        return
    tmp = path.with_name(path.name + ".masking")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "wb") as handle:
        handle.write(masked)
    os.replace(tmp, path)


# --- logs ----------------------------------------------------------------------------


class _ActiveMaskers:
    """The maskers of runs in progress; one redactor registered once consults them all."""

    def __init__(self) -> None:
        self._by_token: dict[int, Masker] = {}
        self._next = 0
        self._installed = False

    def redact(self, text: str) -> str:
        for masker in tuple(self._by_token.values()):
            text = masker.text(text)
        return text

    def add(self, masker: Masker) -> int:
        if not self._installed:
            add_redactor(self.redact)
            self._installed = True
        self._next += 1
        self._by_token[self._next] = masker
        return self._next

    def set(self, token: int, masker: Masker) -> None:
        if token in self._by_token:
            self._by_token[token] = masker

    def remove(self, token: int) -> None:
        self._by_token.pop(token, None)


ACTIVE = _ActiveMaskers()


@contextlib.contextmanager
def masking_logs(masker: Masker) -> Iterator[int]:
    """Mask this run's secrets in every log line written while the block runs."""
    token = ACTIVE.add(masker)
    try:
        yield token
    finally:
        ACTIVE.remove(token)


# --- the pipeline's guard ------------------------------------------------------------

OutputSink = Callable[[str, bytes], Awaitable[None]]


class OutputGuard:
    """Everything leaving one run passes here: live output, the result, the log lines.

        async with OutputGuard(masker, artifacts.write, out_schema, log_dir) as guard:
            outcome = await sandbox.run(spec, ..., on_output=guard.write)
            result = await guard.redact(outcome.result)

    `log_dir` holds the streamed `stdout.log`/`stderr.log`; they are rewritten only when
    the output schema revealed secrets the live masking could not know yet.
    """

    def __init__(
        self, masker: Masker, sink: OutputSink, out_schema: Any, log_dir: Path | None = None
    ) -> None:
        self.masker = masker
        self._sink = sink
        self._out_schema = out_schema
        self._log_dir = log_dir
        self._streams: dict[str, StreamMasker] = {}
        self._token: int | None = None

    async def __aenter__(self) -> OutputGuard:
        self._token = ACTIVE.add(self.masker)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self.flush()
        finally:
            if self._token is not None:
                ACTIVE.remove(self._token)

    async def write(self, stream: str, chunk: bytes) -> None:
        masker = self._streams.get(stream)
        if masker is None:
            masker = self._streams[stream] = StreamMasker(self.masker)
        out = masker.feed(chunk)
        if out:
            await self._sink(stream, out)

    async def flush(self, cut: frozenset[str] = frozenset()) -> None:
        """Release what the stream maskers hold back; `cut` streams were truncated."""
        streams, self._streams = self._streams, {}
        for name, masker in streams.items():
            rest = masker.flush(cut=name in cut)
            if rest:
                await self._sink(name, rest)

    async def redact(self, result: dict[str, Any]) -> dict[str, Any]:
        """The result as it may be stored and published; call after the run ended."""
        await self.flush(frozenset(n for n in ("stdout", "stderr") if result.get(f"{n}_truncated")))
        # Masking a result of tens of MB is regex work over all of it: off the trio thread.
        # A small one costs less than the thread hop would.
        if heavier_than(result, values=2000, chars=64 * 1024):
            masked, masker = await trio.to_thread.run_sync(
                redact_result, result, self.masker, self._out_schema
            )
        else:
            masked, masker = redact_result(result, self.masker, self._out_schema)
        if masker is not self.masker:
            self.masker = masker
            if self._token is not None:
                ACTIVE.set(self._token, masker)
            if self._log_dir is not None:
                for name in ("stdout.log", "stderr.log"):
                    await trio.to_thread.run_sync(mask_file, self._log_dir / name, masker)
        return masked
