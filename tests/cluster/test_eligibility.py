"""Which pods may migrate at all, decided before any checkpoint: their owner and their volumes."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.cluster.eligibility import claim_names, owner_refusal, volume_refusal


def _pod(owner: tuple[str, str] | None = None, annotations: dict[str, str] | None = None,
         volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "web", "namespace": "ns", "annotations": annotations or {}}
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": owner[0], "kind": owner[1], "name": "owner", "uid": "u",
                                        "controller": True}]
    return {"metadata": metadata, "spec": {"containers": [{"name": "c"}], "volumes": volumes or []}}


@pytest.mark.parametrize("owner", [None, ("apps/v1", "ReplicaSet")])
def test_bare_pods_and_replica_set_pods_may_migrate(owner: tuple[str, str] | None) -> None:
    assert owner_refusal(_pod(owner)) is None


@pytest.mark.parametrize("owner, says", [
    (("apps/v1", "StatefulSet"), "a StatefulSet's pod keeps its name, hostname and claims"),
    (("batch/v1", "Job"), "the Job controller would count the source's removal as a failed pod"),
    (("apps/v1", "DaemonSet"), "a DaemonSet's pod belongs to its node"),
    (("v1", "Node"), "a static pod belongs to its node's kubelet"),
    (("argoproj.io/v1alpha1", "Rollout"), "lpm hands restored pods over to ReplicaSets only"),
])
def test_pods_of_other_controllers_are_refused_saying_why(owner: tuple[str, str], says: str) -> None:
    reason = owner_refusal(_pod(owner))
    assert reason is not None and reason.startswith(f"pods owned by {owner[1]} owner cannot migrate: "), reason
    assert says in reason


def test_an_owner_that_is_not_the_controller_does_not_count() -> None:
    pod = _pod()
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u"}]
    assert owner_refusal(pod) is None


def test_a_static_pods_mirror_is_refused_even_without_an_owner() -> None:
    assert "static pod's mirror" in (owner_refusal(_pod(annotations={"kubernetes.io/config.mirror": "x"})) or "")


def _claim(*modes: str) -> dict[str, Any]:
    return {"spec": {"accessModes": list(modes)}, "status": {"accessModes": list(modes)}}


PORTABLE = [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "token", "projected": {"sources": []}},
            {"name": "s", "secret": {"secretName": "s"}}, {"name": "d", "downwardAPI": {"items": []}},
            {"name": "shared", "persistentVolumeClaim": {"claimName": "rwx"}},
            {"name": "ro", "persistentVolumeClaim": {"claimName": "rox"}}]


def test_volumes_the_api_fills_and_shared_claims_migrate() -> None:
    pod = _pod(volumes=PORTABLE)
    assert claim_names(pod) == ["rwx", "rox"]
    assert volume_refusal(pod, {"rwx": _claim("ReadWriteMany"), "rox": _claim("ReadOnlyMany")}) is None


@pytest.mark.parametrize("volume, claims, says", [
    ({"name": "cache", "emptyDir": {}}, {}, "cache (emptyDir: its data stays on the source node)"),
    ({"name": "logs", "hostPath": {"path": "/var/log"}}, {}, "logs (hostPath: its data stays on the source node)"),
    ({"name": "e", "ephemeral": {"volumeClaimTemplate": {}}}, {}, "e (ephemeral: its data stays"),
    ({"name": "data", "persistentVolumeClaim": {"claimName": "d0"}}, {"d0": _claim("ReadWriteOnce")},
     "data (claim d0 is ReadWriteOnce: only the source node may mount it)"),
    ({"name": "data", "persistentVolumeClaim": {"claimName": "d0"}}, {"d0": _claim("ReadWriteOncePod")},
     "claim d0 is ReadWriteOncePod"),
    ({"name": "data", "persistentVolumeClaim": {"claimName": "gone"}}, {"gone": None}, "claim gone does not exist"),
])
def test_volumes_whose_state_stays_behind_are_refused_by_name(volume: dict[str, Any], claims: dict[str, Any],
                                                              says: str) -> None:
    reason = volume_refusal(_pod(volumes=[*PORTABLE, volume]),
                            {"rwx": _claim("ReadWriteMany"), "rox": _claim("ReadOnlyMany"), **claims})
    assert reason is not None and reason.startswith("volumes a checkpoint cannot carry: ")
    assert says in reason and "cfg" not in reason and "shared" not in reason
