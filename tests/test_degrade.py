"""Graceful degradation, standalone: the shared store goes away, checkpoints are held on the node, and
come back to the shared store once it does. Real agent processes on real directories."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, make_archive
from tests.support import lpm
from watcher.store import catalog, fsio, transfer
from watcher.store.catalog import Checkpoint


def agent(kube_dir, store, local, *extra):
    return AgentProcess("--node", "node-a", "--checkpoint-dir", str(kube_dir), "--store", str(store),
                        "--local-store", str(local), "--debounce", "0.3", "--move-interval", "0.3", *extra)


def listed(store):
    return [json.loads(line) for line in lpm("store", "ls", "--store", str(store), "--json",
                                             check=True).stdout.splitlines()]


def metric(proc, name):
    [served] = proc.wait_logged("health endpoints served")
    with urllib.request.urlopen(f"http://127.0.0.1:{served['port']}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_store_removed_then_back_holds_the_checkpoint_locally_then_moves_it(kube_dir, store, tmp_path):
    local = tmp_path / "local-store"
    with agent(kube_dir, store, local) as proc:
        proc.wait_logged("agent starting")
        store.rename(tmp_path / "store-gone")  # the mount is gone from under the agent (atomically: it writes)
        archive = make_archive(kube_dir, ArchiveSpec(pod=Pod(container="app"), memory=3 << 20))
        [held] = proc.wait_logged("archive ingested")
        assert held["storageType"] == "local"
        assert held["artifactURI"] == f"file://{local}/{held['podUID']}/{held['checkpointID']}/app/dump.tar.zst"
        [down] = proc.wait_logged("shared store unavailable; checkpoints are held in the local store")
        assert str(store) in down["reason"] and "No such file or directory" in down["reason"]
        assert metric(proc, "lpm_shared_store_available") == 0
        assert metric(proc, "lpm_local_checkpoints") == 1
        assert metric(proc, "lpm_local_checkpoint_bytes") == held["compressedBytes"]
        assert metric(proc, "lpm_checkpoints_held_locally_total") == 1
        # Listed with the address it is read by, and readable by it: the kubelet's archive byte for byte.
        [entry] = [json.loads(line) for line in lpm("store", "ls", "--store", str(local), "--local", "--json",
                                                     check=True).stdout.splitlines()]
        assert entry["artifactURIs"] == {"app": held["artifactURI"]}
        out = tmp_path / "local.tar"
        lpm("store", "get", held["artifactURI"], "--local-store", str(local), "-o", str(out), check=True)
        assert out.read_bytes() == archive.read_bytes()

        store.mkdir(mode=0o700)  # the store is back (a new directory: the agent follows the path)
        [moved] = proc.wait_logged("checkpoint moved to the shared store")
        assert moved["checkpoint"] == f"{held['podUID']}/{held['checkpointID']}"
        assert metric(proc, "lpm_shared_store_available") == 1
        assert metric(proc, "lpm_local_checkpoints") == 0
        assert metric(proc, "lpm_checkpoints_moved_to_shared_total") == 1
        assert proc.stop()[0] == 0
    [entry] = listed(store)
    assert entry["checkpointID"] == held["checkpointID"]
    out = tmp_path / "shared.tar"
    lpm("store", "get", entry["artifactURIs"]["app"], "--store", str(store), "-o", str(out), check=True)
    assert out.read_bytes() == archive.read_bytes()
    # The local copy is gone, checkpoint and ledger both; the shared ledger knows the archive now.
    assert [p for p in files_under(local) if not p.startswith(".ingest/node-a/staging")] == []
    [record] = [json.loads((store / p).read_text()) for p in files_under(store) if "/ledger/" in p]
    assert (record["archive"], record["checkpointID"], record["verified"]) == (archive.name, held["checkpointID"],
                                                                               True)


def complete_ids(root):
    fd = fsio.open_root(root, create=False)
    try:
        return {e.marker.checkpoint_id for e in catalog.scan(fd) if isinstance(e, Checkpoint)}
    finally:
        os.close(fd)


def test_sigkill_during_moves_never_loses_or_duplicates_a_checkpoint(kube_dir, store, tmp_path):
    local = tmp_path / "local-store"
    with agent(kube_dir, store, local) as proc:
        proc.wait_logged("agent starting")
        store.rename(tmp_path / "store-gone")
        archives = [make_archive(kube_dir, ArchiveSpec(pod=Pod(container=f"c{i}"), memory=12 << 20))
                    for i in range(3)]
        proc.wait_logged("archive ingested", count=3)
        assert {line["storageType"] for line in proc.logs("archive ingested")} == {"local"}
        ids = {line["checkpointID"] for line in proc.logs("archive ingested")}
        store.mkdir(mode=0o700)  # back: the mover starts on the three
        # Killed as soon as the move begins: somewhere in copying, committing, switching or removing.
        proc.wait_logged("shared store available again")
        proc.stop(signal.SIGKILL)

    assert complete_ids(store) | complete_ids(local) == ids  # never neither, whatever the moment of the kill
    with agent(kube_dir, store, local) as proc:
        proc.wait_for(lambda _: (complete_ids(store), complete_ids(local)) == (ids, set()), timeout=30)
        assert proc.stop()[0] == 0
    entries = listed(store)
    assert sorted(e["checkpointID"] for e in entries) == sorted(ids)  # one each: no duplicate
    for archive in archives:
        [entry] = [e for e in entries if e["containers"][0] in archive.name]
        out = tmp_path / f"{archive.name}.out"
        lpm("store", "get", entry["artifactURIs"][entry["containers"][0]], "--store", str(store), "-o", str(out),
            check=True)
        assert out.read_bytes() == archive.read_bytes()
    # Nothing hidden is left behind (a staging file cut short is the staging sweep's, after its idle time).
    assert not any(".moved-" in p for p in files_under(local))
    assert not any(".tmp-" in p for p in files_under(store) + files_under(local) if "/staging/" not in p)


def test_a_store_that_stops_answering_is_given_up_on_within_the_timeout(kube_dir, tmp_path):
    """A dead NFS server hangs writes instead of failing them. A FUSE view of the store whose daemon is
    stopped (SIGSTOP) does the same: every operation on it blocks until the daemon runs again."""
    if os.geteuid() != 0 or shutil.which("bindfs") is None:
        raise AssertionError("this test needs root and bindfs (scripts/setup installs it; CI runs as root)")
    backing, store, local = tmp_path / "backing", tmp_path / "store", tmp_path / "local-store"
    backing.mkdir(mode=0o700)
    store.mkdir(mode=0o700)
    daemon = subprocess.Popen(["bindfs", "-f", str(backing), str(store)])
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(store):
            assert time.monotonic() < deadline and daemon.poll() is None, "bindfs did not mount"
            time.sleep(0.05)
        with agent(kube_dir, store, local) as proc:
            proc.wait_logged("agent starting")
            daemon.send_signal(signal.SIGSTOP)
            try:
                # The mover's probe is the first to hang; it is given up on after 3 s.
                [down] = proc.wait_logged("shared store unavailable; checkpoints are held in the local store")
                assert "a write got no answer within 3 s" in down["reason"]
                archive = make_archive(kube_dir, ArchiveSpec(pod=Pod(container="app"), memory=1 << 20))
                [held] = proc.wait_logged("archive ingested")
                assert held["storageType"] == "local" and held["artifactURI"].startswith(f"file://{local}/")
                assert held["seconds"] < 6  # the hung store cost at most the probe's timeout, not forever
                assert proc.proc.poll() is None
                # A scrape still answers, without the hung store's usage, and says the store is away.
                started = time.monotonic()
                assert metric(proc, "lpm_shared_store_available") == 0
                assert time.monotonic() - started < 5
            finally:
                daemon.send_signal(signal.SIGCONT)
            proc.wait_logged("checkpoint moved to the shared store")
            assert proc.stop()[0] == 0
        [entry] = listed(backing)
        assert entry["checkpointID"] == held["checkpointID"]
        out = tmp_path / "moved.tar"
        lpm("store", "get", entry["artifactURIs"]["app"], "--store", str(backing), "-o", str(out), check=True)
        assert out.read_bytes() == archive.read_bytes()
    finally:
        daemon.send_signal(signal.SIGCONT)
        subprocess.run(["umount", str(store)], check=False)
        daemon.wait(timeout=10)


def test_a_moved_checkpoint_is_pinned_against_the_collector_until_the_api_names_it(kube_dir, store, tmp_path):
    """Held locally past the retention, it is expired the moment its shared marker appears, and nothing
    references it yet (its contents still say file://): the mover's .keep keeps the collector off it."""
    local = tmp_path / "local-store"
    archive = make_archive(kube_dir, ArchiveSpec(pod=Pod(container="app"), memory=1 << 20))  # taken 10:11:12Z
    lpm("ingest", str(archive), "--store", str(local), "--node", "node-a", check=True)
    local_fd, shared_fd = fsio.open_root(local, create=False), fsio.open_root(store, create=True)
    try:
        [held] = transfer.local_checkpoints(local_fd)
        assert transfer.copy_to_shared(local_fd, shared_fd, "node-a", held, threading.Event())
        collect = ("gc", "--store", str(store), "--once", "--standalone", "--retention", "1m")
        lpm(*collect, check=True)
        assert [c["checkpointID"] for c in listed(store)] == [held.marker.checkpoint_id]  # pinned: kept

        transfer.unpin(shared_fd, "node-a", held)
        lpm(*collect, check=True)
        assert listed(store) == []  # unpinned, it is what it is: expired and unreferenced

        # An operator's own pin is never taken for the mover's.
        assert transfer.copy_to_shared(local_fd, shared_fd, "node-a", held, threading.Event())
        [pin] = store.glob("*/*/.keep")
        pin.write_text("keep: incident 4711\n")
        transfer.unpin(shared_fd, "node-a", held)
        assert pin.read_text() == "keep: incident 4711\n"
    finally:
        os.close(local_fd)
        os.close(shared_fd)
