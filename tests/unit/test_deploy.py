"""What ships for deployment: the lock files, the dashboard and the alert rules."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+) \\$", re.MULTILINE)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().split("[")[0]


def _pins(lock: str) -> dict[str, str]:
    text = (REPO / lock).read_text()
    return {_canonical(name): version for name, version in PIN.findall(text)}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_canonical(re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]) for r in requirements}


def test_every_dependency_is_pinned_with_hashes_in_the_locks() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = _requirement_names(pyproject["project"]["dependencies"])
    dev = _requirement_names(pyproject["project"]["optional-dependencies"]["dev"])
    build = _requirement_names(pyproject["build-system"]["requires"])
    assert runtime <= set(_pins("requirements.lock"))
    assert runtime | dev | build <= set(_pins("requirements-dev.lock"))
    assert "uv" in _pins("requirements-uv.lock")
    for lock in ("requirements.lock", "requirements-dev.lock", "requirements-uv.lock"):
        blocks = re.split(r"\n(?=\S)", (REPO / lock).read_text())
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, (lock, block.splitlines()[0])


def test_runtime_lock_pins_the_same_versions_as_the_dev_lock() -> None:
    dev = _pins("requirements-dev.lock")
    for name, version in _pins("requirements.lock").items():
        assert dev[name] == version, name


# --- the Grafana dashboard and the Prometheus alert rules ------------------------------

DASHBOARD = REPO / "deploy" / "grafana" / "attune-workers.json"
ALERTS = REPO / "deploy" / "prometheus" / "attune-worker-alerts.yml"
# PromQL's own words, and the labels Prometheus adds to every scraped series.
PROMQL = frozenset(
    [
        "sum",
        "rate",
        "increase",
        "histogram_quantile",
        "by",
        "on",
        "and",
        "or",
        "unless",
        "without",
        "ignoring",
        "max",
        "min",
        "avg",
        "count",
        "label_values",
        "time",
        "group_left",
        "group_right",
        "bool",
        "offset",
    ]
)
SCRAPE_LABELS = frozenset({"job", "instance"})
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?")
LABEL_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def _exposed() -> dict[str, set[str]]:
    """Every sample name the worker exports, with its label names."""
    from prometheus_client.parser import text_string_to_metric_families

    from attune.metrics import Metrics

    metrics = Metrics()
    metrics.bind(
        worker="w",
        version="v",
        in_flight=lambda: 1,
        capacity=lambda: 2,
        reconnects=lambda: 0,
        outbox_pending=lambda: 0,
        outbox_dropped=lambda: 0,
    )
    metrics.execution_finished(
        "python", "failed", {"duration_ms": 5, "oom_killed": True, "stdout_bytes_truncated": 1}, 1
    )
    names: dict[str, set[str]] = {"up": set()}  # `up` is Prometheus's own
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def _expressions() -> list[str]:
    import json

    import yaml

    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def _uses(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """({metric: label names matched on it}, grouping labels) of one PromQL expression."""
    text = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    grouping = {label.strip() for m in GROUPING.finditer(text) for label in m.group(1).split(",")}
    text = GROUPING.sub(" ", text)
    # Grafana's label_values(selector, label): the second argument is a label name
    grouping |= set(re.findall(r"label_values\(.*,\s*(\w+)\s*\)", text))
    text = re.sub(r"(label_values\(.*),\s*\w+\s*\)", r"\1)", text)
    text = re.sub(r"\b\d+(\.\d+)?\b", " ", text)
    used: dict[str, set[str]] = {}
    for name, matchers, call in SELECTOR.findall(text):
        if name in PROMQL or call:
            continue
        used.setdefault(name, set()).update(LABEL_MATCHER.findall(matchers))
    return used, grouping - {""}


def test_dashboard_and_alerts_use_only_metrics_and_labels_the_worker_exports() -> None:
    exposed = _exposed()
    exprs = _expressions()
    assert len(exprs) > 15
    seen: set[str] = set()
    for expr in exprs:
        used, grouping = _uses(expr)
        assert used, expr
        available = set(SCRAPE_LABELS)
        for name, labels in used.items():
            assert name in exposed, f"{name} is not exported (in: {expr})"
            extra = {"le"} if name.endswith("_bucket") else set()
            assert labels <= exposed[name] | SCRAPE_LABELS | extra, (name, labels, expr)
            available |= exposed[name] | extra
            seen.add(name)
        assert grouping <= available, (grouping - available, expr)
    for required in (
        "up",
        "attune_heartbeats_total",
        "attune_executions_in_flight",
        "attune_oom_kills_total",
        "attune_sandbox_overhead_seconds_bucket",
    ):
        assert required in seen


def test_every_alert_has_a_severity_and_a_summary() -> None:
    import yaml

    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_the_checker_catches_an_unknown_metric_or_label() -> None:
    exposed = _exposed()
    used, _ = _uses('sum by (status) (rate(attune_executions_total{bogus="x"}[5m]))')
    assert not used["attune_executions_total"] <= exposed["attune_executions_total"]
    assert "attune_nonexistent" not in exposed
