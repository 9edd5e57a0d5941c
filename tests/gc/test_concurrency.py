"""The collector beside other writers: ingest running at the same time, and a second collector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from tests.gc import synthetic
from tests.gc.support import FrozenCollector, gc, listed, stamp, summary
from tests.support import REPO, lpm

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _gc_process(store: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "watcher", "gc", "--store", str(store), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)


def _read_lines(stream, into: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.extend(stream), daemon=True)
    thread.start()
    return thread


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
    out: list[str] = []
    err: list[str] = []
    readers = [_read_lines(collector.stdout, out), _read_lines(collector.stderr, err)]

    def wait_for_a_pass(after: float) -> None:
        """Until the collector reports a pass that started after ``after`` (time.time())."""
        deadline, seen = time.monotonic() + 30, 0
        while True:
            lines = out[seen:]
            seen += len(lines)
            if any(line["event"] == "summary" and line["startedAt"] > after for line in map(json.loads, lines)):
                return
            assert time.monotonic() < deadline and collector.poll() is None, "".join(err)
            time.sleep(0.01)

    try:
        wait_for_a_pass(0)  # sweeping before the first ingest starts
        started = time.time()
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda a: lpm("ingest", str(a), "--store", str(store), "--node", "node-a"),
                                    archives))
        finished = time.time()
        # Then one whole pass over the finished store (a condition, not a guess at how long that takes).
        wait_for_a_pass(finished)
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=30)
    finally:
        if collector.poll() is None:
            collector.kill()
        for reader in readers:
            reader.join(timeout=10)
    assert collector.returncode == 0, "".join(err)
    assert [r.returncode for r in results] == [0] * len(archives), [r.stderr for r in results if r.returncode]
    uris = {r.stdout.strip() for r in results}
    assert listed(store) == {"/".join(uri.split("/")[2:4]) for uri in uris} and len(uris) == len(archives)
    lines = [json.loads(line) for line in out]
    assert [line for line in lines if line["event"] == "deletion"] == []
    summaries = [line for line in lines if line["event"] == "summary"]
    assert {(p["lock"], p["deleted"], p["errors"], p["keptUnknown"]) for p in summaries} == {("held", 0, 0, 0)}
    # The collector really swept while the store was being written: passes that ran wholly inside the
    # ingests saw it part-filled (fewer entries than at the end), and deleted nothing of it (above).
    during = [p["scanned"] for p in summaries
              if started <= p["startedAt"] and p["startedAt"] + p["durationSeconds"] <= finished]
    assert any(0 < scanned < len(archives) for scanned in during), during
    # After the ingests: exactly the 24 checkpoints, no staging file or half-written one left behind.
    assert [p["scanned"] for p in summaries if p["startedAt"] > finished][-1] == len(archives)
    for uri in uris:  # and each one reads back verified
        assert lpm("store", "get", uri, "--store", str(store), "-o", str(kube_dir / "out.tar")).returncode == 0


def test_two_collectors_never_delete_at_the_same_time(store, tmp_path):
    synthetic.build(store, 600, time.time(), max_age=90 * 86400, min_age=2 * 86400)
    first = FrozenCollector(store, tmp_path, "--standalone", "--once", "--retention", "1d")
    try:
        code, lines, _ = gc(store, "--retention", "1d")
    finally:
        first_code, mine, err = first.finish()
    # The second collector found the lock held: it deleted nothing and said so, and exited 0.
    assert code == 0 and [line["event"] for line in lines] == ["summary"]
    assert summary(lines)["lock"] == "busy" and summary(lines)["deleted"] == 0
    # The first finished alone: every checkpoint deleted exactly once.
    assert first_code == 0, err
    deleted = [line["path"] for line in mine if line["event"] == "deletion" and line["kind"] == "complete"]
    assert len(deleted) == len(set(deleted)) == 600
    assert summary(mine)["errors"] == 0 and listed(store) == set()
