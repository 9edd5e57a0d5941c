"""What following a migration shows (pure): its phase as steps of a bar, a line per change, and the end.

The agents publish the phase, the handover's turn and a message; while the checkpoint is taken, the bytes
checkpointed and stored per container with the rate (``status.progress``, about once a second: see
``watcher.cluster.progress``), from which the bar and the ETA are drawn; at the end, the freeze window
(``status.freezeWindow``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from watcher.cluster.objects import MigrationPhase

# The phases a migration that succeeds passes through, in order; Failed can follow any of them.
STEPS = (MigrationPhase.PENDING, MigrationPhase.CHECKPOINTING, MigrationPhase.CHECKPOINT_COMPLETE,
         MigrationPhase.RESTORING, MigrationPhase.SUCCEEDED)


class Outcome(Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DELETED = "deleted"


@dataclass(frozen=True)
class Bytes:
    """One container's checkpoint so far (``status.progress``)."""

    container: str
    checkpointed: int
    stored: int
    total: int | None
    """None until the runtime has finished writing the archive."""
    rate: int | None
    """Bytes checkpointed per second."""
    done: bool

    @property
    def eta(self) -> float | None:
        """Seconds left, once the total is known and bytes are moving."""
        if self.done:
            return 0.0
        if self.total is None or not self.rate:
            return None
        return max(0.0, (self.total - self.checkpointed) / self.rate)


@dataclass(frozen=True)
class Freeze:
    """``status.freezeWindow``'s spans, in seconds (None: not known)."""

    seconds: float
    checkpoint: float | None
    handover: float | None
    restore: float | None


@dataclass(frozen=True)
class Seen:
    """One read of a PodMigration, as far as following it goes."""

    phase: str
    handover: str
    message: str
    source: str
    target: str
    restored: str
    started: datetime | None
    """``status.startTime``: when the source's agent took the migration on (whole seconds)."""
    completed: datetime | None
    """``status.completionTime``: when the destination's agent saw the restored pod run (whole seconds)."""
    progress: tuple[Bytes, ...] = ()
    freeze: Freeze | None = None
    warnings: tuple[str, ...] = ()
    """What the checkpoint holds that its restore will not keep (established TCP connections)."""

    @property
    def stage(self) -> tuple[str, str]:
        """What a new line is printed for: the phase, and within Restoring the handover's turn."""
        return (self.phase, self.handover)


def seen(migration: Mapping[str, Any]) -> Seen:
    status, spec = migration.get("status") or {}, migration.get("spec") or {}
    return Seen(phase=status.get("phase") or MigrationPhase.PENDING.value, handover=status.get("handover") or "",
                message=status.get("message") or "", source=status.get("sourceNode") or "",
                target=spec.get("targetNode") or "", restored=status.get("restoredPodName") or "",
                started=parse_time(status.get("startTime")), completed=parse_time(status.get("completionTime")),
                progress=tuple(_bytes(item) for item in status.get("progress") or [] if isinstance(item, Mapping)),
                freeze=_freeze(status.get("freezeWindow")),
                warnings=tuple(str(w) for w in status.get("warnings") or [] if isinstance(w, str)))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _bytes(item: Mapping[str, Any]) -> Bytes:
    return Bytes(container=str(item.get("containerName", "")), checkpointed=_count(item.get("bytesCheckpointed")) or 0,
                 stored=_count(item.get("bytesStored")) or 0, total=_count(item.get("bytesTotal")),
                 rate=_count(item.get("bytesPerSecond")), done=item.get("done") is True)


def _freeze(window: Any) -> Freeze | None:
    if not isinstance(window, Mapping) or _seconds(window.get("seconds")) is None:
        return None
    return Freeze(float(window["seconds"]), _seconds(window.get("checkpointSeconds")),
                  _seconds(window.get("handoverSeconds")), _seconds(window.get("restoreSeconds")))


def mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def transfer(item: Bytes) -> str:
    """``app: 120.0 of 512.0 MiB checkpointed, 40.2 MiB stored, 85.3 MiB/s, ETA 5s``."""
    done = mib(item.checkpointed) if item.total is None else \
        f"{item.checkpointed / 2**20:.1f} of {mib(item.total)}"
    text = f"{item.container}: {done} checkpointed, {mib(item.stored)} stored"
    if item.rate:
        text += f", {mib(item.rate)}/s"
    if item.done:
        return text + ", done"
    eta = item.eta
    if eta is None:
        return text + ", the runtime is still writing"
    return text + (f", ETA {eta:.1f}s" if eta < 10 else f", ETA {eta:.0f}s")


def parse_time(value: Any) -> datetime | None:
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def outcome(state: Seen | None) -> Outcome:
    """None: the migration was deleted while followed."""
    if state is None:
        return Outcome.DELETED
    return {MigrationPhase.SUCCEEDED.value: Outcome.SUCCEEDED,
            MigrationPhase.FAILED.value: Outcome.FAILED}.get(state.phase, Outcome.RUNNING)


def _stage_name(state: Seen) -> str:
    return f"{state.phase} ({state.handover})" if state.handover and outcome(state) is Outcome.RUNNING \
        else state.phase


def line(state: Seen, elapsed: float) -> str:
    """The plain line printed when the stage changes."""
    text = f"{elapsed:7.1f}s  {_stage_name(state)}"
    return f"{text}: {state.message}" if state.message else text


def progress_lines(state: Seen, before: Seen, elapsed: float) -> list[str]:
    """The plain lines printed when the bytes move (piped output): one per container whose bytes moved
    since ``before``."""
    return [f"{elapsed:7.1f}s  {state.phase}: {transfer(item)}" for item in state.progress
            if item not in before.progress]


def bar(state: Seen, elapsed: float, width: int = 20) -> str:
    """One terminal line: while checkpointing with bytes known, the bytes done as a bar, the rate and the
    ETA; otherwise the phases done as a bar, the stage and the time so far."""
    going = [item for item in state.progress if not item.done]
    if state.phase == MigrationPhase.CHECKPOINTING.value and going:
        item = going[0]
        fraction = item.checkpointed / item.total if item.total else 0.0
        filled = min(width, round(width * fraction))
        return f"[{'#' * filled}{'-' * (width - filled)}] {transfer(item)}  {elapsed:.0f}s"
    done = _steps_done(state)
    filled = round(width * done / len(STEPS))
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{len(STEPS)} {_stage_name(state)}  {elapsed:.0f}s"


def _steps_done(state: Seen) -> int:
    names = [step.value for step in STEPS]
    if state.phase in names:
        return names.index(state.phase) + 1
    return 0  # Failed, or a phase this plugin does not know: nothing to count


def summary(state: Seen) -> list[str]:
    """What is printed once it succeeded: where the pod runs now and how long the agents took (the last
    message was printed with the Succeeded line already)."""
    lines = [f"pod runs on {state.target} as {state.restored or '<unknown>'}"
             + (f" (moved from {state.source})" if state.source else "")]
    if state.freeze is not None:
        spans = [f"{name} {value:.2f}s" for name, value in (("checkpoint", state.freeze.checkpoint),
                                                              ("handover", state.freeze.handover),
                                                              ("restore", state.freeze.restore)) if value is not None]
        lines.append(f"freeze window: {state.freeze.seconds:.2f}s (checkpoint requested to restored pod running"
                     + (f": {', '.join(spans)})" if spans else ")"))
    elif state.started is not None and state.completed is not None:
        # An agent from before the freeze window was published: both ends in whole seconds only.
        seconds = int((state.completed - state.started).total_seconds())
        lines.append(f"checkpoint to restored pod running: {seconds}s (status startTime to completionTime, whole "
                     "seconds)")
    return lines
