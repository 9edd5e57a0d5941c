"""Doing the deletions a plan names, re-checking each one right before it happens.

The plan was made from a scan that may be minutes old on a big store, and ingest runs beside
the collector on the shared volume. So each deletion first looks again: a ``.keep`` that
appeared since pins it; an incomplete checkpoint that gained its marker or a fresh write is
alive; an empty pod directory that gained a checkpoint is not empty. Those are kept, not
errors.

A complete checkpoint loses its marker first, and the directory is fsynced, so readers stop
seeing it before any dump goes and a crash half-way leaves an incomplete checkpoint (which a
later pass removes as abandoned), never a marker over missing files. Directories are opened
with ``O_NOFOLLOW`` below the store root and entries are unlinked, never followed: a symlink
in the store is removed as a name, and nothing it points to is touched.
"""

from __future__ import annotations

import errno
import os
import time
from enum import Enum

from lpm_gc.entries import Entry, Kind
from lpm_gc.scanner import KEEP_FILE
from watcher.errors import StoreError, UnknownCheckpoint
from watcher.store import fsio, layout

_MAX_DEPTH = 4  # as deep as the scanner walks; anything deeper was never planned
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Outcome(Enum):
    DELETED = "deleted"
    PINNED = "pinned"
    """A ``.keep`` appeared after the scan."""
    ALIVE = "alive"
    """Written to, completed or filled since the scan: someone is using it."""
    GONE = "gone"
    """Already removed by someone else."""


def delete(root_fd: int, entry: Entry, stale_after: float) -> Outcome:
    """Delete one planned entry, unless a re-check says otherwise. Raises StoreError on I/O failure."""
    with fsio.os_errors(f"delete {entry.path}"):
        try:
            if entry.kind is Kind.EMPTY_POD:
                return _empty_pod(root_fd, entry, stale_after)
            if entry.kind is Kind.STAGING:
                return _staging_file(root_fd, entry, stale_after)
            return _checkpoint(root_fd, entry, stale_after)
        except (UnknownCheckpoint, FileNotFoundError):
            return Outcome.GONE


def _checkpoint(root_fd: int, entry: Entry, stale_after: float) -> Outcome:
    pod_fd = fsio.open_dir(root_fd, [entry.parent], create=False, where="collector")
    try:
        fd = fsio.open_dir(pod_fd, [entry.name], create=False, where="collector")
        try:
            if _exists(fd, KEEP_FILE):
                return Outcome.PINNED
            if entry.kind is Kind.COMPLETE:
                _unlink(fd, layout.MARKER_FILE)
                os.fsync(fd)  # readers stop seeing it before anything else goes
            elif _exists(fd, layout.MARKER_FILE) or _newest(fd, 1) > time.time() - stale_after:
                return Outcome.ALIVE
            _clear(fd, 1)
        finally:
            os.close(fd)
        os.rmdir(entry.name, dir_fd=pod_fd)
    finally:
        os.close(pod_fd)
    return Outcome.DELETED


def _empty_pod(root_fd: int, entry: Entry, stale_after: float) -> Outcome:
    # rmdir removes only an empty directory, atomically: a checkpoint that arrived since the
    # scan makes it fail with ENOTEMPTY. The mtime re-check narrows the window in which an
    # ingest has opened the pod directory but not yet made its checkpoint directory in it.
    info = os.stat(entry.name, dir_fd=root_fd, follow_symlinks=False)
    if info.st_mtime > time.time() - stale_after:
        return Outcome.ALIVE
    try:
        os.rmdir(entry.name, dir_fd=root_fd)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return Outcome.ALIVE
        raise
    return Outcome.DELETED


def _staging_file(root_fd: int, entry: Entry, stale_after: float) -> Outcome:
    fd = fsio.open_dir(root_fd, entry.segments[:-1], create=False, where="collector")
    try:
        # A live ingest writes its staging file every chunk: fresh means someone is writing it.
        if os.stat(entry.name, dir_fd=fd, follow_symlinks=False).st_mtime > time.time() - stale_after:
            return Outcome.ALIVE
        os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    return Outcome.DELETED


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _newest(dir_fd: int, depth: int) -> float:
    """Newest mtime of an open directory and everything below it, links not followed."""
    newest = os.fstat(dir_fd).st_mtime
    with os.scandir(dir_fd) as children:
        for child in children:
            newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
            if child.is_dir(follow_symlinks=False) and depth < _MAX_DEPTH:
                sub = os.open(child.name, _DIR_FLAGS, dir_fd=dir_fd)
                try:
                    newest = max(newest, _newest(sub, depth + 1))
                finally:
                    os.close(sub)
    return newest


def _clear(dir_fd: int, depth: int) -> None:
    """Remove everything below an open directory; a link is unlinked as a name, never followed."""
    with os.scandir(dir_fd) as children:
        names = [(child.name, child.is_dir(follow_symlinks=False)) for child in children]
    for name, is_dir in names:
        if not is_dir:
            _unlink(dir_fd, name)
            continue
        if depth >= _MAX_DEPTH:
            raise StoreError(f"{name}: nested deeper than any writer nests, left in place")
        sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            _clear(sub, depth + 1)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dir_fd)
