"""Races between agents on one shared store are reported as what they are, not as store failures.

"Two agents" are two real ``lpm agent`` processes on one store directory: the same node's old and new
agent during a DaemonSet rollout (both watch the same kubelet directory, share the node's probe file and
race for the same checkpoints' markers).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, make_archive
from lab.cluster import store_views
from tests.support import REPO
from watcher.ingest import service
from watcher.store import fsio, transfer
from watcher.zstream import CompressionSettings


def _agent(kube_dir: Path, store: Path, local: Path, node: str = "node-a") -> AgentProcess:
    return AgentProcess("--node", node, "--checkpoint-dir", str(kube_dir), "--store", str(store),
                        "--local-store", str(local), "--debounce", "0.3", "--move-interval", "0.3")


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and ".ingest" not in p.parts) if path.exists() else []


@contextlib.contextmanager
def _views(tmp_path: Path, nodes: tuple[str, str]) -> Iterator[tuple[Path, Path, Path]]:
    """(the store, node 0's view of it, node 1's): one bindfs view per node as in the lab's clusters (two
    NFS clients, in effect), or the directory itself for one node's two agents."""
    if nodes[0] == nodes[1]:
        yield tmp_path / "store", tmp_path / "store", tmp_path / "store"
        return
    if os.geteuid() != 0 or shutil.which("bindfs") is None:
        raise AssertionError("this test needs root and bindfs (scripts/setup installs it; CI runs as root)")
    with store_views(tmp_path, nodes) as views:
        yield tmp_path / "store", views[nodes[0]], views[nodes[1]]


@pytest.mark.parametrize("nodes", [("node-a", "node-b"), ("node-a", "node-a")],
                         ids=["two nodes", "one node's old and new agent"])
def test_two_agents_racing_for_the_same_markers_neither_holds_a_copy_locally(kube_dir, tmp_path, nodes):
    """Both agents ingest the same archives at the same moment: one writes each marker, the other finds
    it there (a duplicate). Two nodes each see the store through a view of their own and have a probe
    file each; one node's two agents share the directory and their probe file."""
    pods = [Pod(uid=f"00000000-0000-4000-8000-{n:012d}", name=f"race-{n}") for n in range(30)]
    local_a, local_b = tmp_path / "local-a", tmp_path / "local-b"
    with _views(tmp_path, nodes) as (store, view_a, view_b), \
            _agent(kube_dir, view_a, local_a, nodes[0]) as a, _agent(kube_dir, view_b, local_b, nodes[1]) as b:
        a.wait_logged("agent starting")
        b.wait_logged("agent starting")
        for pod in pods:  # both agents see each archive at once and ingest them in the same order
            make_archive(kube_dir, ArchiveSpec(pod=pod, memory=1 << 20))
        for agent in (a, b):
            agent.wait_for(lambda lines: sum(line.get("msg") in ("archive ingested", "archive already in the store",
                                                                  "ingest failed") for line in lines) >= len(pods))
        for agent in (a, b):
            reasons = [line["reason"] for line in agent.logs("shared store unavailable; checkpoints are held in the "
                                                             "local store") + agent.logs("ingest failed")]
            assert reasons == []
            assert not agent.logs("shared store failed during the ingest; holding the checkpoint locally")
            assert {line["storageType"] for line in agent.logs("archive ingested")
                    + agent.logs("archive already in the store")} == {"shared"}
        assert _files(local_a) == [] and _files(local_b) == []
        # Each checkpoint once in the shared store, complete.
        markers = sorted(store.glob("*/*/.checkpoint-complete"))
        assert [m.parent.parent.name for m in markers] == [pod.uid for pod in pods]


_PROBER = """
import asyncio, json, sys
from pathlib import Path
from watcher.stores import Stores
stores = Stores(Path(sys.argv[1]), Path(sys.argv[2]), "node-a")
async def probes():
    return [p for _ in range(int(sys.argv[3])) for p in (await stores.probe(), stores.local_writable())]
print(json.dumps([p for p in asyncio.run(probes()) if p is not None]))
"""


def test_one_nodes_two_agents_sharing_its_probe_file_both_find_the_store_available(tmp_path):
    """The probe file is one per node, so the node's old and new agent (a rollout) write the same one, in the
    shared store and in the node's local store: one removing it while the other is between its write and its
    own removal is no failure of either store."""
    shared, local = tmp_path / "shared", tmp_path / "local"
    shared.mkdir(mode=0o700)
    probers = [subprocess.Popen([sys.executable, "-c", _PROBER, str(shared), str(local), "1000"],
                                stdout=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
    problems = [json.loads(p.communicate(timeout=120)[0]) for p in probers]
    assert [p.returncode for p in probers] == [0, 0]
    assert problems == [[], []]
    assert list(shared.iterdir()) == list(local.iterdir()) == []  # and no probe file is left behind


def test_write_once_never_replaces_what_another_writer_published(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert fsio.write_once(fd, ".checkpoint-complete", b"first", "checkpoint x")
        assert not fsio.write_once(fd, ".checkpoint-complete", b"second", "checkpoint x")
    finally:
        os.close(fd)
    assert [p.name for p in tmp_path.iterdir()] == [".checkpoint-complete"]  # no temp file left
    assert (tmp_path / ".checkpoint-complete").read_bytes() == b"first"


def test_a_symlink_planted_for_the_next_checkpoint_is_refused_and_that_checkpoint_held_locally(kube_dir, store,
                                                                                               tmp_path):
    """Another node (any node writes the shared store) plants a symlink where this pod's checkpoints go. The
    store itself still takes writes: this checkpoint alone is held in the local store, once, not retried
    against the link, and moves over once the link is gone."""
    pod = Pod(container="app")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.mkdir(mode=0o700)
    (store / pod.uid).symlink_to(elsewhere)
    local = tmp_path / "local"
    with _agent(kube_dir, store, local) as agent:
        agent.wait_logged("agent starting")
        make_archive(kube_dir, ArchiveSpec(pod=pod, memory=1 << 20))
        [refused] = agent.wait_logged("shared store refused the checkpoint; holding it locally", timeout=15)
        assert refused["reason"].endswith(f"{pod.uid} is a symlink, refused"), refused
        [held] = agent.wait_logged("archive ingested")
        assert held["storageType"] == "local" and held["podUID"] == pod.uid
        agent.wait_logged("local checkpoint cannot be moved", count=2)  # tried each round, without copying first
        assert list(elsewhere.iterdir()) == []  # nothing written through the link
        assert not agent.logs("shared store unavailable; checkpoints are held in the local store")
        assert not agent.logs("ingest failed")
        assert len(agent.logs("archive ingested")) == 1
        (store / pod.uid).unlink()
        agent.wait_logged("checkpoint moved to the shared store")
    assert (store / pod.uid / held["checkpointID"] / ".checkpoint-complete").is_file()
    assert _files(local) == []


def test_two_movers_racing_to_move_the_same_held_checkpoints_both_succeed(kube_dir, tmp_path):
    """One node's old and new agent (a rollout) share its local store, so both movers copy the same held
    checkpoints into the shared store at once: one commits each, the other finds it there, the same."""
    local, shared = tmp_path / "local", tmp_path / "shared"
    local_fd, shared_fd = fsio.open_root(local, create=True), fsio.open_root(shared, create=True)
    try:
        for n in range(12):
            pod = Pod(uid=f"00000000-0000-4000-8000-{n:012d}", name=f"race-{n}")
            service.ingest_archive(local_fd, make_archive(kube_dir, ArchiveSpec(pod=pod, memory=1 << 20)), "node-a",
                                   CompressionSettings(), threading.Event(), datetime.now(UTC))
        held = transfer.local_checkpoints(local_fd)
        start = threading.Barrier(2)

        def mover() -> list[bool]:
            start.wait()
            return [transfer.copy_to_shared(local_fd, shared_fd, "node-a", c, threading.Event()) for c in held]

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            copied = [f.result() for f in [pool.submit(mover), pool.submit(mover)]]
        assert [a + b for a, b in zip(*copied, strict=True)] == [1] * len(held)  # each copied by one mover only
        for checkpoint in held:
            transfer.shared_copy_complete(shared_fd, checkpoint)
    finally:
        os.close(local_fd)
        os.close(shared_fd)
