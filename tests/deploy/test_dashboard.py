"""The Grafana dashboard (deploy/grafana/lpm-dashboard.json) queries only metrics lpm exports.

The exported names come from the registries themselves: an agent's and a collector's metrics, instantiated,
each family's samples and the series its type exposes (a labelled counter nobody has counted yet has no
samples, but its ``_total`` is still what Prometheus will scrape). The names a query uses are parsed out of
its PromQL, so a renamed metric fails here rather than as an empty panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from lpm_gc.metrics import Metrics
from tests.support import REPO
from watcher.observe import AgentMetrics, Operation

DASHBOARD = REPO / "deploy" / "grafana" / "lpm-dashboard.json"
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}


def exported(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers that are not functions (followed by a
    parenthesis), keywords, label names or values (in braces, in strings, in by/without lists), or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_.:$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_the_parser_finds_metric_names_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, node) (rate(a_bucket{x="y", node=~"$node"}[$__rate_interval])))'
            ' / on (node) group_left b_total > 1e3 and c offset 5m or time() - max(d)')
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel or variable, PromQL) for every query in the dashboard."""
    found = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            [metric] = re.findall(r"label_values\((\w+),", variable["query"]["query"])
            found.append((variable["name"], metric))
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_query_uses_only_metrics_lpm_exports(dashboard: dict[str, Any], tmp_path: Path) -> None:
    names = exported(AgentMetrics(tmp_path).registry) | exported(Metrics().registry)
    queries = _queries(dashboard)
    assert len(queries) > 30
    for title, expr in queries:
        used = metric_names(expr)
        assert used, (title, expr)
        assert used <= names, (title, used - names)
        for values in re.findall(r'operation=~?"([^"]+)"', expr):
            assert set(values.split("|")) <= {op.value for op in Operation}, (title, values)


def test_the_dashboard_covers_what_issue_14_asks(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(expr) for _, expr in _queries(dashboard)))
    # outcomes of both halves of a migration, both halves' durations and the ingest's, the store against
    # the alert, and the collector
    assert {"lpm_checkpoint_duration_seconds_count", "lpm_restore_duration_seconds_count", "lpm_failures_total",
            "lpm_checkpoint_duration_seconds_bucket", "lpm_restore_duration_seconds_bucket",
            "lpm_ingest_duration_seconds_bucket", "lpm_store_usage_ratio", "lpm_gc_store_usage_ratio",
            "lpm_gc_freed_bytes_total", "lpm_gc_deletions_total", "lpm_gc_kept_total", "lpm_gc_errors_total"} <= used
    [usage] = [p for p in dashboard["panels"] if "80% alert" in p["title"]]
    assert [s["value"] for s in usage["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.8]


def test_panels_have_unique_ids_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
