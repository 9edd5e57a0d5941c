"""The kubelet checkpoint POST is never sent twice when it may have reached the kubelet.

A real TLS server on loopback plays the kubelet's checkpoint endpoint, its certificate signed
by a throw-away CA the client verifies; it writes real archives into a real checkpoint
directory and then misbehaves the ways a node does: it resets the connection, or never answers.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from lab.archives import ArchiveSpec, Pod, archive_bytes, archive_name, make_archive, write_in_place
from lab.pki import CertificateAuthority
from watcher.archive.tarscan import TarScanner
from watcher.backoff import Backoff
from watcher.kubelet import Endpoint, KubeletClient, KubeletError, KubeletSettings

POD = Pod(uid="7c0ffee0-1111-4222-8333-944445555666", namespace="shop", name="cart-0", container="app")

Behaviour = Callable[[web.Request, Path], Awaitable[web.StreamResponse]]


def _now_name(pod: Pod = POD) -> str:
    return archive_name(pod, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


async def writes_then_resets(request: web.Request, directory: Path) -> web.StreamResponse:
    """The runtime wrote the archive; the reply never made it (the connection dropped)."""
    make_archive(directory, ArchiveSpec(pod=POD, memory=256 << 10), _now_name())
    assert request.transport is not None
    request.transport.abort()
    return web.Response(status=200)


async def writes_slowly_then_never_answers(request: web.Request, directory: Path) -> web.StreamResponse:
    """CRIU is slow: the client's deadline passes while the archive is still being written in place."""
    data = archive_bytes(ArchiveSpec(pod=POD, memory=512 << 10))
    await asyncio.to_thread(write_in_place, directory / _now_name(), data, 6, 0.5)
    await asyncio.sleep(30)
    return web.Response(status=500)


async def resets_and_writes_nothing(request: web.Request, directory: Path) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.abort()
    return web.Response(status=200)


async def fails(request: web.Request, directory: Path) -> web.StreamResponse:
    return web.Response(status=500, text="checkpointing container failed: CRIU error")


async def fails_after_writing(request: web.Request, directory: Path) -> web.StreamResponse:
    """The kubelet's own deadline passed, but the runtime finished the archive all the same."""
    make_archive(directory, ArchiveSpec(pod=POD, memory=64 << 10), _now_name())
    return web.Response(status=500, text="checkpointing container failed: context deadline exceeded")


class Kubelet:
    def __init__(self, tmp: Path, behaviour: Behaviour) -> None:
        self.ca = CertificateAuthority(tmp)
        self.directory = tmp / "checkpoints"
        self.directory.mkdir(mode=0o700)
        self.behaviour = behaviour
        self.requests: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.token = tmp / "token"
        self.token.write_text("t0ken\n")

    async def _checkpoint(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        return await self.behaviour(request, self.directory)

    async def __aenter__(self) -> Kubelet:
        serving = self.ca.issue_serving("kubelet", ["127.0.0.1"])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(serving.cert), str(serving.key))
        app = web.Application()
        app.router.add_post("/checkpoint/{namespace}/{pod}/{container}", self._checkpoint)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def client(self, timeout: int = 1) -> KubeletClient:
        return KubeletClient(KubeletSettings(ca_file=self.ca.cert_file, token_file=self.token,
                                             checkpoint_timeout=timeout, backoff=Backoff(0.05, 0.1),
                                             checkpoint_dir=self.directory, settle=0.6))

    async def checkpoint(self, timeout: int = 1, port: int | None = None) -> Path:
        client = self.client(timeout)
        try:
            return await client.checkpoint(Endpoint("node-a", "127.0.0.1", port or self.port),
                                           POD.namespace, POD.name, POD.container)
        finally:
            await client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("behaviour", [writes_then_resets, writes_slowly_then_never_answers])
async def test_a_request_that_may_have_reached_the_kubelet_is_not_sent_again_its_archive_is_used(
        tmp_path: Path, behaviour: Behaviour) -> None:
    # An archive of an earlier checkpoint of the same container is there too: not this request's.
    async with Kubelet(tmp_path, behaviour) as kubelet:
        older = make_archive(kubelet.directory, ArchiveSpec(pod=POD, memory=4096),
                             archive_name(POD, "2026-01-02T03:04:05Z"))
        path = await kubelet.checkpoint(timeout=2)
        assert kubelet.requests == [f"/checkpoint/{POD.namespace}/{POD.name}/{POD.container}"]  # sent once
        [produced] = [p for p in kubelet.directory.iterdir() if p != older]
        assert path == produced
        # Taken only once finished: the whole archive, not a prefix of one still being written.
        scanner = TarScanner(frozenset({"spec.dump"}), path.name)
        scanner.feed(path.read_bytes())
        assert scanner.finish().captured["spec.dump"]


@pytest.mark.asyncio
async def test_no_archive_from_an_unanswered_request_fails_with_the_reason_and_is_not_sent_again(
        tmp_path: Path) -> None:
    async with Kubelet(tmp_path, resets_and_writes_nothing) as kubelet:
        make_archive(kubelet.directory, ArchiveSpec(pod=POD, memory=4096), archive_name(POD, "2026-01-02T03:04:05Z"))
        with pytest.raises(KubeletError) as caught:
            await kubelet.checkpoint()
        assert len(kubelet.requests) == 1
        message = str(caught.value)
        assert "kubelet on node-a: checkpoint of shop/cart-0 container app" in message
        assert "not sent again" in message and str(kubelet.directory) in message


@pytest.mark.asyncio
async def test_a_request_that_never_connected_is_sent_again(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on: every connect is refused
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    async with Kubelet(tmp_path, fails) as kubelet:
        with pytest.raises(KubeletError, match="failed after 4 attempts: cannot connect"):
            await kubelet.checkpoint(port=closed)


@pytest.mark.asyncio
async def test_a_5xx_answer_is_retried_unless_the_runtime_left_an_archive(tmp_path: Path) -> None:
    async with Kubelet(tmp_path, fails) as kubelet:
        with pytest.raises(KubeletError, match="failed after 4 attempts: HTTP 500"):
            await kubelet.checkpoint()
        assert len(kubelet.requests) == 4  # the kubelet said it failed and left nothing: a fresh try is safe
    (tmp_path / "second").mkdir()
    async with Kubelet(tmp_path / "second", fails_after_writing) as kubelet:
        path = await kubelet.checkpoint()
        assert len(kubelet.requests) == 1 and path.parent == kubelet.directory


@pytest.mark.asyncio
async def test_a_request_whose_waiter_is_cancelled_stays_connected_until_the_kubelet_answers(
        tmp_path: Path) -> None:
    # The kubelet hands the request's context to the runtime: a dropped connection would cancel the dump
    # mid-way and containerd would leave the container paused. So the agent stopping must not drop it.
    seen: list[bool] = []

    async def answers_late(request: web.Request, directory: Path) -> web.StreamResponse:
        await asyncio.sleep(1.5)
        seen.append(request.transport is not None and not request.transport.is_closing())
        name = _now_name()
        make_archive(directory, ArchiveSpec(pod=POD, memory=4096), name)
        return web.json_response({"items": [str(directory / name)]})

    async with Kubelet(tmp_path, answers_late) as kubelet:
        client = kubelet.client(timeout=5)
        waiter = asyncio.create_task(client.checkpoint(Endpoint("node-a", "127.0.0.1", kubelet.port),
                                                       POD.namespace, POD.name, POD.container))
        await asyncio.sleep(0.5)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        [request] = client.in_flight  # still out, its waiter gone
        status, _ = await asyncio.wait_for(request, 20)
        assert seen == [True], "the kubelet saw the connection dropped before it answered"
        assert status == 200 and not client.in_flight
        await client.close()
