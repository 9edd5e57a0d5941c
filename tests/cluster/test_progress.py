"""A checkpoint's progress and a migration's freeze window, as the agents write them into statuses (pure
parts, and the publisher's pacing). On the real API server and agents: tests/realstack/test_agent_cluster.py
(the kubelet path) and tests/realstack/test_real_nodes.py (containerd, through ``kubectl lpm migrate``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watcher.cluster import progress
from watcher.errors import ApiUnavailable

T0 = datetime(2026, 12, 2, 10, 0, 0, 250000, tzinfo=UTC)


def test_stamps_keep_milliseconds_and_read_back() -> None:
    assert progress.stamp(T0) == "2026-12-02T10:00:00.250Z"
    assert progress.parse_stamp("2026-12-02T10:00:00.250Z") == T0
    assert progress.parse_stamp("2026-12-02T10:00:00Z") == T0.replace(microsecond=0)
    assert progress.parse_stamp("yesterday") is None and progress.parse_stamp(7) is None


def test_the_freeze_window_grows_span_by_span_as_each_agent_stamps_its_moments() -> None:
    status: dict[str, Any] = {"freezeWindow": {"checkpointRequested": progress.stamp(T0)}}
    status["freezeWindow"] = progress.window(status, checkpointComplete=T0 + timedelta(seconds=2.5))
    assert status["freezeWindow"]["checkpointSeconds"] == 2.5 and "seconds" not in status["freezeWindow"]
    status["freezeWindow"] = progress.window(status, restoreStarted=T0 + timedelta(seconds=2.75))
    status["freezeWindow"] = progress.window(status, restoredRunning=T0 + timedelta(seconds=4.5))
    assert {k: v for k, v in status["freezeWindow"].items() if k.endswith("econds")} == {
        "seconds": 4.5, "checkpointSeconds": 2.5, "handoverSeconds": 0.25, "restoreSeconds": 1.75}


def test_a_freeze_window_missing_its_start_gives_only_the_spans_it_can() -> None:
    # The source's agent was older (no checkpointRequested): the destination's own span is still given.
    fields = progress.window({}, restoreStarted=T0, restoredRunning=T0 + timedelta(seconds=1))
    assert fields["restoreSeconds"] == 1.0 and "seconds" not in fields


def test_progress_goes_only_into_the_phase_it_was_taken_in() -> None:
    items = [{"containerName": "app", "bytesCheckpointed": 10, "bytesStored": 3, "done": False}]
    written = progress.progressed({"phase": "Checkpointing"}, "Checkpointing", items, T0)
    assert written == {"phase": "Checkpointing", "progress": items,
                       "freezeWindow": {"checkpointRequested": "2026-12-02T10:00:00.250Z"}}
    # A report late enough to find the migration further on writes nothing.
    assert progress.progressed({"phase": "CheckpointComplete"}, "Checkpointing", items, T0) is None


def test_snapshot_gives_totals_once_known_and_the_rate_from_the_first_byte() -> None:
    done = progress.Progress.of(["app", "db"])
    done.containers["app"].tally.read, done.containers["app"].tally.written = 300, 100
    done.containers["app"].total = 200  # the file grew after it was measured: never less than was read
    assert progress.snapshot(done, {"app": 10.0}, 13.0) == [
        {"containerName": "app", "bytesCheckpointed": 300, "bytesStored": 100, "done": False, "bytesTotal": 300,
         "bytesPerSecond": 100},
        {"containerName": "db", "bytesCheckpointed": 0, "bytesStored": 0, "done": False}]


@pytest.mark.asyncio
async def test_publish_reports_changes_at_its_pace_and_a_last_time_and_retries_a_failed_write() -> None:
    done = progress.Progress.of(["app"])
    reports: list[tuple[list[dict[str, Any]], datetime | None]] = []
    failures = [ApiUnavailable("the API server went away (test)", 503)]

    async def report(items: list[dict[str, Any]], requested: datetime | None) -> None:
        if failures:
            raise failures.pop()
        reports.append((items, requested))

    async def until(what: str, check: Any) -> None:
        for _ in range(500):
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}; reports: {reports}, failures left: {failures}")

    stop = asyncio.Event()
    publisher = asyncio.create_task(progress.publish(done, report, stop, interval=0.05))
    await until("the first report, failed, to be written at a later turn", lambda: reports)
    assert reports == [([{"containerName": "app", "bytesCheckpointed": 0, "bytesStored": 0, "done": False}], None)]
    done.requested = T0
    done.containers["app"].tally.read = 4096
    await until("the bytes to be reported", lambda: len(reports) >= 2)
    done.containers["app"].done = True
    stop.set()
    await asyncio.wait_for(publisher, 2)
    assert reports[1][1] == T0 and reports[1][0][0]["bytesCheckpointed"] == 4096
    assert reports[-1][0][0]["done"] is True  # the last state is always written
    assert all(a != b for a, b in zip(reports, reports[1:], strict=False)), reports  # no repeats
