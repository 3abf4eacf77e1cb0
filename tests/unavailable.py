"""One rule for a test whose host lacks what it needs: skip locally, fail under CI.

A CI run must never pass by skipping: CI's machine has root, bubblewrap, the egress
tools, cgroups and both services, so anything missing there is a failure.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(message: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required under CI=true but unavailable: {message}", pytrace=False)
    pytest.skip(message)
