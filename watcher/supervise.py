"""One supervisor for the agent's background tasks: none of them dies without a word.

Before it, each mode kept its own list of tasks: in standalone mode a staging sweeper or mover that
raised something unexpected (an ESTALE from a listing, not mapped into lpm's errors) simply ended,
and nothing said so until shutdown gathered its exception. Now a task that raises is logged with
its traceback, counted (``lpm_task_restarts_total{task=...}``) and started again after a backoff.
One that keeps failing - ``FAILING_AFTER`` failures in a row, none of the runs in between lasting
``RECOVERED_AFTER`` seconds - makes ``/healthz`` fail, so the kubelet restarts the container: the
deliberate form of what a silent death used to be. A task that returns, or is cancelled, is done:
tasks return when ``stop`` is set, and shutdown cancels what is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from watcher.backoff import Backoff

log = logging.getLogger("lpm.agent")

FAILING_AFTER = 3
RECOVERED_AFTER = 60.0
"""Seconds a restarted task must run before its earlier failures stop counting."""


class TaskHealth:
    """What /healthz and /metrics read: who keeps failing, and every restart as it happens."""

    def __init__(self, failing_after: int = FAILING_AFTER, recovered_after: float = RECOVERED_AFTER) -> None:
        self.failing_after = failing_after
        self.recovered_after = recovered_after
        self._failures: dict[str, int] = {}
        self._since: dict[str, float] = {}
        self.listeners: list[Callable[[str, int], None]] = []
        """Called with (task name, 1) on every restart, and (name, 0) when a task is first started: the
        metrics counter, whose series then exists from the start (so increase() sees the first restart)."""

    def started(self, name: str) -> None:
        if name not in self._failures:
            self._failures[name] = 0
            for listener in self.listeners:
                listener(name, 0)
        self._since[name] = time.monotonic()

    def failed(self, name: str) -> int:
        """Count a failure of the run that began at ``started``; returns the failures in a row."""
        if time.monotonic() - self._since[name] >= self.recovered_after:
            self._failures[name] = 0  # that run had recovered: this is a new story
        self._failures[name] += 1
        for listener in self.listeners:
            listener(name, 1)
        return self._failures[name]

    def failing(self) -> list[str]:
        """Why the agent is unhealthy: each task that failed too often in a row and has not run well since."""
        now = time.monotonic()
        return sorted(f"task {name!r} keeps failing ({count} failures in a row)"
                      for name, count in self._failures.items()
                      if count >= self.failing_after and now - self._since[name] < self.recovered_after)


class Supervisor:
    def __init__(self, health: TaskHealth, backoff: Backoff = Backoff(base=1.0, cap=60.0)) -> None:
        self._health = health
        self._backoff = backoff
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` as the task ``name``, calling it again whenever it raises."""
        self._tasks.append(asyncio.create_task(self._supervise(name, run), name=name))

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        while True:
            self._health.started(name)
            try:
                await run()
                return
            except Exception:  # anything: lpm's own errors a task did not handle are just as fatal to it
                failures = self._health.failed(name)
                delay = self._backoff.delay(failures)
                log.exception("background task failed; restarting it", extra={"fields": {
                    "task": name, "failuresInARow": failures, "restartInSeconds": round(delay, 2)}})
            await asyncio.sleep(delay)

    async def close(self, grace: float) -> None:
        """Give the tasks ``grace`` seconds to return (``stop`` is set), then cancel the rest."""
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
