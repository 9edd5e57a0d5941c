"""The handover's pure step: when the restored pod takes the source's place (the real ReplicaSet controller's
side of it is in tests/realstack/test_workloads.py)."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.restore.handover import HELD, HELD_ANNOTATION, Step, decide, is_held, release_patch, stuck

RS = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4", "uid": "rs-uid", "controller": True,
      "blockOwnerDeletion": True}


def _restored(phase: str = "Running", ready: bool = True, held: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": "web-restored", "annotations": {HELD_ANNOTATION: HELD} if held else {}},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": str(ready)}]}}


def _source(owned: bool = True, terminating: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "web", "labels": {"app": "web", "pod-template-hash": "5d4"}}
    if owned:
        metadata["ownerReferences"] = [dict(RS)]
    if terminating:
        metadata["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": metadata}


@pytest.mark.parametrize("restored, source, retain, step", [
    (_restored(phase="Pending", ready=False), _source(), False, Step.WAIT),
    (_restored(ready=False), _source(), False, Step.WAIT),  # running, not Ready: the ReplicaSet would remove it
    (_restored(phase="Failed", ready=False), _source(), False, Step.RESTORED_FAILED),
    (_restored(), _source(), False, Step.RELEASE),
    (_restored(), _source(owned=False), False, Step.RELEASE),
    (_restored(), None, False, Step.DISCARD),  # a scale-down or rollout took the source meanwhile
    (_restored(), _source(terminating=True), False, Step.DISCARD),
    (_restored(held=False), _source(), False, Step.REMOVE_SOURCE),  # released; the source still there
    (_restored(held=False), _source(terminating=True), False, Step.DONE),
    (_restored(held=False), None, False, Step.DONE),
    (_restored(), _source(), True, Step.DONE),  # retained: a ReplicaSet's copy stays held
    (_restored(), _source(owned=False), True, Step.RELEASE),  # a bare pod's copy joins beside it
    (_restored(held=False), _source(owned=False), True, Step.DONE),
])
def test_decide(restored: dict[str, Any], source: dict[str, Any] | None, retain: bool, step: Step) -> None:
    assert decide(restored, source, retain) is step


def test_a_restored_container_the_kubelet_cannot_create_fails_the_handover() -> None:
    restored = _restored(phase="Pending", ready=False)
    restored["status"]["containerStatuses"] = [{"name": "hold", "state": {"waiting": {
        "reason": "CreateContainerError", "message": "parent snapshot sha256:58 does not exist: not found"}}}]
    assert decide(restored, _source(), False) is Step.RESTORED_FAILED
    assert stuck(restored) == ("container hold: CreateContainerError: "
                               "parent snapshot sha256:58 does not exist: not found")
    restored["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    assert decide(restored, _source(), False) is Step.WAIT and stuck(restored) is None


def test_release_gives_the_sources_labels_and_controller_and_lifts_the_hold() -> None:
    patch = release_patch(_source(), "web-migration-1")
    assert patch["metadata"]["labels"] == {"app": "web", "pod-template-hash": "5d4",
                                           "lpm.my.domain/migration": "web-migration-1"}
    assert patch["metadata"]["annotations"] == {HELD_ANNOTATION: None}
    assert patch["metadata"]["ownerReferences"] == [{k: v for k, v in RS.items() if k != "blockOwnerDeletion"}]
    assert not is_held({"metadata": {"annotations": {}}})


def test_a_bare_pods_release_names_no_owner() -> None:
    assert "ownerReferences" not in release_patch(_source(owned=False), "m")["metadata"]
