"""Waiting out a database outage: the one retry loop the worker uses for DB work."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from attune.errors import TransientError
from attune.log import log_event

log = logging.getLogger("attune.worker")
T = TypeVar("T")


async def with_db_retry(what: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Retry a unit of DB work across an outage, backing off up to 30 s; cancellable.

    Only `TransientError` is retried: anything else is an answer, not an outage.
    """
    delay = 0.5
    while True:
        try:
            return await fn()
        except TransientError as exc:
            log_event(log, "db_retry", logging.WARNING, what=what, reason=str(exc), retry_in=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)
