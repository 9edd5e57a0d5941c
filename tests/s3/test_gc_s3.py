"""The collector over an S3 store, and a server that goes away mid-upload, against a real S3 server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab.archives import ArchiveSpec, Pod, make_archive
from lab.controlplane import REPO
from lab.s3server import S3Server
from tests.s3.conftest import Bucket
from tests.support import lpm


def _gc(url: str, *flags: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    result = lpm("gc", "--store", url, "--standalone", "--once", *flags, check=True)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and lines[-1]["event"] == "summary", result
    return lines[:-1], lines[-1]


def test_the_collectors_rules_over_a_bucket(bucket: Bucket, archive_dir: Path) -> None:
    old = make_archive(archive_dir, ArchiveSpec(memory=1 << 20))  # taken 2026-11-25: days old
    uri = lpm("ingest", str(old), "--store", bucket.url, "--node", "node-a", check=True).stdout.strip()
    uid, cid = uri.removeprefix("shared://").split("/")[:2]
    # Things no collector may judge: a key no writer makes. A write in progress: a checkpoint without its marker.
    bucket.call("put_object", Key="checkpoints/notes.txt", Body=b"an operator's file")
    fresh = f"checkpoints/{Pod().uid}/20261202T000000Z-0000abcd/cart-api/manifest.json"
    bucket.call("put_object", Key=fresh, Body=b"{}")

    deletions, summary = _gc(bucket.url, "--retention", "1000h")
    assert deletions == [] and summary["keptUnknown"] == 1 and summary["deleted"] == 0, (deletions, summary)

    # Pinned: kept past its retention, and said so.
    bucket.call("put_object", Key=f"checkpoints/{uid}/{cid}/.keep", Body=b"")
    deletions, summary = _gc(bucket.url, "--retention", "24h")
    assert deletions == [] and summary["keptPinned"] == 1, (deletions, summary)
    bucket.call("delete_object", Key=f"checkpoints/{uid}/{cid}/.keep")

    # A dry run names what it would delete and deletes nothing.
    deletions, summary = _gc(bucket.url, "--retention", "24h", "--dry-run")
    assert [(d["reason"], d["path"]) for d in deletions] == [("retention", f"{uid}/{cid}")], deletions
    assert len(bucket.keys()) == 5, bucket.keys()

    time.sleep(1.5)
    deletions, summary = _gc(bucket.url, "--retention", "24h", "--stale-after", "1s")
    assert sorted((d["reason"], d["path"]) for d in deletions) == sorted([
        ("retention", f"{uid}/{cid}"), ("abandoned", f"{Pod().uid}/20261202T000000Z-0000abcd")]), deletions
    assert summary["keptUnknown"] == 1 and summary["errors"] == 0, summary
    # Only the operator's file is left, and the collector's lock is released.
    assert bucket.keys() == ["checkpoints/notes.txt"], bucket.keys()
    assert lpm("store", "ls", "--store", bucket.url, check=True).stdout == ""


def test_a_server_gone_mid_upload_publishes_nothing_and_the_collector_aborts_the_upload(
        own_server: S3Server, archive_dir: Path) -> None:
    bucket = Bucket(own_server, "lpm-crash")
    bucket.create()
    archive = make_archive(archive_dir, ArchiveSpec(memory=192 << 20))  # ~64 MiB stored: four parts
    ingest = subprocess.Popen([sys.executable, "-m", "watcher", "ingest", str(archive), "--store", bucket.url,
                               "--node", "node-a"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 60
        while not bucket.uploads():
            assert ingest.poll() is None, ingest.communicate()
            assert time.monotonic() < deadline, "the ingest started no multipart upload within 60 s"
            time.sleep(0.05)
        time.sleep(0.5)  # a part or two on its way
        own_server.kill()
        out, err = ingest.communicate(timeout=120)
    finally:
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait()
    assert ingest.returncode == 1 and "unreachable or went away" in err, (ingest.returncode, out, err)
    assert out == ""
    own_server.start()
    # Nothing published: no marker, no manifest, no dump; what is left is the upload the server kept.
    assert bucket.keys() == [], bucket.keys()
    [left] = bucket.uploads()
    assert left.startswith("checkpoints/.ingest/node-a/staging/"), left
    assert lpm("store", "ls", "--store", bucket.url, check=True).stdout == ""

    deletions, summary = _gc(bucket.url)  # --stale-after 1h: a fresh upload may be a live one
    assert deletions == [] and bucket.uploads() == [left], (deletions, summary)
    time.sleep(1.5)
    deletions, summary = _gc(bucket.url, "--stale-after", "1s")
    assert [(d["reason"], d["kind"], d["path"]) for d in deletions] == [("abandoned-upload", "upload", left)], \
        deletions
    assert bucket.uploads() == [] and bucket.keys() == [], (bucket.uploads(), bucket.keys())
    # And the same archive ingests now that the server is back.
    uri = lpm("ingest", str(archive), "--store", bucket.url, "--node", "node-a", check=True).stdout.strip()
    assert uri.startswith(f"shared://{Pod().uid}/")
