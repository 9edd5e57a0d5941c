"""Checkpoint pins: the collector's ``.keep`` file in a checkpoint's directory of the shared store.

The pin lives in the store, not in the API, because that is where the collector reads it
(``lpm_gc.scanner``), and reads it again right before each deletion (``lpm_gc.runner``): a ``.keep``
of any type in ``<store>/<podUID>/<checkpointID>/`` keeps that checkpoint, all its containers, from every
rule. So pinning needs the shared store mounted where ``kubectl lpm`` runs (``--store``), and the
checkpoint's directory comes from its content object's artifact URIs, validated segments only.
"""

from __future__ import annotations

import os
from pathlib import Path

from watcher.store import fsio, layout


def _directory(store: Path, directory: tuple[str, str]) -> int:
    root = fsio.open_root(store, create=False)
    try:
        return fsio.open_dir(root, [layout.pod_uid(directory[0]), layout.checkpoint_id(directory[1])],
                             create=False, where=f"store {store}")
    finally:
        os.close(root)


def is_pinned(store: Path, directory: tuple[str, str]) -> bool:
    fd = _directory(store, directory)
    try:
        with fsio.os_errors(f"store {store}: {'/'.join(directory)}"):
            try:
                os.stat(layout.KEEP_FILE, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
    finally:
        os.close(fd)
    return True


def pin(store: Path, directory: tuple[str, str]) -> bool:
    """Create the ``.keep``; False when it was there already."""
    fd = _directory(store, directory)
    try:
        with fsio.os_errors(f"store {store}: {'/'.join(directory)}/{layout.KEEP_FILE}"):
            try:
                os.close(os.open(layout.KEEP_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, fsio.FILE_MODE, dir_fd=fd))
            except FileExistsError:
                return False
            os.fsync(fd)  # the pin must outlive a crash: a collector could run right after
    finally:
        os.close(fd)
    return True


def unpin(store: Path, directory: tuple[str, str]) -> bool:
    """Remove the ``.keep``; False when there was none."""
    fd = _directory(store, directory)
    try:
        with fsio.os_errors(f"store {store}: {'/'.join(directory)}/{layout.KEEP_FILE}"):
            try:
                os.unlink(layout.KEEP_FILE, dir_fd=fd)
            except FileNotFoundError:
                return False
            os.fsync(fd)
    finally:
        os.close(fd)
    return True
