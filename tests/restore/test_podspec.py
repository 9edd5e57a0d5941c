"""The restored pod's spec: bound to the destination, off the source's node identity, every other rule kept."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.restore.pipeline import RestoreRefused
from watcher.restore.podspec import restored_spec

IMAGES = {"app": "localhost/lpm-checkpoint-app:1"}


def _spec(**extra: Any) -> dict[str, Any]:
    return {"containers": [{"name": "app", "image": "busybox:1"}], "nodeName": "node-a", **extra}


def _required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


def _host(*nodes: str) -> dict[str, Any]:
    return {"key": "kubernetes.io/hostname", "operator": "In", "values": list(nodes)}


ZONE = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]}


def test_bound_to_the_destination_on_checkpoint_images() -> None:
    spec = restored_spec(_spec(schedulingGates=[{"name": "wait"}]), "node-b", IMAGES)
    assert spec["nodeName"] == "node-b" and "schedulingGates" not in spec
    assert spec["containers"] == [{"name": "app", "image": IMAGES["app"]}]


def test_the_source_spec_is_not_changed() -> None:
    source = _spec(nodeSelector={"kubernetes.io/hostname": "node-a"})
    restored_spec(source, "node-b", IMAGES)
    assert source == _spec(nodeSelector={"kubernetes.io/hostname": "node-a"})


@pytest.mark.parametrize("selector, kept", [
    ({"kubernetes.io/hostname": "node-a"}, None),
    ({"kubernetes.io/hostname": "node-a", "disk": "ssd"}, {"disk": "ssd"}),
    ({"disk": "ssd"}, {"disk": "ssd"}),
])
def test_node_selector_loses_the_hostname_only(selector: dict[str, str], kept: dict[str, str] | None) -> None:
    assert restored_spec(_spec(nodeSelector=selector), "node-b", IMAGES).get("nodeSelector") == kept


@pytest.mark.parametrize("affinity, kept", [
    (_required({"matchExpressions": [_host("node-a")]}), {"nodeAffinity": {}}),
    (_required({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}),
     {"nodeAffinity": {}}),
    (_required({"matchExpressions": [_host("node-a"), ZONE]}), _required({"matchExpressions": [ZONE]})),
    (_required({"matchExpressions": [ZONE]}, {"matchExpressions": [_host("node-a")]}), {"nodeAffinity": {}}),
    (_required({"matchExpressions": [ZONE]}), _required({"matchExpressions": [ZONE]})),
    (_required({}), _required({})),  # matched no node before; still matches none
], ids=["hostname", "name-field", "hostname-and-zone", "alternative-hostname", "zone", "empty-term"])
def test_required_affinity_loses_node_identity_only(affinity: dict[str, Any], kept: dict[str, Any]) -> None:
    assert restored_spec(_spec(affinity=affinity), "node-b", IMAGES)["affinity"] == kept


def test_a_container_without_a_checkpoint_is_refused() -> None:
    with pytest.raises(RestoreRefused, match="no container sidecar"):
        restored_spec({"containers": [{"name": "app"}, {"name": "sidecar"}]}, "node-b", IMAGES)
