"""Standalone restore: node-b's agent, with no cluster, polls node-b's view of the store for markers
addressed to it and imports each checkpoint into a real containerd, once, across restarts.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, make_archive
from tests.restore.containerd import binaries, run_containerd
from tests.restore.support import PODMAN_CONFIG
from tests.support import lpm
from watcher.restore.image import CRIU_NAME
from watcher.restore.standalone import plan, record_name
from watcher.store.manifest import Marker

WHEN = datetime(2026, 11, 25, 10, 11, 12, tzinfo=UTC)


def marker(cid: str, target: str | None, minute: int = 0) -> Marker:
    return Marker(checkpoint_id=cid, pod_uid=f"uid-{cid}", containers=("app",),
                  completed_at=WHEN.replace(minute=minute), target_node=target)


def test_plan_takes_this_nodes_unrecorded_checkpoints_oldest_first() -> None:
    late, early, other, untargeted, done = (marker("a", "node-b", 30), marker("b", "node-b", 10),
                                            marker("c", "node-c"), marker("d", None), marker("e", "node-b"))
    got = plan([late, early, other, untargeted, done], "node-b", {record_name(done)})
    assert [m.checkpoint_id for m in got] == ["b", "a"]  # node-b's only, oldest first; e is recorded: never again
    assert plan([], "node-b", set()) == []


@pytest.fixture
def containerd():
    with run_containerd() as daemon:
        yield daemon


def _ingest(tmp_path: Path, store: Path, name: str, target: str | None) -> tuple[str, str]:
    pod = Pod(uid=str(uuid.uuid4()), namespace="shop", name=name, container="app")
    kube_dir = tmp_path / f"kubelet-{name}"
    kube_dir.mkdir()
    archive = make_archive(kube_dir, ArchiveSpec(pod=pod, memory=1 << 20, config=PODMAN_CONFIG))
    flags = ("--target-node", target) if target else ()
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", *flags, check=True).stdout.strip()
    return pod.uid, uri.split("/")[3]


def _record(work: Path, uid: str, cid: str) -> dict:
    return json.loads((work / "imported" / f"{uid}_{cid}.json").read_text())


def _images(containerd) -> list[str]:
    # The CRI plugin adds an image ID ("sha256:<config digest>") beside each name: names only.
    return [name for name in containerd.ctr("images", "ls", "-q").stdout.split() if not name.startswith("sha256:")]


def test_checkpoints_addressed_to_this_node_become_images_once(two_views, containerd, tmp_path) -> None:
    store, view = two_views
    work = tmp_path / "work-b"
    flags = ("--node", "node-b", "--checkpoint-dir", str(tmp_path / "kubelet-b"), "--store", str(view),
             "--restore", "--restore-work-dir", str(work), "--marker-poll", "0.3",
             "--importer", "containerd", "--containerd-address", containerd.address,
             "--ctr", str(containerd.ctr_binary))
    (tmp_path / "kubelet-b").mkdir()
    # Written through node-a's view before node-b's agent starts, and while it runs.
    first = _ingest(tmp_path, store, "cart-0", "node-b")
    elsewhere = _ingest(tmp_path, store, "cart-1", "node-c")
    untargeted = _ingest(tmp_path, store, "cart-2", None)
    with AgentProcess(*flags) as agent:
        [ready] = agent.wait_logged("checkpoint images ready to restore")
        second = _ingest(tmp_path, store, "cart-3", "node-b")
        ready = agent.wait_logged("checkpoint images ready to restore", count=2)[1]
        assert ready["checkpoint"] == "/".join(second) and ready["pod"] == "shop/cart-3"
        assert agent.stop(signal.SIGTERM)[0] == 0

    expected = {f"localhost/lpm-checkpoint-shop-cart-{i}-app:{cid.lower()}"
                for i, (_, cid) in ((0, first), (3, second))}
    assert set(_images(containerd)) == expected  # nothing for node-c, nothing untargeted
    for uid, cid in (first, second):
        record = _record(work, uid, cid)
        assert record["outcome"] == "imported" and record["node"] == "node-b"
        [reference] = record["images"].values()
        digest = next(line.split()[2] for line in containerd.ctr("images", "ls").stdout.splitlines()
                      if line.startswith(reference + " "))
        assert json.loads(containerd.ctr("content", "get", digest).stdout)["annotations"][CRIU_NAME] == "app"
    for uid, cid in (elsewhere, untargeted):
        assert not (work / "imported" / f"{uid}_{cid}.json").exists()
    assert sorted(p.name for p in work.iterdir()) == ["imported"]  # scratch archives and images removed

    # A restart imports only what is new: the recorded checkpoints are not looked at again.
    third = _ingest(tmp_path, store, "cart-4", "node-b")
    with AgentProcess(*flags) as agent:
        [ready] = agent.wait_logged("checkpoint images ready to restore")
        assert ready["checkpoint"] == "/".join(third)
        agent.wait_logged("restoring checkpoints addressed to this node")
        assert agent.stop(signal.SIGTERM)[0] == 0
    assert len(agent.logs("checkpoint images ready to restore")) == 1
    assert len(_images(containerd)) == 3


def test_a_tampered_checkpoint_is_refused_once_and_the_next_one_still_comes(two_views, containerd, tmp_path) -> None:
    store, view = two_views
    work = tmp_path / "work-b"
    (tmp_path / "kubelet-b").mkdir()
    bad = _ingest(tmp_path, store, "cart-0", "node-b")
    [dump] = store.glob(f"{bad[0]}/{bad[1]}/app/dump.tar.zst")
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot on the shared volume
    dump.write_bytes(bytes(data))
    flags = ("--node", "node-b", "--checkpoint-dir", str(tmp_path / "kubelet-b"), "--store", str(view),
             "--restore", "--restore-work-dir", str(work), "--marker-poll", "0.3",
             "--importer", "containerd", "--containerd-address", containerd.address,
             "--ctr", str(containerd.ctr_binary))
    with AgentProcess(*flags) as agent:
        [refused] = agent.wait_logged("checkpoint refused; it will not be restored here")
        assert refused["checkpoint"] == "/".join(bad)
        # zstd's content checksum or the SHA-256, whichever trips first, named with the artifact.
        assert refused["reason"].startswith(f"artifact shared://{bad[0]}/{bad[1]}/app/dump.tar.zst: ")
        good = _ingest(tmp_path, store, "cart-1", "node-b")
        [ready] = agent.wait_logged("checkpoint images ready to restore")
        assert ready["checkpoint"] == "/".join(good)
        assert len(agent.logs("checkpoint refused; it will not be restored here")) == 1  # not retried each round
        assert agent.stop(signal.SIGTERM)[0] == 0
    record = _record(work, *bad)
    assert record["outcome"] == "refused" and record["reason"] == refused["reason"] and "images" not in record
    assert _images(containerd) == ["localhost/lpm-checkpoint-shop-cart-1-app:" + good[1].lower()]


def test_a_runtime_that_is_down_is_retried_not_given_up_on(two_views, tmp_path) -> None:
    store, view = two_views
    work = tmp_path / "work-b"
    (tmp_path / "kubelet-b").mkdir()
    pending = _ingest(tmp_path, store, "cart-0", "node-b")
    socket = tmp_path / "containerd.sock"  # nothing listens there
    flags = ("--node", "node-b", "--checkpoint-dir", str(tmp_path / "kubelet-b"), "--store", str(view),
             "--restore", "--restore-work-dir", str(work), "--marker-poll", "0.3",
             "--importer", "containerd", "--containerd-address", str(socket), "--ctr", str(binaries() / "ctr"))
    with AgentProcess(*flags) as agent:
        failures = agent.wait_logged("checkpoint image not imported; trying again next round", count=2)
        assert str(socket) in failures[0]["reason"]
        assert agent.stop(signal.SIGTERM)[0] == 0
    assert not (work / "imported" / f"{pending[0]}_{pending[1]}.json").exists()  # still to do


def test_a_sealed_checkpoint_restores_with_its_key_and_waits_for_it_without(two_views, containerd, tmp_path) -> None:
    """Encryption at rest (docs/encryption.md): node-a seals, node-b opens with the key the manifest names. Without
    that key node-b says so once, naming the key ID, records nothing, and restores it once restarted with it."""
    store, view = two_views
    work = tmp_path / "work-b"
    (tmp_path / "kubelet-b").mkdir()
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "k1").write_bytes(os.urandom(32))
    pod = Pod(uid=str(uuid.uuid4()), namespace="shop", name="cart-0", container="app")
    (tmp_path / "kubelet-a").mkdir()
    archive = make_archive(tmp_path / "kubelet-a", ArchiveSpec(pod=pod, memory=1 << 20, config=PODMAN_CONFIG))
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", "--target-node", "node-b",
              "--encryption-keys", str(keys), check=True).stdout.strip()
    cid = uri.split("/")[3]
    assert store.joinpath(pod.uid, cid, "app", "dump.tar.zst").read_bytes().startswith(b"LPMSEAL")
    flags = ("--node", "node-b", "--checkpoint-dir", str(tmp_path / "kubelet-b"), "--store", str(view),
             "--restore", "--restore-work-dir", str(work), "--marker-poll", "0.3",
             "--importer", "containerd", "--containerd-address", containerd.address,
             "--ctr", str(containerd.ctr_binary))
    other = tmp_path / "other-keys"
    other.mkdir(mode=0o700)
    (other / "k2").write_bytes(os.urandom(32))
    with AgentProcess(*flags, "--encryption-keys", str(other)) as agent:
        [lacking] = agent.wait_logged("checkpoint sealed with a key this node does not hold; restart the agent "
                                      "with the key to restore it")
        assert lacking["keyID"] == "k1" and lacking["checkpoint"] == f"{pod.uid}/{cid}"
        time.sleep(1.5)  # several more polls: said once, not every round
        assert agent.stop(signal.SIGTERM)[0] == 0
    assert len(agent.logs("checkpoint sealed with a key this node does not hold; restart the agent with the key "
                          "to restore it")) == 1
    assert not (work / "imported" / f"{pod.uid}_{cid}.json").exists() and _images(containerd) == []

    with AgentProcess(*flags, "--encryption-keys", str(keys)) as agent:
        [ready] = agent.wait_logged("checkpoint images ready to restore")
        assert ready["checkpoint"] == f"{pod.uid}/{cid}"
        assert agent.stop(signal.SIGTERM)[0] == 0
    assert _record(work, pod.uid, cid)["outcome"] == "imported"
    assert _images(containerd) == [f"localhost/lpm-checkpoint-shop-cart-0-app:{cid.lower()}"]
