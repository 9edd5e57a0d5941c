"""The watch machinery (watcher/kube/informer.py): Backoff, Workers, and the informer loop.

The informer talks to a real aiohttp server on 127.0.0.1 that speaks the list/watch protocol (a list
with a resourceVersion; ``watch=true`` streams one JSON event per line), through the agent's own
``Kube`` client: nothing is patched. Every test ends with no task of its own left running.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from kubernetes_asyncio.client import ApiClient, Configuration

from watcher.errors import ApiUnavailable, LpmError
from watcher.kube.client import Kube
from watcher.kube.informer import Backoff, Resource, Workers, informer

PODS = "/api/v1/pods"


# --- Backoff -------------------------------------------------------------------------------------


class _Ends:
    """An rng whose ``uniform`` returns the interval it was asked to draw from."""

    def uniform(self, low: float, high: float) -> tuple[float, float]:  # type: ignore[override]
        return low, high


def test_backoff_doubles_from_base_to_cap_and_draws_from_the_upper_half() -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert [backoff.delay(attempt, _Ends()) for attempt in range(1, 10)] == \
        [(c / 2, c) for c in ceilings]  # type: ignore[comparison-overlap]
    assert backoff.delay(0, _Ends()) == backoff.delay(-3, _Ends()) == (0.25, 0.5)  # type: ignore[comparison-overlap]
    assert Backoff(base=1.0, cap=60.0).delay(200, _Ends()) == (30.0, 60.0)  # no overflow far out


def test_backoff_delays_stay_inside_their_interval_with_the_default_rng() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    for attempt in range(1, 8):
        ceiling = min(8.0, 2.0 ** (attempt - 1))
        assert all(ceiling / 2 <= backoff.delay(attempt) <= ceiling for _ in range(200))


# --- Workers -------------------------------------------------------------------------------------


def _obj(name: str, version: int, namespace: str = "ns") -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "resourceVersion": str(version)}}


def _version(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def _own_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def _until(condition: Any, timeout: float = 5.0) -> None:
    """Poll ``condition`` (state of the code under test, which has no event to wait on) until it holds."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_workers_handle_one_objects_events_in_order_one_at_a_time_and_coalesce_a_burst() -> None:
    seen: list[tuple[str, int]] = []
    busy = 0
    release = asyncio.Event()

    async def handler(event: str, obj: dict[str, Any]) -> None:
        nonlocal busy
        busy += 1
        assert busy == 1, "two events of one object handled at once"
        seen.append((event, _version(obj)))
        if len(seen) == 1:
            await release.wait()
        busy -= 1

    workers = Workers("test", handler)
    workers.submit("ADDED", _obj("a", 1))
    await _until(lambda: seen == [("ADDED", 1)])
    for version in (2, 3, 4):  # while the first is handled: only the newest matters
        workers.submit("MODIFIED", _obj("a", version))
    release.set()
    await _until(lambda: not _own_tasks())
    assert seen == [("ADDED", 1), ("MODIFIED", 4)]
    await workers.close()


@pytest.mark.asyncio
async def test_workers_handle_different_objects_concurrently() -> None:
    inside: set[str] = set()
    all_in = asyncio.Event()

    async def handler(event: str, obj: dict[str, Any]) -> None:
        inside.add(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}")
        if len(inside) == 3:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 5)  # each waits for the others: only concurrency gets past

    workers = Workers("test", handler)
    workers.submit("ADDED", _obj("a", 1))
    workers.submit("ADDED", _obj("b", 1))
    workers.submit("ADDED", _obj("a", 1, namespace="other"))  # another namespace: another object
    await _until(lambda: not _own_tasks())
    assert inside == {"ns/a", "ns/b", "other/a"} and all_in.is_set()
    await workers.close()


@pytest.mark.asyncio
async def test_workers_retry_an_lpm_error_a_bounded_number_of_times_then_give_up_saying_so(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def handler(event: str, obj: dict[str, Any]) -> None:
        calls.append(_version(obj))
        raise ApiUnavailable("GET /x: 503 try later", 503)

    workers = Workers("test", handler, retry=Backoff(0.001, 0.002), attempts=4)
    with caplog.at_level(logging.WARNING, logger="watcher.kube.informer"):
        workers.submit("ADDED", _obj("a", 7))
        await _until(lambda: not _own_tasks())
    assert calls == [7, 7, 7, 7]
    assert [r.getMessage() for r in caplog.records] == ["retrying object"] * 3 + ["giving up on object"]
    gave_up = caplog.records[-1]
    assert gave_up.levelno == logging.ERROR
    assert gave_up.fields == {"worker": "test", "object": "ns/a", "reason": "GET /x: 503 try later"}  # type: ignore[attr-defined]
    await workers.close()


@pytest.mark.asyncio
async def test_a_handlers_unexpected_exception_is_logged_with_its_traceback_and_retried_not_silent(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def handler(event: str, obj: dict[str, Any]) -> None:
        calls.append(_version(obj))
        if len(calls) == 1:
            raise KeyError("status")  # a bug in one reconcile
    workers = Workers("test", handler, retry=Backoff(0.001, 0.002), attempts=3)
    with caplog.at_level(logging.WARNING, logger="watcher.kube.informer"):
        workers.submit("ADDED", _obj("a", 7))
        await _until(lambda: not _own_tasks())
    assert calls == [7, 7]  # retried, and the worker lived on to succeed
    unexpected = caplog.records[0]
    assert unexpected.getMessage() == "object handler failed unexpectedly" and unexpected.exc_info is not None
    assert unexpected.fields["reason"] == "KeyError: 'status'"  # type: ignore[attr-defined]
    assert [r.getMessage() for r in caplog.records[1:]] == ["retrying object"]
    workers.submit("MODIFIED", _obj("a", 8))  # and the object's next event is still handled
    await _until(lambda: not _own_tasks())
    assert calls == [7, 7, 8]
    await workers.close()


@pytest.mark.asyncio
async def test_workers_drop_a_failing_version_for_a_newer_one_instead_of_retrying_it() -> None:
    calls: list[int] = []
    workers: Workers

    async def handler(event: str, obj: dict[str, Any]) -> None:
        calls.append(_version(obj))
        if _version(obj) == 1:
            workers.submit("MODIFIED", _obj("a", 2))  # a newer version arrives meanwhile
            raise LpmError("conflict")

    workers = Workers("test", handler, retry=Backoff(10.0, 10.0))  # a retry would outlast the test
    workers.submit("ADDED", _obj("a", 1))
    await _until(lambda: not _own_tasks())
    assert calls == [1, 2]
    await workers.close()


@pytest.mark.asyncio
async def test_submit_later_fires_once_with_the_newest_and_close_cancels_timers_and_workers() -> None:
    calls: list[tuple[str, int]] = []
    forever = asyncio.Event()

    async def handler(event: str, obj: dict[str, Any]) -> None:
        calls.append((event, _version(obj)))
        if obj["metadata"]["name"] == "stuck":
            await forever.wait()

    workers = Workers("test", handler)
    workers.submit_later(0.05, "RECHECK", _obj("a", 1))
    workers.submit_later(0.10, "RECHECK", _obj("a", 2))  # replaces the first timer
    await _until(lambda: calls != [])
    assert calls == [("RECHECK", 2)]  # the replaced timer, due first, did not fire
    workers.submit("ADDED", _obj("stuck", 3))
    workers.submit_later(0.05, "RECHECK", _obj("b", 4))
    await _until(lambda: ("ADDED", 3) in calls)
    await workers.close()
    assert not _own_tasks()  # the stuck worker was cancelled
    await asyncio.sleep(0.1)  # past the cancelled timer's time: proving an absence takes waiting
    assert calls == [("RECHECK", 2), ("ADDED", 3)]


# --- the informer, against a loopback API server ------------------------------------------------


@dataclass
class Script:
    """What the loopback server answers: each list and each watch request takes the next entry."""

    lists: list[dict[str, Any]]
    watches: list[list[dict[str, Any]] | int]
    """Per watch request: events to stream, then the stream ends; or an HTTP status to fail it with.
    Past the last entry a watch stays open, sending nothing, until the server stops."""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Loopback:
    script: Script
    kube: Kube


def listing(version: str, *names: str) -> dict[str, Any]:
    return {"kind": "PodList", "metadata": {"resourceVersion": version},
            "items": [_pod(name, version) for name in names]}


def _pod(name: str, version: str) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


async def _serve(script: Script) -> AsyncIterator[int]:
    async def pods(request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        watching = query.get("watch") == "true"
        script.requests.append(("WATCH" if watching else "LIST", query))
        if not watching:
            return web.json_response(script.lists.pop(0))
        step = script.watches.pop(0) if script.watches else []
        if isinstance(step, int):
            return web.json_response({"kind": "Status", "code": step, "message": f"status {step}"}, status=step)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for event in step:
            await response.write(json.dumps(event).encode() + b"\n")
        if not step and not script.watches:
            await script.closed.wait()  # the last watch: idle, as a quiet resource's is
        return response

    app = web.Application()
    app.router.add_get(PODS, pods)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        script.closed.set()
        await runner.cleanup()


@pytest_asyncio.fixture
async def loopback(request: pytest.FixtureRequest) -> AsyncIterator[Loopback]:
    script: Script = request.param()
    server = _serve(script)
    port = await server.__anext__()
    kube = Kube(ApiClient(Configuration(host=f"http://127.0.0.1:{port}")))
    try:
        yield Loopback(script, kube)
    finally:
        await kube.client.close()
        await server.aclose()
    assert not _own_tasks(), _own_tasks()


async def _run_until(lb: Loopback, requests: int, **kwargs: Any) -> list[tuple[str, str]]:
    """Run the informer until the server has had ``requests`` requests and the last watch is idle;
    stop it; return what the handler was given: (event type, name@version) each."""
    seen: list[tuple[str, str]] = []
    stop = asyncio.Event()
    synced = asyncio.Event()

    def handler(event: str, obj: dict[str, Any]) -> None:
        seen.append((event, f"{obj['metadata']['name']}@{obj['metadata']['resourceVersion']}"))

    task = asyncio.create_task(informer(lb.kube, Resource(PODS, {"fieldSelector": "spec.nodeName=node-a"}),
                                        handler, stop, synced, watch_timeout=60, **kwargs))
    # The script's last watch stays open and silent: once it is asked, nothing more can come.
    await _until(lambda: len(lb.script.requests) >= requests)
    assert synced.is_set()
    stop.set()
    async with asyncio.timeout(2):  # stop ends even a watch that sends nothing
        await task
    return seen


def _asked(script: Script) -> list[tuple[str, str | None]]:
    """Each request: LIST or WATCH, and the resourceVersion it asked from."""
    return [(kind, query.get("resourceVersion")) for kind, query in script.requests]


@pytest.mark.asyncio
@pytest.mark.parametrize("loopback", [lambda: Script(
    lists=[listing("10", "a")],
    watches=[[{"type": "ADDED", "object": _pod("b", "11")},
              {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "15"}}}],
             []],
)], indirect=True)
async def test_a_bookmark_moves_the_version_on_and_is_not_an_event(loopback: Loopback) -> None:
    seen = await _run_until(loopback, 3)
    assert seen == [("SYNC", "a@10"), ("ADDED", "b@11")]
    # The stream ended (the server's timeout): watched again from the bookmark's version, not relisted.
    assert _asked(loopback.script) == [("LIST", None), ("WATCH", "10"), ("WATCH", "15")]
    watch = loopback.script.requests[1][1]
    assert watch == {"fieldSelector": "spec.nodeName=node-a", "resourceVersion": "10",
                     "allowWatchBookmarks": "true", "timeoutSeconds": "60", "watch": "true"}


@pytest.mark.asyncio
@pytest.mark.parametrize("loopback", [lambda: Script(
    lists=[listing("10", "a"), listing("20", "a", "c")],
    watches=[[{"type": "MODIFIED", "object": _pod("a", "12")},
              {"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                           "message": "too old resource version: 12 (19)"}}],
             []],
)], indirect=True)
async def test_an_error_event_410_relists_and_watches_from_the_new_list(
        loopback: Loopback, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="watcher.kube.informer"):
        seen = await _run_until(loopback, 4)
    assert seen == [("SYNC", "a@10"), ("MODIFIED", "a@12"), ("SYNC", "a@20"), ("SYNC", "c@20")]
    assert _asked(loopback.script) == [("LIST", None), ("WATCH", "10"), ("LIST", None), ("WATCH", "20")]
    assert [r.getMessage() for r in caplog.records] == ["watch expired; relisting"]


@pytest.mark.asyncio
@pytest.mark.parametrize("loopback", [lambda: Script(lists=[listing("10", "a"), listing("30")], watches=[410, []])],
                         indirect=True)
async def test_a_watch_answered_410_gone_relists(loopback: Loopback) -> None:
    seen = await _run_until(loopback, 4)
    assert seen == [("SYNC", "a@10")]  # the relist found a gone: no object left to replay
    assert _asked(loopback.script) == [("LIST", None), ("WATCH", "10"), ("LIST", None), ("WATCH", "30")]


@pytest.mark.asyncio
@pytest.mark.parametrize("loopback", [lambda: Script(
    lists=[listing("10", "a")],
    watches=[[{"type": "ADDED", "object": _pod("b", "11")},
              {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcdserver: leader changed"}}],
             [{"type": "ERROR", "object": {"kind": "Status", "message": "no code at all"}}],
             503,
             []],
)], indirect=True)
async def test_other_errors_back_off_and_watch_again_from_the_last_version_without_relisting(
        loopback: Loopback, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="watcher.kube.informer"):
        seen = await _run_until(loopback, 5, backoff=Backoff(0.01, 0.02))
    assert seen == [("SYNC", "a@10"), ("ADDED", "b@11")]
    assert _asked(loopback.script) == [("LIST", None), ("WATCH", "10"), ("WATCH", "11"), ("WATCH", "11"),
                                       ("WATCH", "11")]
    assert [(r.getMessage(), r.fields["reason"]) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("API trouble; will retry", f"WATCH {PODS}: etcdserver: leader changed"),
        ("API trouble; will retry", f"WATCH {PODS}: no code at all"),
        ("API trouble; will retry", f"WATCH {PODS}: 503 status 503"),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("loopback", [lambda: Script(lists=[listing("10")], watches=[500, []])], indirect=True)
async def test_stop_ends_the_backoff_wait_at_once(loopback: Loopback) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(informer(loopback.kube, Resource(PODS), lambda e, o: None, stop,
                                        backoff=Backoff(60.0, 60.0)))
    await _until(lambda: len(loopback.script.requests) == 2)  # failed; now waiting out a 30-60 s backoff
    stop.set()
    async with asyncio.timeout(1):
        await task
    assert _asked(loopback.script) == [("LIST", None), ("WATCH", "10")]
