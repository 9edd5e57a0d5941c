"""Faults of the store: a full disk. Needs root for a small tmpfs; CI runs as root."""

import json
import os
import subprocess

import pytest

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, make_archive
from tests.support import lpm
from watcher.stores import Stores


@pytest.fixture
def small_store(tmp_path):
    """A 4 MiB tmpfs: a store that fills up after one mid-sized dump."""
    path = tmp_path / "small-store"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_full_disk_holds_the_checkpoint_locally_nothing_half_written_and_the_agent_goes_on(
        kube_dir, small_store, tmp_path):
    big = make_archive(kube_dir, ArchiveSpec(pod=Pod(container="big"), memory=24 << 20))
    local = tmp_path / "local-store"
    with AgentProcess("--node", "node-a", "--checkpoint-dir", str(kube_dir), "--store", str(small_store),
                      "--local-store", str(local), "--debounce", "0.3") as proc:
        [fallback] = proc.wait_logged("shared store failed during the ingest; holding the checkpoint locally")
        assert fallback["archive"] == big.name
        assert "into the store: no space left on its filesystem" in fallback["reason"]
        assert big.name in fallback["reason"]
        [held] = proc.wait_logged("archive ingested")
        assert held["archive"] == big.name and held["storageType"] == "local"
        assert held["artifactURI"] == f"file://{local}/{held['podUID']}/{held['checkpointID']}/big/dump.tar.zst"
        # The shared store has room for a small one: the next ingest probes it again and goes there.
        small = make_archive(kube_dir, ArchiveSpec(pod=Pod(container="small"), memory=256 << 10))
        done = proc.wait_logged("archive ingested", count=2)[1]
        assert done["archive"] == small.name and done["storageType"] == "shared"
        assert proc.stop()[0] == 0
    listed = [json.loads(line) for line in lpm("store", "ls", "--store", str(small_store), "--json",
                                               check=True).stdout.splitlines()]
    assert [entry["containers"] for entry in listed] == [["small"]]
    # The failed dump left nothing in the shared store: no temp file, no directory under its final name.
    leftovers = [p for p in small_store.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert not any(p.name == "big" for p in small_store.rglob("*"))
    # The local copy is the kubelet's archive, byte for byte.
    out = tmp_path / "big.tar"
    lpm("store", "get", held["artifactURI"], "--store", str(small_store), "--local-store", str(local), "-o",
        str(out), check=True)
    assert out.read_bytes() == big.read_bytes()


def test_full_disk_on_the_cli_exits_non_zero_with_one_line(kube_dir, small_store):
    big = make_archive(kube_dir, ArchiveSpec(memory=24 << 20))
    result = lpm("ingest", str(big), "--store", str(small_store), "--node", "node-a")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "no space left" in line and big.name in line
    assert [p for p in small_store.rglob("*") if p.is_file()] == []


def _fill_up(store):
    """Fill ``store`` to the last byte: a probe's create succeeds there and its write cannot."""
    with open(store / ".filler", "wb") as out:
        try:
            while True:
                out.write(b"\xa5" * 65536)
                out.flush()
        except OSError:
            pass


@pytest.mark.asyncio
async def test_a_probe_of_a_full_store_says_so_and_leaves_nothing_behind(small_store, tmp_path):
    _fill_up(small_store)
    stores = Stores(small_store, tmp_path / "local", "node-a")
    try:
        problem = await stores.probe()
    finally:  # the agent holds its stores' directories for its life; here the tmpfs must unmount after
        os.close(stores.shared.fd)
        os.close(stores.local.fd)
    assert problem is not None and "not writable (No space left on device)" in problem, problem
    assert sorted(p.name for p in small_store.iterdir()) == [".filler"]
