"""The bench's picture (scripts/bench --compare): latency distribution per case, and
executions per second per capacity against the floors and Celery. Needs matplotlib
(requirements-bench.lock); the data comes from `compare.chart_data` of the JSON."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .compare import chart_data


def draw(doc: Mapping[str, Any], path: Path) -> bool:
    """Write the PNG; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latencies, rates = chart_data(doc)
    if not latencies and not rates:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), width_ratios=(3, 2))
    labels = list(latencies)
    left.boxplot(
        [latencies[k] for k in labels], vert=False, showfliers=True, whis=(5, 95), widths=0.6
    )
    left.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    left.set_xlabel("ms (box: quartiles, whiskers: p5-p95)")
    left.set_title("latency: dispatch -> durable result (one at a time)")
    left.set_xlim(left=0)
    left.grid(axis="x", alpha=0.3)
    for name, per_capacity in rates.items():
        xs = sorted(per_capacity)
        ys = [per_capacity[x] for x in xs]
        style = "-o" if len(xs) > 1 else "s"
        right.plot(xs, ys, style, label=name)
    right.set_xlabel("capacity / concurrency")
    right.set_ylabel("executions per second")
    right.set_title("throughput (queued trivial Python actions)")
    right.set_ylim(bottom=0)
    right.set_xticks(sorted({c for r in rates.values() for c in r}))
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="best")
    machine = doc.get("machine", {})
    load = machine.get("loadavg_start", [None])[0]
    fig.suptitle(
        f"scripts/bench {doc.get('started_at', '')[:16]}  "
        f"({machine.get('nproc')} cores, load {load:.1f} at start)"
        if load is not None
        else "scripts/bench",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
