"""The runner around ``Stability``: watch the kubelet checkpoint directory and ingest.

Filesystem events are hints (watchfiles batches and debounces them, and "added" does not
mean "finished"): every decision is taken on a fresh ``stat``. A periodic full rescan
covers anything a hint missed. With ``force_polling`` watchfiles polls instead of using
inotify, which network filesystems need (inotify never sees another client's writes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from watcher.archive import names
from watcher.archive.stamp import ArchiveStamp, stamp_of
from watcher.watch.stability import Outcome, Stability

log = logging.getLogger(__name__)

IngestFn = Callable[[Path, ArchiveStamp], Awaitable[Outcome]]
GiveUpFn = Callable[[Path, float], None]
"""Told of an archive given up on: its path and the seconds it stayed unfinished and unchanged."""


def _log_given_up(path: Path, seconds: float) -> None:
    log.warning("archive never finished; refused", extra={"fields": {
        "archive": path.name, "unchangedSeconds": round(seconds, 1)}})


@dataclass(frozen=True)
class WatchSettings:
    directory: Path
    """The kubelet's checkpoint directory."""
    debounce: float = 2.0
    """Seconds an archive's size and mtime must hold still before it is read."""
    force_polling: bool = False
    """Poll instead of inotify (network filesystems)."""
    poll_interval: float = 1.0
    """Seconds between polls when polling."""
    rescan_interval: float = 30.0
    """Seconds between full directory listings, whatever the events said."""
    max_parallel: int = 1
    """Archives ingested at once; compression already uses the node's cores."""
    give_up_after: float = 600.0
    """Seconds an archive may stay unfinished (no end-of-archive blocks) without changing before it is
    refused; a rewrite of it is looked at afresh."""


_FIRST_RESCAN = 2.0
"""Seconds after start to list the directory again (see ``watch_directory``)."""


async def watch_directory(settings: WatchSettings, ingest: IngestFn, stop: asyncio.Event,
                          given_up: GiveUpFn = _log_given_up) -> None:
    """Ingest every finished archive in the directory, present at start or arriving later."""
    await _wait_for_directory(settings, stop)
    if stop.is_set():
        return
    plan = Stability(window=settings.debounce, give_up_after=settings.give_up_after)
    hints: asyncio.Queue[set[str]] = asyncio.Queue()
    watcher = asyncio.create_task(_pump_events(settings, hints, stop), name="checkpoint-dir-events")
    slots = asyncio.Semaphore(settings.max_parallel)
    running: set[asyncio.Task[None]] = set()
    wake = asyncio.Event()

    async def attempt(name: str) -> None:
        path = settings.directory / name
        async with slots:
            stamp = stamp_of(path)
            if stamp is None:
                plan.observe(name, None, time.monotonic())
                return
            outcome = await ingest(path, stamp)
        delay = plan.finished(name, stamp, outcome, time.monotonic())
        if delay is not None:
            log.warning("will retry archive", extra={"fields": {"archive": name, "retryInSeconds": delay}})
        wake.set()

    def look(candidates: set[str]) -> None:
        now = time.monotonic()
        for name in candidates:
            plan.observe(name, stamp_of(settings.directory / name), now)

    look(_list(settings.directory))
    # The inotify watch is registered later, when the watcher task first runs: an archive created in
    # between raises no event. So the first rescan comes soon instead of a whole interval later.
    next_rescan = time.monotonic() + min(settings.rescan_interval, _FIRST_RESCAN)
    try:
        while not stop.is_set():
            if watcher.done():
                watcher.result()  # re-raise: the supervisor decides what a dead watch means
            now = time.monotonic()
            look(set(plan.pending()))
            if now >= next_rescan:
                look(_list(settings.directory))
                next_rescan = now + settings.rescan_interval
            for name in plan.ready(now):
                task = asyncio.create_task(attempt(name), name=f"ingest {name}")
                running.add(task)
                task.add_done_callback(running.discard)
            for name, seconds in plan.given_up(now):
                given_up(settings.directory / name, seconds)
            timeout = min(plan.next_wakeup(time.monotonic()) or settings.rescan_interval,
                          next_rescan - time.monotonic())
            await _wait_any(hints, wake, stop, max(0.05, timeout), look)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, *running, return_exceptions=True)


async def _wait_any(
    hints: asyncio.Queue[set[str]],
    wake: asyncio.Event,
    stop: asyncio.Event,
    timeout: float,
    look: Callable[[set[str]], None],
) -> None:
    hint = asyncio.ensure_future(hints.get())
    waiters = [hint, asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    wake.clear()
    if hint.done() and not hint.cancelled():
        look(hint.result())
    while not hints.empty():
        look(hints.get_nowait())


async def _pump_events(settings: WatchSettings, hints: asyncio.Queue[set[str]], stop: asyncio.Event) -> None:
    async for changes in watchfiles.awatch(
        settings.directory,
        watch_filter=lambda _change, path: names.is_candidate(os.path.basename(path)),
        recursive=False,
        force_polling=settings.force_polling,
        poll_delay_ms=int(settings.poll_interval * 1000),
        # watchfiles' own debounce only batches hints; readiness is Stability's call.
        debounce=200,
        step=50,
        stop_event=stop,
        ignore_permission_denied=True,
    ):
        await hints.put({os.path.basename(path) for _change, path in changes})


def _list(directory: Path) -> set[str]:
    try:
        return {name for name in os.listdir(directory) if names.is_candidate(name)}
    except OSError as err:
        log.error("cannot list checkpoint directory",
                  extra={"fields": {"directory": str(directory), "reason": err.strerror}})
        return set()


async def _wait_for_directory(settings: WatchSettings, stop: asyncio.Event) -> None:
    """The kubelet makes its checkpoint directory on first use; wait for it, saying so once."""
    if settings.directory.is_dir():
        return
    log.warning("checkpoint directory does not exist yet; waiting for it",
                extra={"fields": {"directory": str(settings.directory)}})
    while not settings.directory.is_dir():
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.poll_interval)
            return
        except TimeoutError:
            continue
