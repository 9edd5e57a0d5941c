"""Follow one PodMigration on the API until it ends: get it, watch it from that resourceVersion, again.

The watch is the source of changes; it is re-opened from a fresh GET whenever the server ends it, says
``410 Gone``, or the connection breaks (then after a short pause), so a long migration survives the API
server's watch timeouts and restarts. The caller bounds the whole with its ``--timeout``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from watcher.cluster.objects import lpm_path
from watcher.errors import ApiUnavailable, Gone, LpmError, NotFound
from watcher.kube.client import Kube
from watcher.kubectl import progress
from watcher.kubectl.progress import Outcome, Seen

WATCH_SECONDS = 60  # the server ends each watch after this; the loop opens the next one
RETRY_SECONDS = 2.0  # after the API server was unreachable
TICK_SECONDS = 0.5  # how often a terminal's bar redraws its clock between changes

Update = Seen | None | LpmError
"""What the watcher hands the display: the migration, None once it is deleted, or why following it failed."""


async def _watch(kube: Kube, namespace: str, name: str, updates: asyncio.Queue[Update]) -> None:
    try:
        while True:
            try:
                if not await _get_then_watch(kube, namespace, name, updates):
                    return
            except Gone:
                pass  # the resourceVersion is too old: the next GET starts afresh
            except ApiUnavailable:
                await asyncio.sleep(RETRY_SECONDS)
    except LpmError as err:  # forbidden, or anything else the user must see
        await updates.put(err)


async def _get_then_watch(kube: Kube, namespace: str, name: str, updates: asyncio.Queue[Update]) -> bool:
    """One GET and one watch from its resourceVersion; False once the migration is deleted."""
    try:
        migration = await kube.get(lpm_path("PodMigration", namespace, name))
    except NotFound:
        await updates.put(None)
        return False
    await updates.put(progress.seen(migration))
    query = {"fieldSelector": f"metadata.name={name}", "timeoutSeconds": str(WATCH_SECONDS),
             "resourceVersion": migration["metadata"]["resourceVersion"]}
    async for event in kube.watch(lpm_path("PodMigration", namespace), query, WATCH_SECONDS + 10):
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "DELETED":
            await updates.put(None)
            return False
        if kind == "ERROR":  # a Status; 410 Gone is the usual one, and the next GET starts afresh
            if obj.get("code") != 410:
                await asyncio.sleep(RETRY_SECONDS)
            return True
        if kind in ("ADDED", "MODIFIED"):
            await updates.put(progress.seen(obj))
    return True


class Display:
    """Where the stages go: a line each when piped; on a terminal also a bar kept on the last line."""

    def __init__(self, out: TextIO, terminal: bool) -> None:
        self.out = out
        self.terminal = terminal
        self._bar = ""

    def stage(self, state: Seen, elapsed: float) -> None:
        self._clear()
        self.out.write(progress.line(state, elapsed) + "\n")
        self.tick(state, elapsed)

    def warn(self, warning: str) -> None:
        """On stderr, as kubectl prints the API server's warnings."""
        self._clear()
        self.out.flush()
        print(f"Warning: {warning}", file=sys.stderr, flush=True)

    def moved(self, state: Seen, before: Seen, elapsed: float) -> None:
        """The bytes moved: the bar on a terminal, a line per container that moved when piped."""
        if not self.terminal:
            for line in progress.progress_lines(state, before, elapsed):
                self.out.write(line + "\n")
        self.tick(state, elapsed)

    def tick(self, state: Seen, elapsed: float) -> None:
        if self.terminal and progress.outcome(state) is Outcome.RUNNING:
            self._bar = progress.bar(state, elapsed)
            self.out.write("\r" + self._bar + "\x1b[K")
        self.out.flush()

    def close(self) -> None:
        self._clear()
        self.out.flush()

    def _clear(self) -> None:
        if self._bar:
            self.out.write("\r\x1b[K")
            self._bar = ""


async def follow(kube: Kube, namespace: str, name: str, display: Display,
                 created: str | None, clock: Callable[[], float] = time.monotonic) -> Seen | None:
    """Show each stage until the migration ends; returns its last state (None: deleted meanwhile).

    Elapsed times count from ``created`` (the object's creationTimestamp) when it is given and not in the
    future by this machine's clock, else from now."""
    offset = 0.0
    if created:
        start = progress.parse_time(created)
        if start is not None:
            offset = max(0.0, (datetime.now(UTC) - start).total_seconds())
    began = clock()
    updates: asyncio.Queue[Update] = asyncio.Queue()
    watcher = asyncio.create_task(_watch(kube, namespace, name, updates), name=f"watch {namespace}/{name}")
    state: Seen | None = None
    try:
        while True:
            try:
                update = await asyncio.wait_for(updates.get(), TICK_SECONDS if display.terminal else None)
            except TimeoutError:
                if state is not None:
                    display.tick(state, offset + clock() - began)
                continue
            if isinstance(update, LpmError):
                raise update
            if update is None:
                return None
            for warning in update.warnings:
                if state is None or warning not in state.warnings:
                    display.warn(warning)
            if state is None or update.stage != state.stage:
                display.stage(update, offset + clock() - began)
            elif update.progress != state.progress:
                display.moved(update, state, offset + clock() - began)
            state = update
            if progress.outcome(state) is not Outcome.RUNNING:
                return state
    finally:
        display.close()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

