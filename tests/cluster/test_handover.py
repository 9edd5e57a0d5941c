"""The handover's pure steps, destination's and source's: when the restored pod takes the source's place, in
turns (the real ReplicaSet controller's side of it is in tests/realstack/test_workloads.py)."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.cluster.handover import (
    HELD,
    HELD_ANNOTATION,
    Handover,
    SourceStep,
    Step,
    advance,
    decide,
    decide_source,
    is_held,
    release_patch,
    stuck,
)

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


R, SR, A, SRM = Handover.RESTORED_READY, Handover.SOURCE_RELEASED, Handover.ADOPTED, Handover.SOURCE_REMOVED


@pytest.mark.parametrize("restored, source, retain, state, step", [
    (_restored(phase="Pending", ready=False), _source(), False, None, Step.WAIT),
    (_restored(ready=False), _source(), False, None, Step.WAIT),  # running, not Ready: the ReplicaSet would remove it
    (_restored(phase="Failed", ready=False), _source(), False, None, Step.RESTORED_FAILED),
    (_restored(), _source(), False, None, Step.ASK_SOURCE),
    (_restored(), _source(owned=False), False, None, Step.ASK_SOURCE),
    (_restored(), _source(), False, R, Step.WAIT_FOR_SOURCE),  # the budget may be refusing
    (_restored(), _source(), False, SR, Step.ADOPT),
    (_restored(), None, False, None, Step.DISCARD),  # a scale-down or rollout took the source meanwhile
    (_restored(), None, False, R, Step.DISCARD),
    (_restored(), _source(terminating=True), False, SR, Step.DISCARD),
    (_restored(held=False), _source(), False, SR, Step.MARK_ADOPTED),  # released, not recorded (a restart)
    (_restored(held=False), _source(), False, A, Step.WAIT_FOR_SOURCE),
    (_restored(held=False), _source(), False, SRM, Step.DONE),
    (_restored(held=False), _source(terminating=True), False, A, Step.DONE),  # the ReplicaSet was quicker
    (_restored(held=False), None, False, A, Step.DONE),
    (_restored(), _source(), True, None, Step.DONE),  # retained: a ReplicaSet's copy stays held
    (_restored(), _source(owned=False), True, None, Step.ADOPT),  # a bare pod's copy joins beside it
    (_restored(held=False), _source(owned=False), True, None, Step.DONE),
])
def test_decide(restored: dict[str, Any], source: dict[str, Any] | None, retain: bool, state: Handover | None,
                step: Step) -> None:
    assert decide(restored, source, retain, state) is step


@pytest.mark.parametrize("source, retain, state, step", [
    (_source(), False, None, None),  # the destination has not asked
    (_source(), False, R, SourceStep.RELEASE),
    (None, False, R, None),  # gone before the release: the destination discards its copy
    (_source(terminating=True), False, R, None),
    (_source(), False, SR, None),  # the destination's turn
    (_source(), False, A, SourceStep.REMOVE),
    (None, False, A, SourceStep.REMOVE),  # the ReplicaSet removed it: recorded as removed
    (_source(), False, SRM, None),
    (_source(), True, R, None),  # retainOriginalPod: the source's agent never touches it
])
def test_decide_source(source: dict[str, Any] | None, retain: bool, state: Handover | None,
                       step: SourceStep | None) -> None:
    assert decide_source(source, retain, state) is step


def test_the_handover_only_moves_forward_and_only_while_restoring() -> None:
    status = {"phase": "Restoring", "handover": "SourceReleased", "message": "m"}
    assert advance(dict(status), R, "late") is None  # a reconcile that read an older status
    assert advance(dict(status), A, "adopted") == {"phase": "Restoring", "handover": "Adopted", "message": "adopted"}
    assert advance({"phase": "Restoring"}, R, "ready") == {"phase": "Restoring", "handover": "RestoredReady",
                                                           "message": "ready"}
    assert advance({"phase": "Failed", "message": "x"}, SRM, "removed") is None


def test_a_restored_container_the_kubelet_cannot_create_fails_the_handover() -> None:
    restored = _restored(phase="Pending", ready=False)
    restored["status"]["containerStatuses"] = [{"name": "hold", "state": {"waiting": {
        "reason": "CreateContainerError", "message": "parent snapshot sha256:58 does not exist: not found"}}}]
    assert decide(restored, _source(), False, None) is Step.RESTORED_FAILED
    assert stuck(restored) == ("container hold: CreateContainerError: "
                               "parent snapshot sha256:58 does not exist: not found")
    restored["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    assert decide(restored, _source(), False, None) is Step.WAIT and stuck(restored) is None


def test_release_gives_the_sources_labels_and_controller_and_lifts_the_hold() -> None:
    patch = release_patch(_source(), "web-migration-1")
    assert patch["metadata"]["labels"] == {"app": "web", "pod-template-hash": "5d4",
                                           "lpm.my.domain/migration": "web-migration-1"}
    assert patch["metadata"]["annotations"] == {HELD_ANNOTATION: None}
    assert patch["metadata"]["ownerReferences"] == [{k: v for k, v in RS.items() if k != "blockOwnerDeletion"}]
    assert not is_held({"metadata": {"annotations": {}}})


def test_a_bare_pods_release_names_no_owner() -> None:
    assert "ownerReferences" not in release_patch(_source(owned=False), "m")["metadata"]
