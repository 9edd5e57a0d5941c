"""Helpers for the collector's tests: real ingests, real ``lpm gc`` runs, ages set on real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from tests.support import REPO, lpm
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


class FrozenCollector:
    """An ``lpm gc`` process stopped (SIGSTOP) in the middle of its pass, right after its first deletion.

    Its output goes to files, not pipes: ``communicate()`` reads a pipe's descriptor directly, so a
    ``readline()`` before it loses whatever it had already buffered (a deletion missing from the
    report though not from the store: CI on 27bc0dd lost one of 400 that way).
    """

    def __init__(self, store: Path, where: Path, *args: str) -> None:
        self._out, self._err = where / "frozen-gc.out", where / "frozen-gc.err"
        with self._out.open("w") as out, self._err.open("w") as err:
            self._process = subprocess.Popen([sys.executable, "-m", "watcher", "gc", "--store", str(store), *args],
                                             stdout=out, stderr=err, cwd=REPO,
                                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 60
            while "\n" not in self._out.read_text():
                assert self._process.poll() is None and time.monotonic() < deadline, (
                    "the collector reported no deletion", self._process.returncode, self._err.read_text()[-2000:])
                time.sleep(0.01)
            self._process.send_signal(signal.SIGSTOP)
            first = json.loads(self._out.read_text().splitlines()[0])
            assert first["event"] == "deletion", (first, self._err.read_text()[-2000:])
        except BaseException:
            self._process.kill()
            self._process.wait()
            raise

    def finish(self, timeout: float = 120) -> tuple[int, list[dict], str]:
        """Let it go on to the end of its pass: (exit code, stdout JSON lines, stderr)."""
        self._process.send_signal(signal.SIGCONT)
        try:
            code = self._process.wait(timeout=timeout)
        finally:
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
        lines = [json.loads(line) for line in self._out.read_text().splitlines()]
        return code, lines, self._err.read_text()
