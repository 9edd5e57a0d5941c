"""A shared store that fills up in the middle of a migration, on real nodes (kubelet + containerd + CRIU).

The store is a filesystem of its own here (a 256 MiB tmpfs under the nodes' bindfs views), filled by the
test until a pod's checkpoint no longer fits. The source's agent reads the archive into the store while
containerd writes it, runs out of space there, and holds the whole checkpoint in node-a's local store
instead: the request succeeds saying so, with a Warning Event on the pod, the pod runs on untouched, the
destination waits, and the shared store keeps nothing of the attempt; the mover waits for room, saying so.
Once space is freed, the mover brings the checkpoint over and the migration goes on: the restored pod on
node-b finds every byte of its memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.agent import AgentProcess
from lab.cluster import RealCluster
from lab.holders import MIB, install_memhold, migrate_at_once, run_holder, verified
from lab.live import NAMESPACE, SOURCE, TARGET, host_agents
from tests.support import lpm

STORE_SIZE = 256 * MIB
ROOM = 24 * MIB
"""What the filler leaves free: less than the pod's compressed dump (memhold's is two thirds of its memory)."""
HELD = 128 * MIB


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    with RealCluster((SOURCE, TARGET), store_size=STORE_SIZE) as real:
        real.control_plane.create_namespace(NAMESPACE)
        yield real


@pytest.fixture(scope="module")
def agents(cluster: RealCluster) -> Iterator[dict[str, AgentProcess]]:
    with host_agents(cluster, "--move-interval", "1") as started:
        yield started


def _fill(store: Path, leave: int) -> Path:
    """A file taking all of ``store``'s free space but ``leave`` bytes (a dot-name: the store's readers skip it)."""
    filler = store / ".filler"
    free = os.statvfs(store).f_bavail * os.statvfs(store).f_frsize
    chunk = b"\xa5" * MIB
    with open(filler, "wb") as out:
        for _ in range(max(0, free - leave) // MIB):
            out.write(chunk)
    return filler


def _files(store: Path, skip: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and p != skip)


def _get(cluster: RealCluster, plural: str, name: str) -> dict[str, Any]:
    answer: dict[str, Any] = cluster.control_plane.admin.request(
        "GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/{plural}/{name}")
    return answer


@pytest.mark.asyncio
async def test_a_store_full_mid_checkpoint_holds_it_locally_then_the_migration_goes_on_once_there_is_room(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    install_memhold(cluster)
    await run_holder(cluster, "full-hold", HELD, SOURCE)
    store = cluster.directory / "store"
    filler = _fill(store, ROOM)
    before = _files(store, filler)
    moving = asyncio.create_task(migrate_at_once(cluster, {"full-hold": TARGET}, timeout=300))

    def explain() -> str:
        return "\n".join(f"=== {n}:\n{a.tail(25)}" for n, a in agents.items())

    # The request ends Succeeded, held locally, saying why; the migration waits for the shared store.
    deadline = time.monotonic() + 120
    while True:
        requests = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podcheckpoints")["items"]
        held = [r for r in requests if r["spec"]["podName"] == "full-hold"
                and r.get("status", {}).get("phase") in ("Succeeded", "Failed")]
        if held:
            break
        assert not moving.done(), f"the migration ended before its checkpoint was held: {moving.result()}"
        assert time.monotonic() < deadline, f"no outcome for the checkpoint; requests: {requests}\n{explain()}"
        await asyncio.sleep(0.2)
    [request] = held
    message = request["status"]["message"]
    assert request["status"]["phase"] == "Succeeded", f"{message}\n{explain()}"
    assert message.startswith("checkpoint ") and f"held locally on node {SOURCE}: the shared store is " \
        "unavailable" in message and "into the store: no space left on its filesystem" in message, message
    events = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    warned = [e for e in events
              if e["involvedObject"]["name"] == "full-hold" and e["reason"] == "CheckpointHeldLocally"]
    assert warned and warned[0]["type"] == "Warning", [e["reason"] for e in events]
    # One attempt at the shared store: the read into it as containerd wrote the archive ran out of space, and
    # the archive was then read into the local store, not again into the full one.
    [failed] = agents[SOURCE].logs("shared store failed during the checkpoint; holding it locally")
    assert "no space left" in failed["reason"], failed
    assert not agents[SOURCE].logs("reading the archive as it was written failed; reading it again"), explain()
    # Nothing of the failed attempt is left in the shared store, and no checkpoint is listed there.
    assert _files(store, filler) == before, _files(store, filler)
    listed = lpm("store", "ls", "--store", str(cluster.store_views[SOURCE]), "--json", check=True).stdout
    assert [json.loads(line) for line in listed.splitlines()] == []
    # The source pod runs on, untouched, and the content says where the checkpoint is.
    pod = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/full-hold")
    assert pod["status"]["phase"] == "Running" and pod["metadata"].get("deletionTimestamp") is None
    content = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/podcheckpointcontents/"
                                      f"{request['status']['boundContentName']}")
    assert {c["storageType"] for c in content["spec"]["containers"]} == {"local"}, content["spec"]
    assert not moving.done()
    # The store still takes the mover's probe (a small write), but not the checkpoint: the mover says it
    # waits for room, and writes nothing there meanwhile (a copy would only fill the store and fail again).
    deadline = time.monotonic() + 30
    while not (waiting := agents[SOURCE].logs("held checkpoint waits for room in the shared store")):
        assert time.monotonic() < deadline, f"the mover said nothing of the held checkpoint\n{explain()}"
        await asyncio.sleep(0.2)
    assert waiting[0]["neededBytes"] > waiting[0]["availableBytes"], waiting[0]
    assert _files(store, filler) == before, _files(store, filler)
    assert not agents[SOURCE].logs("shared store failed during a move; the local copy is kept"), explain()

    filler.unlink()  # room again: the mover brings the checkpoint over, and the restore follows
    freed = time.monotonic()
    moved = (await moving)["full-hold"]
    print(f"held locally, then moved and restored {time.monotonic() - freed:.1f} s after the store had room")
    assert moved.phase == "Succeeded", f"{moved.message}\n{explain()}"
    assert moved.restored_pod is not None
    await verified(cluster, moved.restored_pod, HELD, timeout=120)
    content = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/podcheckpointcontents/"
                                      f"{request['status']['boundContentName']}")
    assert {c["storageType"] for c in content["spec"]["containers"]} == {"shared"}, content["spec"]
    assert agents[SOURCE].logs("checkpoint moved to the shared store"), explain()
