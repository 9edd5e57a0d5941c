"""The ingest ledger: which kubelet archives of a node are already in the store.

Kept in the store (``<store>/.ingest/<node>/ledger/``) because the agent's container has no
other state that survives it, and the collector needs it too (it removes kubelet archives
only once they are ingested and verified). A record is written after the checkpoint's
marker: a crash between the two costs one re-read of the archive, which lands on the same
deterministic checkpoint ID and finds it complete; never a duplicate.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from watcher.archive.stamp import ArchiveStamp
from watcher.errors import StoreError, UnknownCheckpoint, UnsafeNameError
from watcher.store import fsio, layout
from watcher.store.commit import node_state_dir
from watcher.store.manifest import decode, encode, field_error, size_field, text_field

_LEDGER = "ledger"
_RECORD_CAP = 1 << 16


@dataclass(frozen=True)
class LedgerRecord:
    stamp: ArchiveStamp
    pod_uid: str
    checkpoint_id: str
    container: str
    verified: bool

    @property
    def ref(self) -> layout.ArtifactRef:
        return layout.ArtifactRef(self.pod_uid, self.checkpoint_id, self.container)

    def to_json(self) -> dict[str, Any]:
        return {
            "archive": self.stamp.name,
            "size": self.stamp.size,
            "mtimeNs": self.stamp.mtime_ns,
            "podUID": self.pod_uid,
            "checkpointID": self.checkpoint_id,
            "containerName": self.container,
            "artifactURI": self.ref.uri,
            "verified": self.verified,
        }


def _file_name(archive: str) -> str:
    # Archive names can be longer than a file name may be (pod names reach 253 bytes).
    return hashlib.sha256(archive.encode("utf-8", "surrogateescape")).hexdigest()[:40] + ".json"


def _parse(raw: Mapping[str, Any], where: str) -> LedgerRecord:
    try:
        return LedgerRecord(
            ArchiveStamp(text_field(raw, "archive"), size_field(raw, "size"), size_field(raw, "mtimeNs")),
            layout.pod_uid(raw["podUID"]),
            layout.checkpoint_id(raw["checkpointID"]),
            layout.container_name(raw["containerName"]),
            _flag(raw, "verified"),
        )
    except (KeyError, TypeError, ValueError, UnsafeNameError) as err:
        raise StoreError(f"{where} is malformed ({field_error(err)})") from None


def _flag(raw: Mapping[str, Any], key: str) -> bool:
    value = raw[key]
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


class Ledger:
    def __init__(self, root_fd: int, node: str) -> None:
        self._root_fd = root_fd
        self._node = node

    def _dir(self) -> int:
        state = node_state_dir(self._root_fd, self._node)
        try:
            return fsio.open_dir(state, [_LEDGER], create=True, where="store ingest ledger")
        finally:
            os.close(state)

    def lookup(self, archive: str) -> LedgerRecord | None:
        fd = self._dir()
        where = f"ingest ledger of node {self._node}"
        try:
            data = fsio.read_small(fd, _file_name(archive), _RECORD_CAP, where)
        except UnknownCheckpoint:
            return None
        finally:
            os.close(fd)
        record = _parse(decode(data, f"{where}: record for {archive!r}"), f"{where}: record for {archive!r}")
        if record.stamp.name != archive:
            raise StoreError(f"{where}: record for {archive!r} names {record.stamp.name!r}")
        return record

    def records_of(self, uid: str, cid: str) -> list[LedgerRecord]:
        """Every record of checkpoint ``uid/cid``; unreadable records are passed over (not this one's)."""
        found = []
        fd = self._dir()
        where = f"ingest ledger of node {self._node}"
        try:
            for name in sorted(os.listdir(fd)):
                if name.startswith("."):
                    continue  # a record on its way in (write_atomic's temp name)
                try:
                    record = _parse(decode(fsio.read_small(fd, name, _RECORD_CAP, where), f"{where}: {name}"),
                                    f"{where}: {name}")
                except StoreError:
                    continue
                if (record.pod_uid, record.checkpoint_id) == (uid, cid) and name == _file_name(record.stamp.name):
                    found.append(record)
        finally:
            os.close(fd)
        return found

    def forget(self, archive: str) -> None:
        fd = self._dir()
        try:
            with fsio.os_errors(f"ingest ledger of node {self._node}: forget {archive!r}"):
                try:
                    os.unlink(_file_name(archive), dir_fd=fd)
                except FileNotFoundError:
                    return
                os.fsync(fd)
        finally:
            os.close(fd)

    def record(self, entry: LedgerRecord) -> None:
        fd = self._dir()
        try:
            fsio.write_atomic(fd, _file_name(entry.stamp.name), encode(entry.to_json()),
                              f"ingest ledger of node {self._node}")
        finally:
            os.close(fd)
