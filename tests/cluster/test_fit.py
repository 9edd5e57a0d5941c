"""The scheduler's filters, asked of the target before the checkpoint (the real scheduler's verdicts on the
same cases are in tests/realstack/test_workloads.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from watcher.cluster.fit import BadQuantity, pod_requests, quantity, unfit


@pytest.mark.parametrize("text, value", [
    ("100m", Decimal("0.1")), ("2", Decimal(2)), ("1Gi", Decimal(2**30)), ("500M", Decimal(500 * 10**6)),
    ("1e3", Decimal(1000)), ("1.5Ki", Decimal(1536)), ("10n", Decimal("1e-8")),
])
def test_quantities_read_as_the_api_writes_them(text: str, value: Decimal) -> None:
    assert quantity(text) == value


@pytest.mark.parametrize("text", ["", "1Zi", "ten", "1..2", "1 Gi"])
def test_a_quantity_that_is_not_one_is_named(text: str) -> None:
    with pytest.raises(BadQuantity, match="is not a quantity"):
        quantity(text)


def _node(cpu: str = "2", memory: str = "4Gi", pods: str = "110", labels: dict[str, str] | None = None,
          taints: list[dict[str, str]] | None = None, unschedulable: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": "node-b", "labels": {"kubernetes.io/hostname": "node-b", **(labels or {})}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods}}}


def _spec(cpu: str | None = None, memory: str | None = None, **extra: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    return {"containers": [{"name": "c", "resources": {"requests": requests}}], **extra}


def _running(spec: dict[str, Any], phase: str = "Running") -> dict[str, Any]:
    return {"spec": spec, "status": {"phase": phase}}


def test_requests_sum_containers_take_the_largest_init_container_and_add_overhead() -> None:
    spec = {"containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}},
                           {"name": "b", "resources": {"requests": {"cpu": "200m", "memory": "1Mi"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
            "overhead": {"cpu": "50m"}}
    assert pod_requests(spec) == {"cpu": Decimal("1.05"), "memory": Decimal(2**20)}


def test_a_pod_that_fits_is_let_through() -> None:
    assert unfit(_spec("500m", "1Gi"), _node(), [_running(_spec("1", "2Gi"))]) is None


@pytest.mark.parametrize("spec, node, others, says", [
    (_spec("1500m"), _node(), [_running(_spec("1"))], "Insufficient cpu (requests 1.5, free 1)"),
    (_spec(memory="3Gi"), _node(), [_running(_spec(memory="2Gi"))], "Insufficient memory"),
    (_spec(), _node(pods="1"), [_running(_spec())], "Too many pods"),
    (_spec(), _node(taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]), [],
     "node(s) had untolerated taint {dedicated=db: NoSchedule}"),
    (_spec(), _node(unschedulable=True), [], "untolerated taint {node.kubernetes.io/unschedulable: NoSchedule}"),
    (_spec(nodeSelector={"disk": "ssd"}), _node(), [],
     "didn't match Pod's node affinity/selector: nodeSelector disk=ssd"),
    (_spec(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}]}}}),
     _node(labels={"zone": "z2"}), [], "no required nodeSelectorTerm matches"),
    (_spec(**{"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}), _node(),
     [_running({"containers": [{"name": "x", "ports": [{"containerPort": 1, "hostPort": 8080}]}]})],
     "didn't have free ports for the requested pod ports: [8080]"),
])
def test_what_the_scheduler_would_refuse_is_refused_naming_it(spec: dict[str, Any], node: dict[str, Any],
                                                              others: list[dict[str, Any]], says: str) -> None:
    reason = unfit(spec, node, others)
    assert reason is not None and reason.startswith("target node node-b cannot take the pod: "), reason
    assert says in reason


@pytest.mark.parametrize("spec, node", [
    (_spec(tolerations=[{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]),
     _node(taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])),
    (_spec(tolerations=[{"operator": "Exists"}]), _node(taints=[{"key": "any", "effect": "NoExecute"}])),
    (_spec(), _node(taints=[{"key": "soft", "effect": "PreferNoSchedule"}])),
    (_spec(nodeSelector={"disk": "ssd"}), _node(labels={"disk": "ssd"})),
    (_spec(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]},
        {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]}]}]}}}), _node(labels={"gen": "4"})),
])
def test_what_the_scheduler_would_allow_is_allowed(spec: dict[str, Any], node: dict[str, Any]) -> None:
    assert unfit(spec, node, []) is None


def test_finished_pods_hold_no_resources_or_ports() -> None:
    done = _running({"containers": [{"name": "x", "resources": {"requests": {"cpu": "2"}},
                                     "ports": [{"containerPort": 1, "hostPort": 8080}]}]}, phase="Succeeded")
    spec = _spec("2", **{"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}},
                                         "ports": [{"containerPort": 80, "hostPort": 8080}]}]})
    assert unfit(spec, _node(), [done]) is None


def test_a_bound_volume_the_target_cannot_reach_is_a_conflict() -> None:
    volume = {"metadata": {"name": "pv-a"}, "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a"]}]}]}}}}
    reason = unfit(_spec(), _node(), [], [volume])
    assert reason is not None and "didn't match PersistentVolume's node affinity: PersistentVolume pv-a" in reason
    anywhere = {"metadata": {"name": "nfs"}, "spec": {}}
    assert unfit(_spec(), _node(), [], [anywhere]) is None
