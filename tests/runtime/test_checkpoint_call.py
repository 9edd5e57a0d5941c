"""Checkpoints asked of the node's runtime over CRI (watcher/runtime/checkpoint.py): what is sent, when it is
never sent twice, and what each failure says.

The success path runs against real containerd on real nodes (tests/realstack/test_real_nodes.py). Here: a
real containerd for a container it does not have, and, for the failures a healthy runtime cannot be made to
produce on cue (an answer that never comes back, a write reported but not visible), a loopback gRPC server
speaking the same method on a unix socket, which records every request it receives.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from tests.restore.containerd import run_containerd
from watcher.cluster.checkpointers import container_id
from watcher.runtime import protowire
from watcher.runtime.checkpoint import RuntimeCheckpointError, Settings, checkpoint

ARCHIVE = "checkpoint-web-0_default-app-2026-12-01T10:11:12.000001Z.tar"


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"dump"
        info = tarfile.TarInfo("checkpoint/pages-1.img")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class Runtime:
    """A CRI CheckpointContainer server on a unix socket; ``behave`` decides each answer."""
    socket: Path
    behave: Callable[[dict[int, str], grpc.aio.ServicerContext], Awaitable[None]]
    requests: list[dict[int, str]] = field(default_factory=list)
    timeouts: list[int] = field(default_factory=list)

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.requests.append(protowire.strings(request))
        self.timeouts.extend(v for n, w, v in protowire.fields(request) if n == 3 and isinstance(v, int))
        await self.behave(self.requests[-1], context)
        return b""  # CheckpointContainerResponse{}


@pytest_asyncio.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Runtime]]]:
    servers: list[grpc.aio.Server] = []

    async def start(behave: Callable[[dict[int, str], grpc.aio.ServicerContext], Awaitable[None]]) -> Runtime:
        runtime = Runtime(tmp_path / "cri.sock", behave)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "runtime.v1.RuntimeService", {"CheckpointContainer": grpc.unary_unary_rpc_method_handler(runtime.handle)})])
        server.add_insecure_port(f"unix://{runtime.socket}")
        await server.start()
        servers.append(server)
        return runtime

    yield start
    for server in servers:
        await server.stop(0)


def _settings(tmp_path: Path, runtime: Runtime | None = None, **kw: float) -> Settings:
    directory = tmp_path / "checkpoints"
    directory.mkdir(exist_ok=True)
    socket = runtime.socket if runtime else tmp_path / "nobody.sock"
    return Settings(f"unix://{socket}", directory, directory, **kw)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_the_runtime_is_asked_once_to_write_where_lpm_named_it(tmp_path, serve):
    async def write(request, context):
        Path(request[2]).write_bytes(_tar())

    runtime = await serve(write)
    settings = _settings(tmp_path, runtime, timeout=7)
    in_flight: set[asyncio.Task[None]] = set()
    path = await checkpoint(settings, "abc123", ARCHIVE, in_flight)
    assert path == settings.agent_dir / ARCHIVE and path.read_bytes() == _tar()
    assert runtime.requests == [{1: "abc123", 2: str(settings.runtime_dir / ARCHIVE)}]
    assert runtime.timeouts == [7]
    assert in_flight == set()  # the call ended with its answer


@pytest.mark.asyncio
async def test_an_answer_later_than_the_timeout_ends_the_wait_but_the_call_is_neither_cancelled_nor_resent(
        tmp_path, serve):
    """containerd resumes the container it paused for the dump with the call's own context: a call cancelled
    mid-dump would leave it paused. So the waiting ends; the call goes on, and is the error's ``pending``."""
    handled: list[str] = []

    async def slow(request, context):
        try:
            await asyncio.sleep(3.5)  # past the wait: timeout 1 s + 1 s grace
            Path(request[2]).write_bytes(_tar())
            handled.append("answered")
        except asyncio.CancelledError:
            handled.append("cancelled")
            raise

    runtime = await serve(slow)
    settings = _settings(tmp_path, runtime, timeout=1)
    in_flight: set[asyncio.Task[None]] = set()
    with pytest.raises(RuntimeCheckpointError, match=r"no answer within 2 s \(--checkpoint-timeout 1 and its grace\); "
                                                      r"the call is left to finish, not cancelled") as raised:
        await checkpoint(settings, "abc123", ARCHIVE, in_flight)
    assert raised.value.pending is not None and in_flight == {raised.value.pending} and handled == []
    await asyncio.wait_for(raised.value.pending, 10)  # the runtime answers in its own time
    assert handled == ["answered"] and in_flight == set()
    assert len(runtime.requests) == 1  # a second request would freeze the container again


@pytest.mark.asyncio
async def test_a_connection_lost_mid_call_is_not_sent_again_and_the_archive_written_meanwhile_is_taken(
        tmp_path, serve):
    async def later(location: Path) -> None:
        await asyncio.sleep(1.0)
        location.write_bytes(_tar())

    async def dies(request, context):
        dumps.append(asyncio.get_running_loop().create_task(later(Path(request[2]))))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "runtime restarting (test)")

    dumps: list[asyncio.Task[None]] = []
    runtime = await serve(dies)
    settings = _settings(tmp_path, runtime, timeout=2, settle=0.3)
    path = await checkpoint(settings, "abc123", ARCHIVE, set())
    assert path.read_bytes() == _tar()
    assert len(runtime.requests) == 1


@pytest.mark.asyncio
async def test_a_lost_call_whose_archive_never_appears_fails_saying_so(tmp_path, serve):
    async def dies(request, context):
        await context.abort(grpc.StatusCode.UNAVAILABLE, "runtime restarting (test)")

    runtime = await serve(dies)
    settings = _settings(tmp_path, runtime, timeout=1, settle=0.2)
    with pytest.raises(RuntimeCheckpointError, match=r"UNAVAILABLE.*not sent again.*no finished archive"):
        await checkpoint(settings, "abc123", ARCHIVE, set())
    assert len(runtime.requests) == 1


@pytest.mark.asyncio
async def test_a_write_the_agent_cannot_see_names_both_directories(tmp_path, serve):
    async def elsewhere(request, context):
        pass  # "written", but not where the agent looks

    runtime = await serve(elsewhere)
    with pytest.raises(RuntimeCheckpointError, match=r"is not a finished archive.*--runtime-checkpoint-dir"):
        await checkpoint(_settings(tmp_path, runtime), "abc123", ARCHIVE, set())


@pytest.mark.asyncio
async def test_nothing_listening_means_nothing_was_sent(tmp_path):
    with pytest.raises(RuntimeCheckpointError, match=r"cannot connect within 1 s; nothing was sent"):
        await checkpoint(_settings(tmp_path, connect_timeout=1), "abc123", ARCHIVE, set())


pytest_realstack = pytest.mark.realstack


@pytest_realstack
def test_containerd_refuses_a_checkpoint_it_cannot_take_in_its_own_words(tmp_path):
    with run_containerd() as daemon:
        settings = Settings(f"unix://{daemon.address}", tmp_path, tmp_path, timeout=10)
        with pytest.raises(RuntimeCheckpointError, match=r"checkpoint of container nosuch.* failed: [A-Z_]+: .*nosuch"):
            asyncio.run(checkpoint(settings, "nosuch", ARCHIVE, set()))
    assert not list(tmp_path.iterdir())


def _pod(statuses: list[dict]) -> dict:
    return {"metadata": {"namespace": "default", "name": "web-0"}, "status": {"containerStatuses": statuses}}


def test_the_container_id_is_the_running_containers_from_the_pods_status():
    pod = _pod([{"name": "side", "containerID": "containerd://111", "state": {"running": {}}},
                {"name": "app", "containerID": "cri-o://abc", "state": {"running": {}}}])
    assert container_id(pod, "app") == "abc"


@pytest.mark.parametrize("statuses, why", [
    ([], "not in the pod's status yet"),
    ([{"name": "app", "state": {"waiting": {"reason": "ContainerCreating"}}}], r"is not running \(\['waiting'\]\)"),
    ([{"name": "app", "containerID": "", "state": {"running": {}}}], "names no runtime container ID"),
])
def test_a_container_that_is_not_running_is_refused_with_why(statuses, why):
    with pytest.raises(RuntimeCheckpointError, match=f"pod default/web-0 container app.*{why}"):
        container_id(_pod(statuses), "app")
