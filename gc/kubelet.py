"""Kubelet directory hygiene: remove archives the store already holds, verified, after a grace.

The kubelet never removes the archives it writes (0600 memory dumps: passwords, keys). Once
this node's ingest ledger records an archive as ingested AND read back verified, and the
file is still that very version (same size and mtime as recorded), the store's copy stands
for it; after ``grace`` (time for a person to look at it) it is removed. An archive with a
``<name>.keep`` beside it is pinned, as checkpoint-restore-operator pins archives. Anything
else — no record, an unverified one, a file that changed, a record that does not read — is
kept: unknown is not absent.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lpm_gc.scanner import KEEP_FILE
from watcher.errors import LpmError
from watcher.store.ledger import ArchiveStamp, Ledger, LedgerRecord


@dataclass(frozen=True)
class KubeletSettings:
    directory: Path
    """The kubelet's checkpoint directory on this node."""
    node: str
    """This node's name: whose ingest ledger vouches for the archives."""
    grace: float
    """Seconds an archive is left after its mtime, even when verified."""


@dataclass
class Sweep:
    deleted: int = 0
    freed: int = 0
    kept_pinned: int = 0
    kept_unknown: int = 0
    errors: int = 0


def collectable(record: LedgerRecord | None, stamp: ArchiveStamp, grace: float, now: float) -> bool:
    """The rule, pure: ingested, verified, the same file, older than the grace."""
    return (record is not None and record.verified and record.stamp == stamp
            and now - stamp.mtime_ns / 1e9 > grace)


def sweep(root_fd: int, settings: KubeletSettings, now: float, dry_run: bool,
          report: Callable[[str, int], None], warn: Callable[[str, str], None]) -> Sweep:
    """Remove collectable archives; ``report(path, bytes)`` each one, ``warn(path, why)`` each doubt."""
    result = Sweep()
    ledger = Ledger(root_fd, settings.node)
    dir_fd = os.open(settings.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with os.scandir(dir_fd) as children:
            names = [child.name for child in children if child.is_file(follow_symlinks=False)]
        present = set(names)
        for name in names:
            if name.endswith(KEEP_FILE):
                continue
            path = str(settings.directory / name)
            stamp = _stamp(dir_fd, name)
            if stamp is None:
                continue
            try:
                record = ledger.lookup(name)
            except LpmError as err:
                result.kept_unknown += 1
                warn(path, str(err))
                continue
            if not collectable(record, stamp, settings.grace, now):
                continue
            if name + KEEP_FILE in present:
                result.kept_pinned += 1
                continue
            if not dry_run:
                try:
                    # Re-check right before: the kubelet may have rewritten the file since.
                    if _stamp(dir_fd, name) != stamp:
                        continue
                    os.unlink(name, dir_fd=dir_fd)
                except OSError as err:
                    result.errors += 1
                    warn(path, err.strerror or str(err))
                    continue
            result.deleted += 1
            result.freed += stamp.size
            report(path, stamp.size)
    finally:
        os.close(dir_fd)
    return result


def _stamp(dir_fd: int, name: str) -> ArchiveStamp | None:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return ArchiveStamp(name, info.st_size, info.st_mtime_ns)
