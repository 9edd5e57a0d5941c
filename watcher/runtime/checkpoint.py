"""Checkpointing a container through this node's own runtime, over its CRI socket.

    runtime.v1.RuntimeService/CheckpointContainer{container_id, location, timeout} -> {}

The call the kubelet itself makes for ``POST /checkpoint``: containerd and CRI-O write the archive to
``location`` and answer once it is complete. Asked here, on the node's local socket, a checkpoint needs no
``nodes/checkpoint`` permission in the API: the agent can dump only the pods of the node it runs on, and a
token stolen from it dumps nothing anywhere (docs/threat-model.md, rule 8).

``location`` is a path the runtime sees; the agent reads the archive through its own view of the same
directory (``Settings.runtime_dir`` and ``Settings.agent_dir``: the same path in the DaemonSet, different
in the lab, where the runtime lives in the node's mount namespace).

Like the kubelet call (``watcher.kubelet``), the request is not idempotent: each one freezes the workload.
It goes out only over a connection known to be up, so a failure to connect means it was never sent and is
reported as such; no request is ever sent twice. Nor is one ever cancelled: containerd pauses the container
for the dump and resumes it with the call's context, so a call cut short mid-dump leaves the pod frozen for
good (seen on containerd 2.3.7 in tests/realstack/test_real_nodes.py). A runtime slower than its timeout
therefore fails the checkpoint while its call runs on to its end (``RuntimeCheckpointError.pending``), and
the agent waits for such calls before it exits. When the connection itself broke (the runtime restarted),
the archive it asked for has a name only this request uses: the agent waits for that file to be finished and
takes it, or fails saying why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from watcher.archive.finished import finished_shape, wait_settled
from watcher.backoff import grace as grace_of
from watcher.errors import LpmError
from watcher.runtime import protowire
from watcher.runtime.cri import target

log = logging.getLogger(__name__)

_CHECKPOINT = "/runtime.v1.RuntimeService/CheckpointContainer"
# Codes a runtime does not answer with, but the transport or our own deadline produce: the request may
# have been carried out. Every other code is the runtime's own answer, and final.
_UNCERTAIN = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


class RuntimeCheckpointError(LpmError):
    """The runtime refused or failed a checkpoint, or could not be reached."""

    def __init__(self, message: str, pending: asyncio.Task[None] | None = None) -> None:
        super().__init__(message)
        self.pending = pending
        """The call, still running, when the waiting for it was given up (see ``checkpoint``)."""


@dataclass(frozen=True)
class Settings:
    endpoint: str
    """The node's CRI socket, ``unix:///path``."""
    runtime_dir: Path
    """The checkpoint directory as the runtime sees it: where ``location`` points."""
    agent_dir: Path
    """The same directory as the agent sees it: where the archive is read."""
    timeout: int = 120
    """Seconds the runtime may take for one container (the request's ``timeout``)."""
    connect_timeout: float = 10.0
    settle: float = 2.0
    """Seconds an archive left by an unanswered request must hold still before it is taken."""


async def checkpoint(settings: Settings, container_id: str, archive_name: str,
                     in_flight: set[asyncio.Task[None]]) -> Path:
    """Have the runtime checkpoint ``container_id`` into ``archive_name``; the archive's path as the agent sees it.

    The call itself is never cancelled, only waited for: containerd pauses the container for the dump and
    resumes it with the call's own context (``client/task.go``, ``defer t.Resume(ctx)``), so a call cancelled
    mid-dump (a deadline, a dropped connection) leaves the container paused for good. It runs in a task of
    its own, kept in ``in_flight`` until it ends (the agent waits for those when it stops); when the answer
    takes longer than the runtime's timeout and its grace, the waiting ends with a RuntimeCheckpointError
    whose ``pending`` is the call, still running: the caller decides what becomes of its archive."""
    location = settings.runtime_dir / archive_name
    local = settings.agent_dir / archive_name
    what = f"runtime at {settings.endpoint}: checkpoint of container {container_id} to {location}"
    request = (protowire.encode_string(1, container_id) + protowire.encode_string(2, str(location))
               + protowire.encode_uint(3, settings.timeout))
    # As the kubelet does: the runtime's own timeout, then the grace for the reply.
    grace = grace_of(settings.timeout)
    channel = grpc.aio.insecure_channel(target(settings.endpoint))  # a local unix socket: no TLS to have
    try:
        await asyncio.wait_for(channel.channel_ready(), settings.connect_timeout)
    except TimeoutError:
        await channel.close()
        raise RuntimeCheckpointError(f"{what}: cannot connect within {settings.connect_timeout:.0f} s; "
                                     "nothing was sent") from None
    except BaseException:
        await channel.close()
        raise
    sent_at = time.monotonic()
    call = asyncio.create_task(_call(channel, request), name=f"checkpoint {container_id}")
    in_flight.add(call)
    call.add_done_callback(in_flight.discard)
    try:
        await asyncio.wait_for(asyncio.shield(call), settings.timeout + grace)
    except TimeoutError:
        raise RuntimeCheckpointError(
            f"{what}: no answer within {settings.timeout + grace} s (--checkpoint-timeout {settings.timeout} and "
            "its grace); the call is left to finish, not cancelled (cancelled mid-dump, the runtime would leave "
            "the container paused), and not sent again", pending=call) from None
    except grpc.aio.AioRpcError as err:
        reason = f"{err.code().name}: {err.details()}"
        if err.code() not in _UNCERTAIN:
            raise RuntimeCheckpointError(f"{what} failed: {reason}") from None
        # The connection broke (the runtime restarted, say): the dump may have been carried out.
        return await _look_for_archive(settings, what, local, reason, sent_at + settings.timeout + 2 * grace)
    if finished_shape(local) is None:
        raise RuntimeCheckpointError(
            f"{what}: the runtime answered that it is written, but {local} is not a finished archive; the "
            "checkpoint directory as the runtime sees it and as the agent sees it must be one directory "
            "(--runtime-checkpoint-dir, --checkpoint-dir)")
    return local


async def _call(channel: grpc.aio.Channel, request: bytes) -> None:
    """The CheckpointContainer call, without a deadline of ours (see ``checkpoint``); the channel closed after."""
    try:
        await channel.unary_unary(_CHECKPOINT)(request)
    finally:
        await channel.close()


async def _look_for_archive(settings: Settings, what: str, local: Path, reason: str, deadline: float) -> Path:
    """Wait for the archive an unanswered request asked for; never send the request again."""
    log.warning("checkpoint call may have reached the runtime; not re-sending it, waiting for its archive",
                extra={"fields": {"archive": str(local), "reason": reason,
                                  "waitSeconds": round(deadline - time.monotonic(), 1)}})
    if await wait_settled(lambda: local, settings.settle, deadline - time.monotonic()) is not None:
        log.info("found the archive of the unanswered checkpoint call", extra={"fields": {"archive": str(local)}})
        return local
    raise RuntimeCheckpointError(
        f"{what}: {reason}; the request may have reached the runtime, so it is not sent again (a second "
        f"checkpoint would freeze the container again), and no finished archive appeared at {local}")
