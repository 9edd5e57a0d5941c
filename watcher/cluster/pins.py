"""A pod's spec without what pins it to its current node (pure; table-tested in tests/restore/test_podspec.py).

The source may be pinned to its node by identity — a ``nodeSelector`` or a required node affinity on
``kubernetes.io/hostname``, or a node-affinity field on ``metadata.name`` (often so that it landed on the
node the migration now moves it from). The destination kubelet checks both before it starts a pod bound to
it, and rejects the restored pod ("Predicate NodeAffinity failed"), so those are dropped: the migration is
the operator's explicit choice of node. Every other constraint stays: the source checks them against the
target before the checkpoint (``watcher.cluster.fit``) and the kubelet still enforces them. Scheduling gates
go too: the API refuses them on a pod created already bound.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

HOSTNAME_LABEL = "kubernetes.io/hostname"
_NAME_FIELD = "metadata.name"


def unpinned(source: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``source`` (a pod's spec) without its node-identity pins and scheduling gates."""
    spec = copy.deepcopy(dict(source))
    spec.pop("schedulingGates", None)
    selector = spec.get("nodeSelector") or {}
    selector.pop(HOSTNAME_LABEL, None)
    if not selector:
        spec.pop("nodeSelector", None)
    _drop_identity_affinity(spec)
    return spec


def _drop_identity_affinity(spec: dict[str, Any]) -> None:
    node_affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return
    original = required.get("nodeSelectorTerms") or []
    terms = [_without_identity(term) for term in original]
    if any(before and not after for before, after in zip(original, terms, strict=True)):
        # The terms are alternatives: one that only named nodes now allows any node, and so does the whole
        # requirement (left empty, the term would instead match no node at all).
        del node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    else:
        required["nodeSelectorTerms"] = terms


def _without_identity(term: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in term.items() if k not in ("matchExpressions", "matchFields")}
    expressions = [e for e in term.get("matchExpressions") or [] if e.get("key") != HOSTNAME_LABEL]
    fields = [f for f in term.get("matchFields") or [] if f.get("key") != _NAME_FIELD]
    if expressions:
        kept["matchExpressions"] = expressions
    if fields:
        kept["matchFields"] = fields
    return kept
