"""Kubelet directory hygiene: remove archives the store already holds, verified, after a grace.

The kubelet never removes the archives it writes (0600 memory dumps: passwords, keys). Once
this node's ingest ledger records an archive as ingested AND read back verified, and the
file is still that very version (same size and mtime as recorded), the store's copy stands
for it; after ``grace`` (time for a person to look at it) it is removed. An archive with a
``<name>.keep`` beside it is pinned, as checkpoint-restore-operator pins archives. Anything
else — no record, an unverified one, a file that changed, a record that does not read — is
kept: unknown is not absent.

The ledger's "verified" is a word from the past: since then the collector (or a person, or a
bad node) may have removed or damaged the stored copy. So right before removing the kubelet's
copy the stored one is read back again — complete, both SHA-256 sums and its size checked,
and its manifest naming this very archive — and the archive is kept if any of it fails.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lpm_gc.scanner import KEEP_FILE
from watcher.archive.stamp import ArchiveStamp
from watcher.crypt.keyring import Keyring
from watcher.errors import LpmError
from watcher.store import retrieve
from watcher.store.ledger import Ledger, LedgerRecord
from watcher.zstream import CompressionSettings


@dataclass(frozen=True)
class KubeletSettings:
    directory: Path
    """The kubelet's checkpoint directory on this node."""
    node: str
    """This node's name: whose ingest ledger vouches for the archives."""
    grace: float
    """Seconds an archive is left after its mtime, even when verified."""
    encryption: Keyring | None = None
    """The key-encryption keys (--encryption-keys): a sealed stored copy is read back with them. Without
    the key it names, a sealed copy cannot vouch for its archive, which is then kept (and warned about)."""


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
            assert record is not None  # collectable() said so
            doubt = stored_copy_doubt(root_fd, record, stamp, settings.encryption)
            if doubt is not None:
                result.kept_unknown += 1
                warn(path, doubt)
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


def stored_copy_doubt(root_fd: int, record: LedgerRecord, stamp: ArchiveStamp,
                      encryption: Keyring | None = None) -> str | None:
    """Why the stored copy cannot stand for the kubelet archive now, or None when it can.

    Reads the whole dump back (both SHA-256 sums, the zstd frame, the sizes): the collector
    runs rarely and removes each archive once, so the read is worth the certainty.
    """
    try:
        manifest = retrieve.verify(root_fd, record.ref, CompressionSettings(encryption=encryption), threading.Event())
    except LpmError as err:
        return f"stored copy {record.ref.uri} is not sound now, so it cannot stand for the archive: {err}"
    if manifest.kubelet_archive != stamp.name or manifest.uncompressed_size != stamp.size:
        return (f"stored copy {record.ref.uri} holds {manifest.kubelet_archive!r} "
                f"({manifest.uncompressed_size} bytes), not this archive ({stamp.size} bytes)")
    return None


def _stamp(dir_fd: int, name: str) -> ArchiveStamp | None:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return ArchiveStamp(name, info.st_size, info.st_mtime_ns)
