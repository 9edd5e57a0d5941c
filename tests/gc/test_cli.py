"""``lpm gc`` on real stores, through the real command line: every rule, and the output contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from lab.archives import Pod
from tests.gc.support import age, deletions, gc, ingest, listed, summary
from tests.support import REPO, lpm

HOUR = 3600


def test_retention_deletes_expired_checkpoints_and_reports_each(kube_dir, store):
    old = ingest(store, kube_dir, hours_ago=30)
    new = ingest(store, kube_dir, hours_ago=2)
    code, lines, _ = gc(store, "--retention", "24h")
    assert code == 0
    assert deletions(lines) == {old.rel: "retention"}
    [line] = [line for line in lines if line["event"] == "deletion"]
    assert line["podNamespace"] == "shop-prod" and line["podName"] == "cart-7d9f8-x2x4z" and line["bytes"] > 0
    assert not line["dryRun"]
    result = summary(lines)
    assert {k: result[k] for k in ("scanned", "deleted", "keptPinned", "keptUnknown", "errors", "lock")} == {
        "scanned": 2, "deleted": 1, "keptPinned": 0, "keptUnknown": 0, "errors": 0, "lock": "held"}
    assert result["bytesFreed"] == line["bytes"]
    assert listed(store) == {new.rel}
    assert not (store / old.uid / old.cid).exists()
    # The ingest ledger is the agents': a record whose checkpoint went is left for them to re-check.
    assert len(list((store / ".ingest" / "node-a" / "ledger").iterdir())) == 2


def test_retention_hours_from_the_environment_and_the_flag_wins(kube_dir, store, monkeypatch):
    stored = ingest(store, kube_dir, hours_ago=5)
    monkeypatch.setenv("RETENTION_HOURS", "6")
    assert deletions(gc(store)[1]) == {}
    monkeypatch.setenv("RETENTION_HOURS", "4")
    assert deletions(gc(store, "--retention", "6h")[1]) == {}
    assert deletions(gc(store)[1]) == {stored.rel: "retention"}


def test_dry_run_reports_and_deletes_nothing(kube_dir, store):
    old = ingest(store, kube_dir, hours_ago=30)
    code, lines, _ = gc(store, "--dry-run")
    assert code == 0
    assert deletions(lines) == {old.rel: "retention"}
    assert all(line["dryRun"] for line in lines)
    assert summary(lines)["deleted"] == 1 and summary(lines)["lock"] == "none"
    assert listed(store) == {old.rel}


def test_abandoned_write_is_deleted_and_a_fresh_one_is_left(kube_dir, store):
    abandoned = ingest(store, kube_dir, hours_ago=1, pod=Pod(uid="aaaa-1"))
    fresh = ingest(store, kube_dir, hours_ago=1, pod=Pod(uid="bbbb-2"))
    for stored in (abandoned, fresh):
        (store / stored.uid / stored.cid / ".checkpoint-complete").unlink()
    age(store / abandoned.uid / abandoned.cid, 2 * HOUR)
    code, lines, _ = gc(store, "--stale-after", "1h")
    assert code == 0 and deletions(lines) == {abandoned.rel: "abandoned"}
    assert (store / fresh.uid / fresh.cid / "cart-api" / "dump.tar.zst").exists()


def test_keep_pins_a_checkpoint_against_every_rule(kube_dir, store):
    pinned = ingest(store, kube_dir, hours_ago=30)
    (store / pinned.uid / pinned.cid / ".keep").touch()
    code, lines, _ = gc(store, "--retention", "1h", "--max-total-size", "0")
    assert code == 0 and deletions(lines) == {}
    assert summary(lines)["keptPinned"] == 1
    assert listed(store) == {pinned.rel}


def test_empty_pod_directories_go_once_empty_for_stale_after(kube_dir, store):
    stored = ingest(store, kube_dir, hours_ago=30)
    (store / "0123-old-empty").mkdir(mode=0o700)
    age(store / "0123-old-empty", 2 * HOUR)
    (store / "0123-new-empty").mkdir(mode=0o700)
    lines = gc(store, "--retention", "24h", "--stale-after", "1h")[1]
    assert deletions(lines) == {stored.rel: "retention", "0123-old-empty": "empty-pod-dir"}
    # The pod directory this pass emptied waits: an ingest may be about to write into it.
    assert (store / stored.uid).is_dir() and (store / "0123-new-empty").is_dir()
    age(store / stored.uid, 2 * HOUR)
    assert deletions(gc(store, "--stale-after", "1h")[1]) == {stored.uid: "empty-pod-dir"}


def test_stale_staging_files_go_and_live_ones_and_the_ledger_stay(kube_dir, store):
    ingest(store, kube_dir, hours_ago=1)
    staging = store / ".ingest" / "node-a" / "staging"
    (staging / ".dump.tar.zst.tmp-old").write_bytes(b"x" * 100)
    age(staging / ".dump.tar.zst.tmp-old", 2 * HOUR)
    (staging / ".dump.tar.zst.tmp-live").write_bytes(b"y" * 100)
    ledger = sorted((store / ".ingest" / "node-a" / "ledger").iterdir())
    age(store / ".ingest" / "node-a" / "ledger", 100 * HOUR)
    lines = gc(store, "--stale-after", "1h")[1]
    assert deletions(lines) == {".ingest/node-a/staging/.dump.tar.zst.tmp-old": "stale-staging"}
    assert sorted(p.name for p in staging.iterdir()) == [".dump.tar.zst.tmp-live"]
    assert sorted((store / ".ingest" / "node-a" / "ledger").iterdir()) == ledger


def test_limits_delete_oldest_first_with_their_reason(kube_dir, store):
    oldest = ingest(store, kube_dir, hours_ago=3)
    middle = ingest(store, kube_dir, hours_ago=2)
    newest = ingest(store, kube_dir, hours_ago=1)
    assert deletions(gc(store, "--max-per-pod", "2")[1]) == {oldest.rel: "max-per-pod"}
    assert deletions(gc(store, "--max-per-container", "1")[1]) == {middle.rel: "max-per-container"}
    assert listed(store) == {newest.rel}


def test_symlinks_are_never_followed_and_outside_is_never_touched(kube_dir, store, tmp_path):
    stored = ingest(store, kube_dir, hours_ago=30)
    outside = tmp_path / "outside"
    (store / stored.uid).rename(outside)  # an old checkpoint, now outside the store...
    (store / stored.uid).symlink_to(outside)  # ...reachable through a planted link
    abandoned = ingest(store, kube_dir, hours_ago=30, pod=Pod(uid="cccc-3"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    checkpoint = store / abandoned.uid / abandoned.cid
    (checkpoint / ".checkpoint-complete").unlink()
    (checkpoint / "cart-api" / "link").symlink_to(victim)
    (checkpoint / "dirlink").symlink_to(tmp_path)
    age(checkpoint, 2 * HOUR)
    before = sorted(str(p) for p in outside.rglob("*"))
    code, lines, stderr = gc(store, "--retention", "1h", "--stale-after", "1h")
    assert code == 0
    assert deletions(lines) == {abandoned.rel: "abandoned"}
    assert summary(lines)["keptUnknown"] == 1 and "symlink" in stderr
    assert sorted(str(p) for p in outside.rglob("*")) == before
    assert victim.read_text() == "precious" and (tmp_path / "outside").is_dir()
    assert (store / stored.uid).is_symlink()


def test_a_complete_checkpoint_that_cannot_be_judged_is_kept_and_reported(kube_dir, store):
    stored = ingest(store, kube_dir, hours_ago=30)
    (store / stored.uid / stored.cid / "cart-api" / "manifest.json").write_text("{not json")
    code, lines, stderr = gc(store, "--retention", "1h")
    assert code == 0 and deletions(lines) == {}
    assert summary(lines)["keptUnknown"] == 1
    warning = next(json.loads(line) for line in stderr.splitlines() if stored.cid in line)
    assert warning["level"] == "warning" and warning["path"] == stored.rel and "JSON" in warning["reason"]


def test_a_store_that_cannot_be_read_exits_non_zero_with_one_line(tmp_path):
    result = lpm("gc", "--store", str(tmp_path / "missing"), "--standalone", "--once")
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "missing" in line and "does not exist" in line


def test_help_documents_the_contract():
    text = lpm("gc", "--help", check=True).stdout
    for flag in ("--store", "--once", "--interval", "--retention", "--stale-after", "--dry-run", "--standalone",
                 "--kubeconfig", "RETENTION_HOURS", "stdout", "stderr"):
        assert flag in text


def test_loop_mode_passes_every_interval_serves_metrics_and_stops_on_sigterm(kube_dir, store):
    old = ingest(store, kube_dir, hours_ago=30)
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "gc", "--store", str(store), "--standalone",
                             "--interval", "200ms", "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None and proc.stdout is not None
        port = json.loads(proc.stderr.readline())["port"]
        passes = [json.loads(proc.stdout.readline()) for _ in range(4)]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0 and time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    assert passes[0]["path"] == old.rel and passes[0]["reason"] == "retention"
    assert [line["event"] for line in passes[1:]] == ["summary"] * 3
    assert passes[1]["deleted"] == 1 and passes[2]["deleted"] == 0
    metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines()
               if line and not line.startswith("#")}
    assert metrics['lpm_gc_deletions_total{reason="retention"}'] == 1
    assert metrics["lpm_gc_freed_bytes_total"] == passes[0]["bytes"]
    assert metrics["lpm_gc_errors_total"] == 0
    assert metrics["lpm_gc_pass_duration_seconds_count"] >= 3
    assert 0 < metrics["lpm_gc_store_usage_ratio"] < 1
    assert metrics["lpm_gc_store_capacity_bytes"] >= metrics["lpm_gc_store_used_bytes"] > 0
