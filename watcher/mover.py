"""The mover: checkpoints held in the node's local store go to the shared store once it is back.

Every ``interval`` seconds: finish removing local copies a crash interrupted, list the local
store's complete checkpoints, and if there are any and the shared store takes a write, move
each one (``watcher.store.transfer``): copy and commit into the shared store (pinned against the
collector), let the API say ``shared`` (cluster mode's ``moved`` hook), check the shared copy is
still complete, unpin it, and only then remove the local copy. A failure leaves the local copy and is
retried next round. A checkpoint larger than the room the shared store has left waits, saying so: a
store that takes the probe's small write may still be too full for it, and a copy would only fill it
and fail again every round.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from watcher.errors import Cancelled, ChecksumMismatch, LpmError, StoreError, UnsafeNameError
from watcher.observe import AgentMetrics
from watcher.store import fsio, transfer
from watcher.store.catalog import Checkpoint
from watcher.store.usage import store_usage
from watcher.stores import Stores

log = logging.getLogger("lpm.agent")

Moved = Callable[[Checkpoint], Awaitable[None]]


async def run_mover(stores: Stores, node: str, cancel: threading.Event, metrics: AgentMetrics,
                    moved: Moved | None, stop: asyncio.Event, interval: float) -> None:
    while not stop.is_set():
        try:
            await move_round(stores, node, cancel, metrics, moved)
        except Cancelled:
            return
        except LpmError as err:
            log.warning("local store not moved this round", extra={"fields": {"reason": str(err)}})
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass


async def move_round(stores: Stores, node: str, cancel: threading.Event, metrics: AgentMetrics,
                     moved: Moved | None) -> int:
    """One look at the local store; returns how many checkpoints were moved."""
    local = stores.local.fd
    await asyncio.to_thread(transfer.sweep_removed, local)
    held = await asyncio.to_thread(transfer.local_checkpoints, local)
    problem = await stores.probe()  # also when nothing is held: it keeps the availability gauge current
    if not held or problem is not None:
        return 0
    count = 0
    for checkpoint in held:
        where = f"{checkpoint.marker.pod_uid}/{checkpoint.marker.checkpoint_id}"
        needed = transfer.room_needed(checkpoint)
        available = await asyncio.to_thread(_available, stores)
        if needed > available:
            log.info("held checkpoint waits for room in the shared store", extra={"fields": {
                "checkpoint": where, "neededBytes": needed, "availableBytes": available}})
            continue
        started = time.monotonic()
        try:
            copied = await asyncio.to_thread(transfer.copy_to_shared, local, stores.shared.fd, node, checkpoint,
                                             cancel)
            if moved is not None:
                await moved(checkpoint)
            await asyncio.to_thread(transfer.shared_copy_complete, stores.shared.fd, checkpoint)
        except (ChecksumMismatch, UnsafeNameError) as err:
            # Damaged local bytes, another checkpoint under this ID, or something planted in the shared
            # store where this one goes (a symlink): a person must look; keep it, and move the others.
            log.error("local checkpoint cannot be moved", extra={"fields": {"checkpoint": where,
                                                                           "reason": str(err)}})
            continue
        except StoreError as err:
            stores.unavailable(str(err))
            log.warning("shared store failed during a move; the local copy is kept", extra={"fields": {
                "checkpoint": where, "reason": str(err)}})
            break
        # Both copies are complete now and the API names the shared one; a failure here leaves the local
        # copy (and the pin, until the next round's move finds the shared copy and finishes) for next time.
        await asyncio.to_thread(transfer.unpin, stores.shared.fd, node, checkpoint)
        await asyncio.to_thread(transfer.remove_local, local, node, checkpoint)
        metrics.moved_to_shared.inc()
        count += 1
        log.info("checkpoint moved to the shared store", extra={"fields": {
            "checkpoint": where, "containers": list(checkpoint.marker.containers), "copied": copied,
            "seconds": round(time.monotonic() - started, 3)}})
    return count


def _available(stores: Stores) -> int:
    with fsio.os_errors(f"shared store {stores.shared.path}: its free space"):
        return store_usage(stores.shared.fd).available
