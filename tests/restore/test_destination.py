"""The destination's pure step for a PodMigration: whether it is this node's to restore, what is read next, when
it waits, when it refuses and when it restores (the executor against a real API server: tests/realstack/
test_agent_cluster.py)."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.restore.destination import Decision, Seen, Step, decide, restored_pod_name

NODE = "node-b"


def _migration(phase: str | None = "CheckpointComplete", target: str = NODE) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "sourceNode": "node-a",
                              "podCheckpointRef": {"name": "web-0-3f2a", "namespace": "shop"}} if phase else {}
    return {"apiVersion": "lpm.my.domain/v1", "kind": "PodMigration",
            "metadata": {"name": "web-0-3f2a", "namespace": "shop", "uid": "9d1c0a77-mig"},
            "spec": {"podName": "web-0", "targetNode": target}, "status": status}


def _content(writer: str = "node-a", storage: tuple[str, str] = ("shared", "shared")) -> dict[str, Any]:
    return {"apiVersion": "lpm.my.domain/v1", "kind": "PodCheckpointContent",
            "metadata": {"name": "shop-web-0-3f2a-20261202t030000z"},
            "spec": {"podCheckpointRef": {"name": "web-0-3f2a", "namespace": "shop"}, "podNamespace": "shop",
                     "podName": "web-0", "podUID": "5e0b", "checkpointID": "20261202T030000Z", "sourceNode": writer,
                     "containers": [{"containerName": name, "storageType": kind,
                                     "artifactURI": f"lpm-store://5e0b/20261202T030000Z/{name}"}
                                    for name, kind in zip(("app", "log"), storage, strict=True)]}}


def _pod(name: str = "web-0", node: str = "node-a") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"nodeName": node, "containers": [{"name": "app"}, {"name": "log"}]},
            "status": {"phase": "Running"}}


RESTORED = _pod("web-0-restored-9d1c0a77", node=NODE)


@pytest.mark.parametrize("seen, expected", [
    # whose it is
    (Seen(_migration(target="node-c")), Decision(Step.NOTHING)),
    (Seen(_migration("Pending")), Decision(Step.NOTHING)),
    (Seen(_migration("Checkpointing")), Decision(Step.NOTHING)),  # the source's turn
    (Seen(_migration(None)), Decision(Step.NOTHING)),
    (Seen(_migration("Succeeded")), Decision(Step.NOTHING)),
    (Seen(_migration("Failed")), Decision(Step.NOTHING)),
    (Seen(_migration()), Decision(Step.READ_RESTORED)),
    (Seen(_migration("Restoring")), Decision(Step.READ_RESTORED)),
    # restored already (by this reconcile, or by an agent that stopped before recording it): the handover
    (Seen(_migration(), restored=RESTORED), Decision(Step.HAND_OVER)),
    (Seen(_migration("Restoring"), restored=RESTORED), Decision(Step.HAND_OVER)),
    # not yet: the checkpoint it restores
    (Seen(_migration(), restored=None), Decision(Step.READ_CONTENT)),
    (Seen(_migration(), restored=None, content=_content(storage=("shared", "local"))),
     Decision(Step.WAIT_LOCAL, containers=("log",))),
    (Seen(_migration(), restored=None, content=_content(storage=("local", "local"))),
     Decision(Step.WAIT_LOCAL, containers=("app", "log"))),
    (Seen(_migration(), restored=None, content=_content()), Decision(Step.BEGIN)),
    # the source pod, whose spec the restored pod takes
    (Seen(_migration(), restored=None, content=_content(), source=None),
     Decision(Step.FAIL, "source pod shop/web-0 is gone; its spec is needed to restore it")),
    (Seen(_migration(), restored=None, content=_content(writer="node-c"), source=_pod()),
     Decision(Step.FAIL, "PodCheckpointContent shop-web-0-3f2a-20261202t030000z was taken on node node-c, but "
                         "source pod shop/web-0 runs on node node-a: not restoring a checkpoint its own node did "
                         "not take")),
    (Seen(_migration(), restored=None, content=_content(), source=_pod()), Decision(Step.RESTORE)),
    (Seen(_migration("Restoring"), restored=None, content=_content(), source=_pod()), Decision(Step.RESTORE)),
])
def test_decide(seen: Seen, expected: Decision) -> None:
    assert decide(seen, NODE) == expected


def test_the_restored_pod_is_named_after_the_migration_so_a_restart_finds_it() -> None:
    assert restored_pod_name(_migration()) == "web-0-restored-9d1c0a77"
