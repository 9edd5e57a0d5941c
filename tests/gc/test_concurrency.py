"""The collector beside other writers: ingest running at the same time, and a second collector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from tests.gc import synthetic
from tests.gc.support import gc, listed, stamp, summary
from tests.support import REPO, lpm

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _gc_process(store: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "watcher", "gc", "--store", str(store), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)


def test_concurrent_ingest_and_collection_lose_nothing(kube_dir, store):
    # 24 archives of 8 pods (so pod directories are shared and reused), ingested by two
    # `lpm ingest` streams while `lpm gc` sweeps in a tight loop with a one-second stale-after:
    # every partially written checkpoint it sees is fresh, so none may go.
    pods = [Pod(uid=f"{i:04d}-cafe", name=f"web-{i}") for i in range(8)]
    archives = [make_archive(kube_dir, ArchiveSpec(pod=pod, memory=512 * 1024),
                             name=archive_name(pod, stamp(hours_ago=n + 1)))
                for n in range(3) for pod in pods]
    store.mkdir(mode=0o700)
    collector = _gc_process(store, "--standalone", "--interval", "10ms", "--stale-after", "1s",
                            "--retention", "1000d")
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda a: lpm("ingest", str(a), "--store", str(store), "--node", "node-a"),
                                    archives))
        time.sleep(1.5)  # and a few more passes over the finished store
        collector.send_signal(signal.SIGTERM)
        out, err = collector.communicate(timeout=30)
    finally:
        if collector.poll() is None:
            collector.kill()
    assert collector.returncode == 0, err
    assert [r.returncode for r in results] == [0] * len(archives), [r.stderr for r in results if r.returncode]
    uris = {r.stdout.strip() for r in results}
    assert listed(store) == {"/".join(uri.split("/")[2:4]) for uri in uris} and len(uris) == len(archives)
    lines = [json.loads(line) for line in out.splitlines()]
    passes = [line for line in lines if line["event"] == "summary"]
    assert len(passes) >= 10, "the collector must really have run during the ingests"
    assert [line for line in lines if line["event"] == "deletion"] == []
    for uri in uris:  # and each one reads back verified
        assert lpm("store", "get", uri, "--store", str(store), "-o", str(kube_dir / "out.tar")).returncode == 0


def test_two_collectors_never_delete_at_the_same_time(store):
    synthetic.build(store, 600, time.time(), max_age=90 * 86400, min_age=2 * 86400)
    first = _gc_process(store, "--standalone", "--once", "--retention", "1d")
    try:
        assert first.stdout is not None
        head = json.loads(first.stdout.readline())  # it holds the lock and is deleting...
        first.send_signal(signal.SIGSTOP)  # ...and stays in the middle of its pass
        code, lines, _ = gc(store, "--retention", "1d")
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    # The second collector found the lock held: it deleted nothing and said so, and exited 0.
    assert code == 0 and [line["event"] for line in lines] == ["summary"]
    assert summary(lines)["lock"] == "busy" and summary(lines)["deleted"] == 0
    # The first finished alone: every checkpoint deleted exactly once.
    assert first.returncode == 0, err
    mine = [head, *map(json.loads, out.splitlines())]
    deleted = [line["path"] for line in mine if line["event"] == "deletion" and line["kind"] == "complete"]
    assert len(deleted) == len(set(deleted)) == 600
    assert summary(mine)["errors"] == 0 and listed(store) == set()
