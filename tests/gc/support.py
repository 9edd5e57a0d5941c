"""Helpers for the collector's tests: real ingests, real ``lpm gc`` runs, ages set on real files."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from tests.support import lpm
from watcher.ingest import service
from watcher.store import fsio
from watcher.zstream import CompressionSettings


@dataclass(frozen=True)
class Stored:
    uid: str
    cid: str
    archive: Path

    @property
    def rel(self) -> str:
        return f"{self.uid}/{self.cid}"


def stamp(hours_ago: float) -> str:
    """An archive-name timestamp ``hours_ago`` before now (archive names carry creationTime)."""
    moment = datetime.now(UTC) - timedelta(hours=hours_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ingest(store: Path, kube_dir: Path, hours_ago: float, pod: Pod | None = None, node: str = "node-a") -> Stored:
    """Ingest a real kubelet archive taken ``hours_ago`` through the real ingest code."""
    pod = pod or Pod()
    archive = make_archive(kube_dir, ArchiveSpec(pod=pod, memory=64 * 1024), name=archive_name(pod, stamp(hours_ago)))
    root = fsio.open_root(store, create=True)
    try:
        result = service.ingest_archive(root, archive, node, CompressionSettings(), threading.Event(),
                                        datetime.now(UTC))
    finally:
        os.close(root)
    return Stored(result.manifest.pod_uid, result.manifest.checkpoint_id, archive)


def age(path: Path, seconds: float) -> None:
    """Make ``path`` and everything under it look untouched for ``seconds``."""
    when = datetime.now().timestamp() - seconds
    for item in [path, *path.rglob("*")]:
        os.utime(item, (when, when), follow_symlinks=False)


def gc(store: Path, *args: str) -> tuple[int, list[dict], str]:
    """``lpm gc --store STORE --standalone --once ARGS``: (exit code, stdout JSON lines, stderr)."""
    result = lpm("gc", "--store", str(store), "--standalone", "--once", *args)
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def deletions(lines: list[dict]) -> dict[str, str]:
    """path -> reason of every deletion line."""
    return {line["path"]: line["reason"] for line in lines if line["event"] == "deletion"}


def summary(lines: list[dict]) -> dict:
    [last] = [line for line in lines if line["event"] == "summary"]
    return last


def listed(store: Path) -> set[str]:
    """``<podUID>/<checkpointID>`` of every checkpoint ``lpm store ls`` shows."""
    out = lpm("store", "ls", "--store", str(store), "--json", check=True).stdout
    return {f"{c['podUID']}/{c['checkpointID']}" for c in map(json.loads, out.splitlines())}
