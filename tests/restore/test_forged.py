"""A forged checkpoint addressed to this node cannot fill the restorer's work directory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from lab.archives import ArchiveSpec, Pod, make_archive
from watcher.ingest import service
from watcher.observe import AgentMetrics
from watcher.restore.importer import ContainersStorageImporter
from watcher.restore.source import DirectorySource
from watcher.restore.standalone import RestorerSettings, StandaloneRestorer
from watcher.store import fsio
from watcher.zstream import CompressionSettings


def _ingest(store: Path, kube_dir: Path, name: str) -> tuple[str, str, Path]:
    pod = Pod(uid=str(uuid.uuid4()), namespace="shop", name=name, container="app")
    archive = make_archive(kube_dir, ArchiveSpec(pod=pod, memory=64 * 1024))
    root = fsio.open_root(store, create=True)
    try:
        result = service.ingest_archive(root, archive, "node-a", CompressionSettings(), threading.Event(),
                                        datetime.now(UTC), target_node="node-b")
    finally:
        os.close(root)
    ref = result.manifest.ref
    return ref.pod_uid, ref.checkpoint_id, store / ref.pod_uid / ref.checkpoint_id / ref.container


def _forge(container: Path, dump: bytes | None = None, **fields: object) -> None:
    body = json.loads((container / "manifest.json").read_text())
    if dump is not None:
        (container / "dump.tar.zst").write_bytes(dump)
        body |= {"checksumSHA256": hashlib.sha256(dump).hexdigest(), "compressedSize": len(dump)}
    (container / "manifest.json").write_text(json.dumps(body | fields))


def test_forged_checkpoints_are_refused_without_filling_the_work_directory(store, kube_dir, tmp_path):
    bomb_uid, bomb_cid, bomb = _ingest(store, kube_dir, "bomb")
    # 64 MiB of zeros: 512 blocks, few enough to pass the frame walk (1024 at least), so decompression's
    # bound is what stops it.
    _forge(bomb, zstandard.ZstdCompressor(write_checksum=True).compress(bytes(64 << 20)))
    huge_uid, huge_cid, huge = _ingest(store, kube_dir, "huge")
    _forge(huge, uncompressedSize=1 << 62)
    work = tmp_path / "work-b"
    settings = RestorerSettings("node-b", work, ContainersStorageImporter(()), 0.1)
    root = fsio.open_root(store, create=False)
    try:
        restorer = StandaloneRestorer(settings, DirectorySource(root, CompressionSettings(), threading.Event()),
                                      AgentMetrics(store))
        try:
            asyncio.run(restorer.poll_round())
        finally:
            restorer.close()
    finally:
        os.close(root)
    records = {name: json.loads((work / "imported" / name).read_text())
               for name in os.listdir(work / "imported")}
    bomb_record = records.pop(f"{bomb_uid}_{bomb_cid}.json")
    huge_record = records.pop(f"{huge_uid}_{huge_cid}.json")
    assert records == {}
    assert bomb_record["outcome"] == "refused" and bomb_record["reason"].endswith(
        "stored dump decompresses to more than the manifest's uncompressedSize ({} bytes); stopped there"
        .format(json.loads((bomb / "manifest.json").read_text())["uncompressedSize"])), bomb_record
    assert huge_record["outcome"] == "refused" and f"need {2 << 62} bytes" in huge_record["reason"], huge_record
    assert sorted(os.listdir(work)) == ["imported"]  # every scratch directory removed
