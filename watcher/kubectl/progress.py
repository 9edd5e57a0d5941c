"""What following a migration shows (pure): its phase as steps of a bar, a line per change, and the end.

The agents publish the phase, the handover's turn and a message; they do not publish bytes done per
container yet, so the bar counts phases, not bytes (issue #14 item 1 asks for bytes, a rate and an ETA:
that needs the agent to write them into the status first).
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

    @property
    def stage(self) -> tuple[str, str]:
        """What a new line is printed for: the phase, and within Restoring the handover's turn."""
        return (self.phase, self.handover)


def seen(migration: Mapping[str, Any]) -> Seen:
    status, spec = migration.get("status") or {}, migration.get("spec") or {}
    return Seen(phase=status.get("phase") or MigrationPhase.PENDING.value, handover=status.get("handover") or "",
                message=status.get("message") or "", source=status.get("sourceNode") or "",
                target=spec.get("targetNode") or "", restored=status.get("restoredPodName") or "",
                started=parse_time(status.get("startTime")), completed=parse_time(status.get("completionTime")))


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


def bar(state: Seen, elapsed: float, width: int = 20) -> str:
    """One terminal line: the phases done as a bar, the stage and the time so far."""
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
    if state.started is not None and state.completed is not None:
        seconds = int((state.completed - state.started).total_seconds())
        # The status holds both ends in whole seconds only, and no freeze window of its own.
        lines.append(f"checkpoint to restored pod running: {seconds}s (status startTime to completionTime, whole "
                     "seconds; the freeze window itself is not published in the status)")
    return lines
