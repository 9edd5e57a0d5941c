"""A checkpoint's progress and a migration's freeze window, as their statuses show them.

While the source's agent takes a checkpoint, each container's ingest counts the bytes it has read and
stored (``zstream.Tally``), and at most every ``INTERVAL`` seconds a snapshot of those counts goes into the
status: the migration's when the checkpoint is a migration's, else the request's own. ``kubectl lpm
migrate`` draws its bar, rate and ETA from that alone, by watching the API. A container's total is known
once the runtime has answered (the archive's final size); until then the runtime is still writing, and
only the bytes and the rate are.

The freeze window (``status.freezeWindow``) is written by both agents, each stamping its own moments:
the source when it asked the runtime for the first container's checkpoint and when the checkpoint was
complete, the destination when it began the restore and when the restored pod's containers were all
running. Each span is on one node's clock except the handover (complete -> restore began), which crosses
from the source's clock to the destination's, so clock skew between the two nodes lands there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from watcher.errors import LpmError
from watcher.zstream import Tally

log = logging.getLogger(__name__)

INTERVAL = 1.0
"""Seconds between two writes of one checkpoint's progress: every write also wakes each agent's informer."""


@dataclass
class ContainerProgress:
    """One container's checkpoint, as far as it has gone (written by the ingest, read by the publisher)."""

    tally: Tally = field(default_factory=Tally)
    total: int | None = None
    """The archive's size once the runtime has answered; None while it is still writing."""
    done: bool = False
    """Its ingest has finished: everything read and stored."""


@dataclass
class Progress:
    containers: dict[str, ContainerProgress]
    requested: datetime | None = None
    """When the runtime was asked for the first container's checkpoint: the freeze window opens."""

    @classmethod
    def of(cls, containers: list[str]) -> Progress:
        return cls({name: ContainerProgress() for name in containers})


def stamp(moment: datetime) -> str:
    """A status timestamp to the millisecond (``status.now`` has whole seconds, too coarse for a freeze)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_stamp(value: object) -> datetime | None:
    """A ``stamp`` (or a whole-second timestamp) read back; None when absent or malformed."""
    if not isinstance(value, str):
        return None
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(value, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def snapshot(progress: Progress, first_bytes: Mapping[str, float], now: float) -> list[dict[str, Any]]:
    """The status's ``progress`` (pure): per container, bytes read (``bytesCheckpointed``), stored and, once
    known, in all, and the rate since its first byte was read (``first_bytes``, on the ``now`` clock)."""
    items: list[dict[str, Any]] = []
    for name, container in progress.containers.items():
        read = container.tally.read
        item: dict[str, Any] = {"containerName": name, "bytesCheckpointed": read,
                                "bytesStored": container.tally.written, "done": container.done}
        if container.total is not None:
            item["bytesTotal"] = max(container.total, read)
        began = first_bytes.get(name)
        if began is not None and now > began:
            item["bytesPerSecond"] = int(read / (now - began))
        items.append(item)
    return items


Report = Callable[[list[dict[str, Any]], datetime | None], Awaitable[object]]
"""Writes one snapshot and the moment the freeze window opened (None: not yet) into a status."""


async def publish(progress: Progress, report: Report, stop: asyncio.Event, interval: float = INTERVAL,
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Report ``progress`` every ``interval`` while it changes, and once more when ``stop`` is set. A report
    that fails is logged and tried again at the next turn (not after ``stop``): progress is shown, never
    needed, and must not fail or hold up a checkpoint."""
    first_bytes: dict[str, float] = {}
    last: tuple[list[dict[str, Any]], datetime | None] | None = None
    while True:
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
        now = clock()
        for name, container in progress.containers.items():
            if container.tally.read and name not in first_bytes:
                first_bytes[name] = now - interval / 2  # its first byte came some time in the last interval
        current = (snapshot(progress, first_bytes, now), progress.requested)
        if current != last:
            try:
                await report(*current)
                last = current
            except LpmError as err:  # tried again at the next turn
                log.info("progress not written", extra={"fields": {"reason": str(err)}})
        if stop.is_set():
            return


def progressed(status: dict[str, Any], phase: str, items: list[dict[str, Any]],
               requested: datetime | None) -> dict[str, Any] | None:
    """``status`` with ``items`` as its progress and, when given, the freeze window's opening (a status
    mutation); None once it has left ``phase``: a late report must not write into a finished status."""
    if status.get("phase") != phase:
        return None
    status["progress"] = items
    if requested is not None:
        status["freezeWindow"] = {**status.get("freezeWindow", {}), "checkpointRequested": stamp(requested)}
    return status


def window(status: Mapping[str, Any], **moments: datetime) -> dict[str, Any]:
    """The status's ``freezeWindow`` with ``moments`` stamped in (pure); once it holds both ends, also its
    length and spans in seconds: ``seconds`` (checkpoint requested -> restored pod running), and
    ``checkpointSeconds``, ``handoverSeconds``, ``restoreSeconds`` (the handover crosses two nodes' clocks)."""
    fields = {**status.get("freezeWindow", {}), **{name: stamp(moment) for name, moment in moments.items()}}
    at = {name: parse_stamp(fields.get(name)) for name in
          ("checkpointRequested", "checkpointComplete", "restoreStarted", "restoredRunning")}

    def span(start: str, end: str) -> float | None:
        begin, finish = at[start], at[end]
        return None if begin is None or finish is None else round((finish - begin).total_seconds(), 3)

    for name, start, end in (("seconds", "checkpointRequested", "restoredRunning"),
                             ("checkpointSeconds", "checkpointRequested", "checkpointComplete"),
                             ("handoverSeconds", "checkpointComplete", "restoreStarted"),
                             ("restoreSeconds", "restoreStarted", "restoredRunning")):
        value = span(start, end)
        if value is not None:
            fields[name] = value
    return fields
