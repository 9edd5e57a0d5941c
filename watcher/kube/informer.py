"""List, then watch from the list's resourceVersion; relist on 410; back off on trouble.

kubernetes-asyncio's ``Watch`` retries a 410 once with the same stale version and then
raises, so lpm owns the loop (as kopf does): three nested levels — forever with backoff;
list then watch, advancing the version on every event and BOOKMARK; one HTTP stream with a
server-side timeout. Handlers are level-triggered reconcilers: they read an object's state
and act idempotently, so a relist that replays every object does no duplicate work.

Events go to one worker per object, which sees that object's events in order; a burst of
events for one object is coalesced to the newest, which is all a reconciler needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from watcher.backoff import Backoff
from watcher.errors import ApiError, Gone, LpmError
from watcher.kube.client import Kube

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Resource:
    path: str
    """Collection path, e.g. /api/v1/pods or /apis/lpm.my.domain/v1/podmigrations."""
    query: Mapping[str, str] = field(default_factory=dict)
    """Selectors for both the list and the watch (fieldSelector, labelSelector)."""


def object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


class Workers:
    """One sequential worker per object key; newest event wins while a worker is busy."""

    def __init__(self, name: str, handler: Handler, retry: Backoff = Backoff(1.0, 30.0), attempts: int = 6) -> None:
        self._name = name
        self._handler = handler
        self._retry = retry
        self._attempts = attempts
        self._pending: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def submit_later(self, delay: float, event: str, obj: dict[str, Any]) -> None:
        """``submit`` after ``delay`` seconds, for a state no watch event will announce (one timer per
        object: a newer one replaces it)."""
        key = object_key(obj)
        if (old := self._timers.pop(key, None)) is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.submit(event, obj)

        self._timers[key] = asyncio.get_running_loop().call_later(delay, fire)

    def submit(self, event: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        self._pending[key] = (event, obj)
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._work(key), name=f"{self._name} {key[0]}/{key[1]}")

    async def _work(self, key: tuple[str, str]) -> None:
        try:
            while key in self._pending:
                event, obj = self._pending.pop(key)
                await self._handle(key, event, obj)
        finally:
            del self._tasks[key]

    async def _handle(self, key: tuple[str, str], event: str, obj: dict[str, Any]) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                await self._handler(event, obj)
                return
            except Exception as err:  # noqa: BLE001 - a worker must outlive a bug in one reconcile
                if not isinstance(err, LpmError):
                    # Not an outcome lpm knows (a bug, a library error nobody mapped): said with its traceback,
                    # then handled like any failure, so the object is not dropped without a word.
                    log.exception("object handler failed unexpectedly", extra={"fields": {
                        "worker": self._name, "object": "/".join(key), "reason": f"{type(err).__name__}: {err}"}})
                if key in self._pending:
                    return  # a newer version of the object arrived: reconcile that instead
                if attempt == self._attempts:
                    log.error("giving up on object", extra={"fields": {
                        "worker": self._name, "object": "/".join(key), "reason": str(err)}})
                    return
                delay = self._retry.delay(attempt)
                log.warning("retrying object", extra={"fields": {
                    "worker": self._name, "object": "/".join(key), "reason": str(err),
                    "retryInSeconds": round(delay, 2)}})
                await asyncio.sleep(delay)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def informer(
    kube: Kube,
    resource: Resource,
    handler: Callable[[str, dict[str, Any]], None],
    stop: asyncio.Event,
    synced: asyncio.Event | None = None,
    watch_timeout: int = 300,
    backoff: Backoff = Backoff(),
) -> None:
    """Feed ``handler(event_type, object)`` forever: SYNC for listed objects, then watch events."""
    version: str | None = None
    attempt = 0
    while not stop.is_set():
        try:
            if version is None:
                listing = await kube.get(resource.path, resource.query)
                version = listing["metadata"]["resourceVersion"]
                for item in listing.get("items", []):
                    handler("SYNC", item)
                if synced is not None:
                    synced.set()
            query = {**resource.query, "resourceVersion": version, "allowWatchBookmarks": "true",
                     "timeoutSeconds": str(watch_timeout)}
            async for event in _until(stop, kube.watch(resource.path, query, timeout=watch_timeout + 30)):
                kind, obj = event.get("type"), event.get("object", {})
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(f"WATCH {resource.path}: {obj.get('message', 'too old resource version')}", 410)
                    raise ApiError(f"WATCH {resource.path}: {obj.get('message', obj)}", int(obj.get("code") or 0))
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if kind != "BOOKMARK":
                    handler(str(kind), obj)
            attempt = 0  # the stream ended normally (server-side timeout): watch again
        except Gone:
            log.info("watch expired; relisting", extra={"fields": {"resource": resource.path}})
            version = None
        except ApiError as err:
            attempt += 1
            delay = backoff.delay(attempt)
            log.warning("API trouble; will retry", extra={"fields": {
                "resource": resource.path, "reason": str(err), "retryInSeconds": round(delay, 2)}})
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass


async def _until(stop: asyncio.Event, stream: Any) -> Any:
    """Yield from an async iterator until ``stop`` is set, without waiting for its next item."""
    iterator = stream.__aiter__()
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while True:
            step = asyncio.ensure_future(iterator.__anext__())
            await asyncio.wait([step, stopper], return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
                return
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        stopper.cancel()
        await iterator.aclose()
