"""A host that lacks what a test needs skips it locally and fails it under CI."""

from __future__ import annotations

import pytest

from tests.unavailable import unavailable


def test_missing_requirement_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"required under CI=true.*no bwrap"):
        unavailable("no bwrap")


def test_missing_requirement_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no bwrap"):
        unavailable("no bwrap")
