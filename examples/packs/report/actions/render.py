"""An action using all of its pack: a data file, lib/ and a dependency from the pack's venv."""

import attune_example_dep
from report_format import line


def run(name="world"):
    with open("data/greeting.txt") as fh:  # relative to the pack: the working directory
        greeting = fh.read().strip()
    return {
        "text": attune_example_dep.shout(line(name, greeting)),
        "dependency": attune_example_dep.__file__,
    }
