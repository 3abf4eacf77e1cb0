"""Reads its YAML parameter file and a data file of the pack by relative path."""

import json
import os

from fullformat_helpers import greeting

with open(os.environ["ATTUNE_PARAMETER_FILE"]) as fh:
    name = fh.read().split(":", 1)[1].strip() or "world"
with open("data/suffix.txt") as fh:
    suffix = fh.read().strip()
print(json.dumps({"greeting": greeting(name) + suffix, "cwd": os.getcwd()}))
