"""Ingest while the runtime writes: an archive this agent asked for is read into staging as it grows, and
taken only once the runtime has answered and the file is a whole archive."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lab.archives import ArchiveSpec, Pod, archive_bytes, archive_name, write_in_place
from watcher.errors import ArchiveError, ArchiveIncomplete, Cancelled, StoreError
from watcher.ingest import service
from watcher.store import fsio
from watcher.zstream import CompressionSettings

SETTINGS = CompressionSettings()
POD = Pod()


def _stage(store: Path, path: Path, written: threading.Event, cancel: threading.Event | None = None):
    root = fsio.open_root(store, create=True)
    try:
        return service.stage_archive(root, path, "node-a", None, SETTINGS, cancel or threading.Event(), written)
    finally:
        os.close(root)


def _runtime(path: Path, data: bytes, written: threading.Event, *, delay: float = 0.3, pieces: int = 8,
             pause: float = 0.05) -> threading.Thread:
    """A runtime that creates the archive after ``delay`` (its dump), grows it in place, then answers."""
    def work() -> None:
        time.sleep(delay)
        write_in_place(path, data, pieces, pause)
        written.set()
    thread = threading.Thread(target=work)
    thread.start()
    return thread


def _staging(store: Path) -> list[str]:
    return sorted(os.listdir(store / ".ingest" / "node-a" / "staging"))


def test_an_archive_read_while_it_is_written_is_the_whole_archive(kube_dir, store):
    data = archive_bytes(ArchiveSpec(pod=POD, memory=3 << 20))
    path = kube_dir / archive_name(POD)
    written = threading.Event()
    runtime = _runtime(path, data, written)
    staged = _stage(store, path, written)  # started before the file exists, as the agent does
    runtime.join()
    assert staged.digest.raw_size == len(data)
    assert staged.digest.raw_sha256 == hashlib.sha256(data).hexdigest()
    assert (staged.stamp.size, staged.stamp.mtime_ns) == (len(data), path.stat().st_mtime_ns)
    assert staged.identity.identity.pod_name == POD.name
    assert _staging(store) == [staged.dump_name]


def test_a_runtime_that_answers_without_writing_the_archive_is_an_error(kube_dir, store):
    written = threading.Event()
    written.set()  # answered, and no file
    with pytest.raises(ArchiveError, match="cannot open"):
        _stage(store, kube_dir / archive_name(POD), written)


def test_an_archive_cut_short_when_the_runtime_answers_is_refused_and_leaves_nothing(kube_dir, store):
    data = archive_bytes(ArchiveSpec(pod=POD, memory=1 << 20))
    path = kube_dir / archive_name(POD)
    written = threading.Event()
    runtime = _runtime(path, data[: len(data) // 2], written)
    with pytest.raises(ArchiveIncomplete, match="still being written, or truncated"):
        _stage(store, path, written)
    runtime.join()
    assert _staging(store) == []


def test_a_shutdown_while_waiting_for_the_runtime_stops_the_read(kube_dir, store):
    written, cancel = threading.Event(), threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled, match="before the runtime created it"):
        _stage(store, kube_dir / archive_name(POD), written, cancel)
    assert time.monotonic() - started < 2


def test_a_store_that_fills_up_half_way_through_a_followed_archive_keeps_nothing(kube_dir, tmp_path):
    """The agent then reads the finished archive again into its local store (checkpointing.Source._take): here,
    that the early read fails as a store failure naming the archive, and leaves neither a temp file nor space
    taken behind."""
    store = tmp_path / "small-store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(store)], check=True)
    try:
        data = archive_bytes(ArchiveSpec(pod=POD, memory=24 << 20))  # a dump that cannot fit
        path = kube_dir / archive_name(POD)
        written = threading.Event()
        runtime = _runtime(path, data, written)
        with pytest.raises(StoreError, match=f"'{path.name}' into the store: no space left on its filesystem"):
            _stage(store, path, written)
        runtime.join()
        assert _staging(store) == []
        assert shutil.disk_usage(store).used < 1 << 20  # the half-written dump's blocks are freed
        assert path.stat().st_size == len(data)  # the runtime's archive is untouched, to be read again
    finally:
        subprocess.run(["umount", str(store)], check=True)
