"""A FIFO, socket, device or directory planted where lpm opens a file: refused at once, never blocked on.

Every open here runs in a thread given 5 s: a regression that blocks (a FIFO opened for reading waits
for a writer forever) fails the test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from tests.support import KINDS, WORDS, lpm, planted, within
from watcher.errors import ArchiveError, UnsafeNameError
from watcher.ingest import service
from watcher.store import fsio
from watcher.store.ledger import _file_name as ledger_file_name
from watcher.stores import Stores
from watcher.zstream import CompressionSettings


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.O_RDWR | os.O_CREAT],
                         ids=["read", "write", "lock"])
def test_open_file_refuses_what_is_not_a_regular_file(tmp_path, kind, flags):
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with planted(tmp_path / "f", kind):
            with pytest.raises(UnsafeNameError) as caught:
                within(5, lambda: fsio.open_file(dir_fd, "f", flags, "store x"))
    finally:
        os.close(dir_fd)
    assert str(caught.value) == f"store x: f {WORDS[kind]}, refused"


def test_open_file_opens_and_creates_regular_files_blocking(tmp_path):
    (tmp_path / "there").write_bytes(b"data")
    fd = fsio.open_file(None, tmp_path / "there", os.O_RDONLY, "x")
    try:
        assert os.read(fd, 10) == b"data" and os.get_blocking(fd)
    finally:
        os.close(fd)
    fd = fsio.open_file(None, tmp_path / "new", os.O_WRONLY | os.O_CREAT, "x")
    os.close(fd)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600
    with pytest.raises(FileNotFoundError):
        fsio.open_file(None, tmp_path / "absent", os.O_RDONLY, "x")


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_kubelet_archive_is_refused_not_read(tmp_path, store, kind):
    kube_dir = tmp_path / "kubelet"
    kube_dir.mkdir()
    with planted(kube_dir / archive_name(Pod()), kind) as path:
        root = fsio.open_root(store, create=True)
        try:
            with pytest.raises(ArchiveError, match=f"kubelet archive: {path} {WORDS[kind]}, refused"):
                within(5, lambda: service.ingest_archive(root, path, "node-a", CompressionSettings(),
                                                         threading.Event(), datetime.now(UTC)))
        finally:
            os.close(root)


def _ingested(store: Path, kube_dir: Path) -> tuple[Path, Path]:
    archive = make_archive(kube_dir, ArchiveSpec(memory=64 * 1024))
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", check=True).stdout.strip()
    return archive, store / "/".join(uri.removeprefix("shared://").split("/")[:2])


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_store_ls_and_get_refuse_a_planted_manifest(store, kube_dir, tmp_path, kind):
    _, checkpoint = _ingested(store, kube_dir)
    manifest = checkpoint / "cart-api" / "manifest.json"
    manifest.unlink()
    with planted(manifest, kind):
        listing = lpm("store", "ls", "--store", str(store), timeout=20)
        assert listing.returncode == 0 and listing.stdout == "", listing
        assert "skipped 1 damaged" in listing.stderr and f"manifest.json {WORDS[kind]}, refused" in listing.stderr, \
            listing.stderr
        out = tmp_path / "out.tar"
        uri = f"shared://{checkpoint.parent.name}/{checkpoint.name}/cart-api/dump.tar.zst"
        got = lpm("store", "get", uri, "--store", str(store), "-o", str(out), timeout=20)
        assert got.returncode == 1 and f"manifest.json {WORDS[kind]}, refused" in got.stderr, got
        assert not out.exists()


def test_a_planted_ledger_record_is_replaced_by_a_fresh_ingest(store, kube_dir):
    archive, _ = _ingested(store, kube_dir)
    record = store / ".ingest" / "node-a" / "ledger" / ledger_file_name(archive.name)
    record.unlink()
    os.mkfifo(record, 0o600)
    again = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", timeout=20)
    assert again.returncode == 0, again.stderr
    assert record.is_file() and not record.is_symlink(), "the FIFO should have been replaced by a record"


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
def test_a_planted_collector_lock_is_refused_with_one_line(store, kube_dir, kind):
    _ingested(store, kube_dir)
    (store / ".gc").mkdir(mode=0o700)
    with planted(store / ".gc" / "lock", kind):
        result = lpm("gc", "--store", str(store), "--standalone", "--once", timeout=20)
    assert result.returncode == 1, result
    assert result.stderr.splitlines()[-1] == f"lpm: store .gc: lock {WORDS[kind]}, refused", result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
def test_a_planted_probe_file_is_a_reason_at_once_not_a_hang(tmp_path, kind):
    shared, local = tmp_path / "shared", tmp_path / "local"
    shared.mkdir(mode=0o700)
    with planted(shared / ".readyz-node-a", kind):
        stores = Stores(shared, local, "node-a")
        started = time.monotonic()
        problem = asyncio.run(stores.probe())
        seconds = time.monotonic() - started
    assert problem == f"shared store {shared}: store probe file: .readyz-node-a {WORDS[kind]}, refused", problem
    assert seconds < 1, seconds
    assert stores.local_writable() is None
