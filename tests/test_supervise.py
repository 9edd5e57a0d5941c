"""The supervisor of the agent's background tasks, on a real event loop and real HTTP endpoints."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from watcher.backoff import Backoff
from watcher.observe import AgentMetrics, Readiness, serving
from watcher.stores import Stores
from watcher.supervise import Supervisor, TaskHealth


async def _healthz(port: int) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as response:
        return response.status, await response.text()


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def test_a_failing_task_is_logged_counted_restarted_and_fails_healthz_until_it_recovers(tmp_path, caplog):
    metrics = AgentMetrics(tmp_path / "shared", tasks=TaskHealth(failing_after=3, recovered_after=0.5))
    stores = Stores(tmp_path / "shared", tmp_path / "local", "node-a")
    runs: list[float] = []

    async def flaky(stop: asyncio.Event) -> None:
        runs.append(time.monotonic())
        if len(runs) <= 3:
            raise RuntimeError(f"boom {len(runs)}")
        await stop.wait()

    def restarts(task: str) -> float | None:
        return metrics.registry.get_sample_value("lpm_task_restarts_total", {"task": task})

    async def scenario() -> list[tuple[int, str]]:
        stop = asyncio.Event()
        seen = []
        async with serving(0, metrics, Readiness.of(stores)) as port:
            supervisor = Supervisor(metrics.tasks, Backoff(base=0.02, cap=0.05))
            supervisor.start("flaky", lambda: flaky(stop))
            supervisor.start("steady", stop.wait)
            await _until(lambda: len(runs) == 4)
            seen.append(await _healthz(port))  # just restarted after its third failure in a row
            await asyncio.sleep(0.6)  # the fourth run has lasted longer than recovered_after
            seen.append(await _healthz(port))
            stop.set()
            started = time.monotonic()
            await supervisor.close(grace=1.0)
            assert time.monotonic() - started < 0.5  # both returned on stop; nothing waited for the grace
        return seen

    seen = asyncio.run(scenario())
    assert seen == [(503, "task 'flaky' keeps failing (3 failures in a row)\n"), (200, "ok\n")], seen
    assert (restarts("flaky"), restarts("steady")) == (3.0, 0.0)
    failed = [r for r in caplog.records if r.getMessage() == "background task failed; restarting it"]
    assert [(r.fields["task"], r.fields["failuresInARow"]) for r in failed] == [("flaky", 1), ("flaky", 2),
                                                                               ("flaky", 3)]
    assert [str(r.exc_info[1]) for r in failed] == ["boom 1", "boom 2", "boom 3"]  # with its traceback
    assert all(r.levelno == logging.ERROR for r in failed)


def test_close_cancels_a_task_that_does_not_return_within_the_grace():
    health = TaskHealth()

    async def scenario() -> float:
        supervisor = Supervisor(health)
        supervisor.start("stubborn", lambda: asyncio.sleep(3600))
        await asyncio.sleep(0)
        started = time.monotonic()
        await supervisor.close(grace=0.2)
        return time.monotonic() - started

    assert 0.2 <= asyncio.run(scenario()) < 1.0
    assert health.failing() == []  # cancelled at shutdown is not a failure
