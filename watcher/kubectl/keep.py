"""Checkpoint pins: the collector's ``.keep`` file in a checkpoint's directory of the shared store.

The pin lives in the store, not in the API, because that is where the collector reads it
(``lpm_gc.scanner``), and reads it again right before each deletion (``lpm_gc.runner``): a ``.keep``
of any type in ``<store>/<podUID>/<checkpointID>/`` keeps that checkpoint, all its containers, from every
rule. So pinning needs the shared store mounted where ``kubectl lpm`` runs (``--store``), and the
checkpoint's directory comes from its content object's artifact URIs, validated segments only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from watcher.store import fsio, layout


@contextmanager
def _in_checkpoint(store: Path, directory: tuple[str, str]) -> Iterator[int]:
    """The checkpoint's directory, open (validated segments, no symlink followed); its OS errors name the pin."""
    root = fsio.open_root(store, create=False)
    try:
        fd = fsio.open_dir(root, [layout.pod_uid(directory[0]), layout.checkpoint_id(directory[1])],
                           create=False, where=f"store {store}")
    finally:
        os.close(root)
    try:
        with fsio.os_errors(f"store {store}: {'/'.join(directory)}/{layout.KEEP_FILE}"):
            yield fd
    finally:
        os.close(fd)


def is_pinned(store: Path, directory: tuple[str, str]) -> bool:
    with _in_checkpoint(store, directory) as fd:
        try:
            os.stat(layout.KEEP_FILE, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
    return True


def pin(store: Path, directory: tuple[str, str]) -> bool:
    """Create the ``.keep``; False when it was there already."""
    with _in_checkpoint(store, directory) as fd:
        try:
            os.close(os.open(layout.KEEP_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, fsio.FILE_MODE, dir_fd=fd))
        except FileExistsError:
            return False
        os.fsync(fd)  # the pin must outlive a crash: a collector could run right after
    return True


def unpin(store: Path, directory: tuple[str, str]) -> bool:
    """Remove the ``.keep``; False when there was none."""
    with _in_checkpoint(store, directory) as fd:
        try:
            os.unlink(layout.KEEP_FILE, dir_fd=fd)
        except FileNotFoundError:
            return False
        os.fsync(fd)
    return True
