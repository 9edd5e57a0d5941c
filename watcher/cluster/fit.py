"""Can the target node take the restored pod? The scheduler's filters, applied before the checkpoint (pure).

The restored pod is created already bound to its node (``spec.nodeName``), so the scheduler never sees it,
and the kubelet's own admission would be the first to say no — after the source was frozen and dumped
("OutOfcpu", "Predicate NodeAffinity failed"). So the source asks these questions first, as the scheduler's
filter plugins would of the spec the restored pod will have (``watcher.cluster.pins``: identity pins to
the source node dropped): NodeUnschedulable, TaintToleration, NodeAffinity (nodeSelector and required
affinity), NodeResourcesFit (requests against allocatable minus what the node's pods request, and the pod
count), NodePorts and VolumeBinding (a bound volume's node affinity). Each reason names the node and
what does not fit, in the scheduler's words where it has them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from watcher.errors import LpmError

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")
_TERMINAL = {"Succeeded", "Failed"}
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


class BadQuantity(LpmError):
    """A resource quantity that is not one."""


def quantity(text: object) -> Decimal:
    """A Kubernetes resource quantity ("100m", "1Gi", "2", "1e3") as a number of units."""
    found = _QUANTITY.match(str(text).strip())
    if found is None:
        raise BadQuantity(f"resource quantity {str(text)[:40]!r} is not a quantity")
    number, suffix = found.groups()
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise BadQuantity(f"resource quantity {str(text)[:40]!r} is not a quantity") from None
    return value * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def pod_requests(spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """What the scheduler counts for a pod: the sum over its containers, at least each init container's
    request (they run one at a time, before the others), plus the pod's overhead."""
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, Decimal(0)) + quantity(value)
    for container in spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total.get(name, Decimal(0)), quantity(value))
    for name, value in (spec.get("overhead") or {}).items():
        total[name] = total.get(name, Decimal(0)) + quantity(value)
    return total


def _tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        key, operator = toleration.get("key"), toleration.get("operator", "Equal")
        if not key and operator == "Exists":
            return True
        if key != taint.get("key"):
            continue
        if operator == "Exists" or toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def _matches(requirement: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator, values = requirement.get("key"), requirement.get("operator"), requirement.get("values") or []
    label = labels.get(key) if isinstance(key, str) else None  # label values are strings, never None
    present = label is not None
    if operator == "In":
        return present and label in values
    if operator == "NotIn":
        return not present or label not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and label is not None and len(values) == 1:
        try:
            have, bound = int(label), int(values[0])
        except ValueError:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False


def _term_matches(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    labels = node.get("metadata", {}).get("labels") or {}
    fields = {"metadata.name": node.get("metadata", {}).get("name", "")}
    expressions, field_terms = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not expressions and not field_terms:
        return False  # an empty term matches no node
    return all(_matches(e, labels) for e in expressions) and all(_matches(f, fields) for f in field_terms)


def _affinity_reason(spec: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    labels = node.get("metadata", {}).get("labels") or {}
    missing = {k: v for k, v in (spec.get("nodeSelector") or {}).items() if labels.get(k) != v}
    if missing:
        return ("node(s) didn't match Pod's node affinity/selector: nodeSelector "
                + ", ".join(f"{k}={v}" for k, v in sorted(missing.items())))
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if required and not any(_term_matches(t, node) for t in required.get("nodeSelectorTerms") or []):
        return "node(s) didn't match Pod's node affinity/selector: no required nodeSelectorTerm matches"
    return None


def _taint_reason(spec: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    tolerations = spec.get("tolerations") or []
    taints = list(node.get("spec", {}).get("taints") or [])
    if node.get("spec", {}).get("unschedulable"):
        taints.append({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"})
    for taint in taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(tolerations, taint):
            shown = taint["key"] + (f"={taint['value']}" if taint.get("value") else "")
            return f"node(s) had untolerated taint {{{shown}: {taint.get('effect')}}}"
    return None


def _resource_reason(spec: Mapping[str, Any], node: Mapping[str, Any],
                     pods: Iterable[Mapping[str, Any]]) -> str | None:
    allocatable = {k: quantity(v) for k, v in (node.get("status", {}).get("allocatable") or {}).items()}
    live = [p for p in pods if p.get("status", {}).get("phase") not in _TERMINAL]
    used: dict[str, Decimal] = {}
    for pod in live:
        for name, value in pod_requests(pod.get("spec", {})).items():
            used[name] = used.get(name, Decimal(0)) + value
    short = []
    if "pods" in allocatable and len(live) + 1 > allocatable["pods"]:
        short.append("Too many pods")
    for name, value in sorted(pod_requests(spec).items()):
        free = allocatable.get(name, Decimal(0)) - used.get(name, Decimal(0))
        if value > free:
            short.append(f"Insufficient {name} (requests {value.normalize():f}, free {free.normalize():f})")
    return "; ".join(short) or None


def _host_ports(spec: Mapping[str, Any]) -> set[tuple[str, str, int]]:
    return {(p.get("hostIP") or "0.0.0.0", p.get("protocol", "TCP"), p["hostPort"])
            for c in spec.get("containers") or [] for p in c.get("ports") or [] if p.get("hostPort")}


def _clash(one: tuple[str, str, int], other: tuple[str, str, int]) -> bool:
    """Same protocol and port on the same address, or either on every address."""
    return one[1:] == other[1:] and (one[0] == other[0] or "0.0.0.0" in (one[0], other[0]))


def _port_reason(spec: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> str | None:
    wanted = _host_ports(spec)
    if not wanted:
        return None
    taken = [port for pod in pods if pod.get("status", {}).get("phase") not in _TERMINAL
             for port in _host_ports(pod.get("spec", {}))]
    clash = sorted({want[2] for want in wanted if any(_clash(want, have) for have in taken)})
    return f"node(s) didn't have free ports for the requested pod ports: {clash}" if clash else None


def _topology_reason(volumes: Iterable[Mapping[str, Any]], node: Mapping[str, Any]) -> str | None:
    """VolumeBinding's check of bound claims: each PersistentVolume's required node affinity."""
    for volume in volumes:
        required = (volume.get("spec", {}).get("nodeAffinity") or {}).get("required")
        if required and not any(_term_matches(t, node) for t in required.get("nodeSelectorTerms") or []):
            return (f"node(s) didn't match PersistentVolume's node affinity: PersistentVolume "
                    f"{volume.get('metadata', {}).get('name')} is not reachable from this node")
    return None


def unfit(spec: Mapping[str, Any], node: Mapping[str, Any], pods_on_node: Iterable[Mapping[str, Any]],
          volumes: Iterable[Mapping[str, Any]] = ()) -> str | None:
    """Why ``node`` cannot take a pod with ``spec`` beside ``pods_on_node``, mounting the PersistentVolumes
    ``volumes`` its claims are bound to; None when it can."""
    pods = list(pods_on_node)
    for reason in (_taint_reason(spec, node), _affinity_reason(spec, node), _resource_reason(spec, node, pods),
                   _port_reason(spec, pods), _topology_reason(volumes, node)):
        if reason:
            return f"target node {node.get('metadata', {}).get('name')} cannot take the pod: {reason}"
    return None
