"""docs/configuration.md is generated from attune/config.py and must not drift."""

from __future__ import annotations

from pathlib import Path

from attune.cli.ops_cmd import (
    configuration_doc,
)

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_committed_configuration_reference_matches_the_code() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == configuration_doc(), "run scripts/gen-docs and commit the result"
