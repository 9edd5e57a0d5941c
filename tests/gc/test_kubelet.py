"""Kubelet directory hygiene: only archives ingested, verified, unchanged and past the grace go."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from tests.gc.support import Stored, deletions, gc, stamp, summary
from tests.support import lpm
from watcher.ingest import service
from watcher.store import fsio
from watcher.store.ledger import Ledger
from watcher.zstream import CompressionSettings

HOUR = 3600
REASON = "kubelet-archive-ingested"


def _backdate(path: Path, hours: float) -> None:
    when = path.stat().st_mtime - hours * HOUR
    os.utime(path, (when, when))


def _archive(store: Path, kube_dir: Path, hours_old: float, uid: str, verified: bool = True) -> Stored:
    """A kubelet archive written ``hours_old`` ago, ingested by node-a, and (by default) verified.

    Verified is recorded as the agent records it after reading the stored copy back and
    checking both SHA-256 sums. The mtime is set before the ingest, as the ledger records it.
    """
    pod = Pod(uid=uid, name=f"web-{uid}")
    path = make_archive(kube_dir, ArchiveSpec(pod=pod, memory=64 * 1024), name=archive_name(pod, stamp(1)))
    _backdate(path, hours_old)
    root = fsio.open_root(store, create=True)
    try:
        result = service.ingest_archive(root, path, "node-a", CompressionSettings(), threading.Event(),
                                        datetime.now(UTC))
        if verified:
            ledger = Ledger(root, "node-a")
            record = ledger.lookup(path.name)
            assert record is not None
            ledger.record(dataclasses.replace(record, verified=True))
    finally:
        os.close(root)
    return Stored(result.manifest.pod_uid, result.manifest.checkpoint_id, path)


def hygiene(store: Path, kube_dir: Path, *args: str) -> tuple[dict[str, str], dict]:
    code, lines, stderr = gc(store, "--checkpoint-dir", str(kube_dir), "--node", "node-a", "--kubelet-grace", "1h",
                             *args)
    assert code == 0, stderr
    return deletions(lines), summary(lines)


def test_verified_unchanged_archive_past_the_grace_is_removed(kube_dir, store):
    gone = _archive(store, kube_dir, hours_old=2, uid="a001")
    size = gone.archive.stat().st_size
    young = _archive(store, kube_dir, hours_old=0, uid="a002")
    unverified = _archive(store, kube_dir, hours_old=2, uid="a003", verified=False)
    removed, result = hygiene(store, kube_dir)
    assert removed == {str(gone.archive): REASON}
    assert result["deleted"] == 1 and result["bytesFreed"] == size
    assert not gone.archive.exists() and young.archive.exists() and unverified.archive.exists()
    # The store's copy stays: it is what the archive's bytes live on as.
    assert (store / gone.uid / gone.cid / ".checkpoint-complete").exists()


@pytest.mark.parametrize("doubt", ["rewritten", "touched", "pinned", "never-ingested", "dry-run"])
def test_anything_in_doubt_is_kept(kube_dir, store, doubt):
    stored = _archive(store, kube_dir, hours_old=2, uid="b001")
    archive = stored.archive
    args: tuple[str, ...] = ()
    if doubt == "rewritten":  # same name, other bytes: the kubelet wrote it again
        with open(archive, "ab") as out:
            out.write(b"\0" * 512)
        _backdate(archive, 2)
    elif doubt == "touched":  # same bytes, another mtime: not the version the ledger vouches for
        _backdate(archive, 3)
    elif doubt == "pinned":  # checkpoint-restore-operator's pin: <archive>.keep beside it
        Path(f"{archive}.keep").touch()
    elif doubt == "never-ingested":
        archive.unlink()
        archive = kube_dir / archive_name(Pod(uid="c001", name="other"), stamp(5))
        archive.write_bytes(b"no ledger record")
        _backdate(archive, 5)
    else:
        args = ("--dry-run",)
    removed, result = hygiene(store, kube_dir, *args)
    assert archive.exists()
    assert removed == ({str(archive): REASON} if doubt == "dry-run" else {})
    assert result["keptPinned"] == (1 if doubt == "pinned" else 0)


def test_hygiene_needs_the_node_whose_ledger_vouches(kube_dir, store):
    store.mkdir()
    result = lpm("gc", "--store", str(store), "--standalone", "--once", "--checkpoint-dir", str(kube_dir))
    assert result.returncode == 1 and "--node" in result.stderr


@pytest.mark.parametrize("since", ["store-entry-removed", "marker-removed", "dump-damaged", "manifest-swapped"])
def test_a_verified_word_that_went_stale_keeps_the_archive(kube_dir, store, since):
    """The ledger says verified, but the stored copy is gone or unsound now: the kubelet's copy stays."""
    stored = _archive(store, kube_dir, hours_old=2, uid="d001")
    entry = store / stored.uid / stored.cid
    if since == "store-entry-removed":  # retention (or a person) removed it after the agent verified it
        shutil.rmtree(store / stored.uid)
    elif since == "marker-removed":
        (entry / ".checkpoint-complete").unlink()
    elif since == "dump-damaged":
        dump = entry / "cart-api" / "dump.tar.zst"
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0xFF
        dump.write_bytes(bytes(data))
    else:  # another archive's checkpoint put where this one's was: sound, but not this archive
        other = _archive(store, kube_dir, hours_old=2, uid="d002")
        shutil.rmtree(entry / "cart-api")
        shutil.copytree(store / other.uid / other.cid / "cart-api", entry / "cart-api")
        other.archive.rename(kube_dir.parent / other.archive.name)  # out of the sweep's way
    removed, result = hygiene(store, kube_dir)
    assert stored.archive.exists()
    assert removed == {}
    # A swapped manifest also makes the store entry itself unreadable to the collector: one more unknown.
    assert result["deleted"] == 0 and result["keptUnknown"] == (2 if since == "manifest-swapped" else 1)
