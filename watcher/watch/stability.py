"""Deciding when a kubelet archive is ready to ingest: a pure planner, fed observations.

CRI-O and containerd write the archive in place over seconds (``O_CREATE`` + ``io.Copy``,
no temp file, no rename), so "a file appeared" means nothing. An archive becomes a
candidate once its (size, mtime) has not changed for the debounce window; the ingest then
proves completeness itself (the tar must reach its end-of-archive blocks, and the file must
not change while it is read). What happens next depends on how that attempt ended:

- done: never again for this version of the file (a restart consults the ledger instead);
- incomplete / changed: the writer is not finished; wait until the file changes again, but
  not forever: an archive that stays unfinished for ``give_up_after`` seconds without changing
  (truncated for good, its writer dead) is given up on — refused, and reported by the caller
  with a warning and a metric rather than waited on in silence;
- refused (malformed, hostile, unidentifiable): reported once; retried only if the file changes;
- store trouble (full disk, store unreachable): retried with a bounded backoff.

Any change of the file's (size, mtime) — a rewritten archive — starts it afresh, whatever
was decided about the version before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from watcher.archive.stamp import ArchiveStamp


class Outcome(Enum):
    DONE = "done"
    INCOMPLETE = "incomplete"
    REFUSED = "refused"
    STORE_TROUBLE = "store-trouble"


@dataclass
class _Track:
    stamp: ArchiveStamp
    stable_since: float
    in_flight: bool = False
    settled: Outcome | None = None  # an outcome that holds until the stamp changes
    retry_at: float | None = None
    failures: int = 0


@dataclass
class Stability:
    window: float
    """Seconds (size, mtime) must hold still before an ingest is attempted."""
    give_up_after: float = 600.0
    """Seconds an archive may stay unfinished without changing before it is given up on."""
    retry_base: float = 5.0
    retry_max: float = 300.0
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def observe(self, name: str, stamp: ArchiveStamp | None, now: float) -> None:
        """Record the file's current state (None: it is gone)."""
        track = self._tracks.get(name)
        if stamp is None:
            if track is not None and not track.in_flight:
                del self._tracks[name]
            return
        if track is None:
            self._tracks[name] = _Track(stamp, now)
        elif track.stamp != stamp:
            track.stamp, track.stable_since = stamp, now
            track.settled, track.retry_at, track.failures = None, None, 0

    def ready(self, now: float) -> list[str]:
        """Names to ingest now, oldest first; the caller must report each with ``finished``."""
        due = [
            (track.stable_since, name)
            for name, track in self._tracks.items()
            if not track.in_flight
            and track.settled is None
            and now - track.stable_since >= self.window
            and (track.retry_at is None or now >= track.retry_at)
        ]
        for _, name in due:
            self._tracks[name].in_flight = True
        return [name for _, name in sorted(due)]

    def finished(self, name: str, stamp: ArchiveStamp, outcome: Outcome, now: float) -> float | None:
        """Record how an attempt ended; returns the retry delay for store trouble."""
        track = self._tracks.get(name)
        if track is None:
            return None
        track.in_flight = False
        if track.stamp != stamp:
            return None  # the file changed meanwhile: its new version is judged afresh
        if outcome is Outcome.STORE_TROUBLE:
            track.failures += 1
            delay: float = min(self.retry_max, self.retry_base * 2 ** (track.failures - 1))
            track.retry_at = now + delay
            return delay
        track.settled = outcome
        return None

    def given_up(self, now: float) -> list[tuple[str, float]]:
        """Archives unfinished and unchanged for ``give_up_after``: now refused; (name, seconds waited) each."""
        out = []
        for name, track in self._tracks.items():
            if track.settled is Outcome.INCOMPLETE and now - track.stable_since >= self.give_up_after:
                track.settled = Outcome.REFUSED
                out.append((name, now - track.stable_since))
        return sorted(out)

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until some tracked file could become ready or be given up on (None: nothing pending)."""
        times = []
        for track in self._tracks.values():
            if track.in_flight:
                continue
            if track.settled is Outcome.INCOMPLETE:
                times.append(track.stable_since + self.give_up_after)
            elif track.settled is None:
                times.append(max(track.stable_since + self.window, track.retry_at or 0.0))
        return max(0.0, min(times) - now) if times else None

    def pending(self) -> list[str]:
        """Names whose state may still change the plan (not settled); worth re-stat-ing."""
        return [name for name, track in self._tracks.items() if track.settled is None]
