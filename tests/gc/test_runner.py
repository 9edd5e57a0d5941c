"""The runner's last look before each deletion, and the order it deletes in, on real directories."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.archives import Pod
from lpm_gc.collector import Collector, Settings
from lpm_gc.entries import Entry, Kind
from lpm_gc.lock import FileLock
from lpm_gc.metrics import Metrics
from lpm_gc.planner import Policy
from lpm_gc.runner import Outcome, delete
from lpm_gc.scanner import scan
from tests.gc.support import Stored, age, ingest, listed
from watcher.errors import StoreError
from watcher.store import fsio
from watcher.store import usage as usage_module

HOUR = 3600.0


@pytest.fixture
def root(store: Path) -> Iterator[int]:
    store.mkdir(mode=0o700)
    fd = fsio.open_root(store, create=False)
    yield fd
    os.close(fd)


def entry_of(root: int, stored: Stored) -> Entry:
    [found] = [e for e in scan(root).entries if e.name == stored.cid]
    return found


def test_a_pin_that_appears_after_the_scan_wins(kube_dir, store, root):
    stored = ingest(store, kube_dir, hours_ago=30)
    entry = entry_of(root, stored)
    (store / stored.uid / stored.cid / ".keep").touch()
    assert delete(root, entry, HOUR) is Outcome.PINNED
    assert listed(store) == {stored.rel}


@pytest.mark.parametrize("activity", ["completed", "written"])
def test_an_abandoned_looking_write_that_moved_since_the_scan_is_alive(kube_dir, store, root, activity):
    stored = ingest(store, kube_dir, hours_ago=1)
    checkpoint = store / stored.uid / stored.cid
    marker = (checkpoint / ".checkpoint-complete").read_bytes()
    (checkpoint / ".checkpoint-complete").unlink()
    age(checkpoint, 2 * HOUR)
    entry = entry_of(root, stored)
    assert entry.kind is Kind.INCOMPLETE
    if activity == "completed":
        (checkpoint / ".checkpoint-complete").write_bytes(marker)
        age(checkpoint, 2 * HOUR)  # an old marker: what counts is that it is there
    else:
        (checkpoint / "cart-api" / "manifest.json").touch()
    assert delete(root, entry, HOUR) is Outcome.ALIVE
    assert (checkpoint / "cart-api" / "dump.tar.zst").exists()


def test_an_empty_pod_directory_that_filled_up_is_kept(kube_dir, store, root):
    (store / "0123-pod").mkdir(mode=0o700)
    age(store / "0123-pod", 2 * HOUR)
    [entry] = scan(root).entries
    (store / "0123-pod" / "20261125T100000Z-0123abcd").mkdir()
    age(store / "0123-pod", 2 * HOUR)
    assert delete(root, entry, HOUR) is Outcome.ALIVE
    assert (store / "0123-pod" / "20261125T100000Z-0123abcd").is_dir()


def test_the_marker_goes_first_so_a_failed_deletion_is_never_a_half_checkpoint(kube_dir, store, root):
    stored = ingest(store, kube_dir, hours_ago=30)
    entry = entry_of(root, stored)
    # Something no writer makes, planted after the scan, stops the deletion half-way.
    (store / stored.uid / stored.cid / "cart-api" / "a" / "b" / "c").mkdir(parents=True)
    with pytest.raises(StoreError, match="deeper"):
        delete(root, entry, HOUR)
    assert not (store / stored.uid / stored.cid / ".checkpoint-complete").exists()
    assert listed(store) == set()  # readers no longer see it; a later pass removes it as abandoned


def test_already_gone_is_not_an_error(kube_dir, store, root):
    stored = ingest(store, kube_dir, hours_ago=30)
    entry = entry_of(root, stored)
    shutil.rmtree(store / stored.uid)
    assert delete(root, entry, HOUR) is Outcome.GONE


def test_usage_above_80_percent_is_a_warning_every_pass_and_a_metric(kube_dir, store, root, monkeypatch, caplog):
    ingest(store, kube_dir, hours_ago=1, pod=Pod(uid="dddd-4"))

    class Full:  # statvfs is the native boundary: a full volume cannot be made on demand here
        f_frsize = 4096
        f_blocks = 1000
        f_bfree = 100
        f_bavail = 50

    monkeypatch.setattr(usage_module.os, "statvfs", lambda root: Full)
    metrics = Metrics()
    out = io.StringIO()
    collector = Collector(Settings(store, Policy()), FileLock(root), metrics, out)
    with caplog.at_level(logging.WARNING, logger="lpm.gc"):
        for _ in range(2):
            asyncio.run(collector.run_pass())
    warnings = [r for r in caplog.records if "80%" in r.getMessage()]
    assert len(warnings) == 2
    summary = json.loads(out.getvalue().splitlines()[-1])
    assert summary["storeUsagePercent"] == round(900 / 950 * 100, 1)
    assert summary["storeCapacityBytes"] == 4096 * 1000 and summary["storeUsedBytes"] == 4096 * 900
    assert metrics.registry.get_sample_value("lpm_gc_store_usage_ratio") == pytest.approx(900 / 950)
