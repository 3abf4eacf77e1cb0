"""Negative control of the egress tests: `attune exec` with the rules replaced by an
empty table, so the world's stray counter and stand-in services must see the leak."""

import sys

from attune.cli import exec_cmd
from attune.runner import egress

egress.ruleset = lambda policy, host: f"table inet {egress.TABLE} {{\n}}\n"  # type: ignore[assignment]
sys.exit(exec_cmd.main(sys.argv[1:]))
