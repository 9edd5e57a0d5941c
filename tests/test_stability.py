"""Stability, the planner that decides when a kubelet archive is read: pure, so fed a clock by hand.

The bounded wait for an archive that never finishes is tests/test_give_up.py's.
"""

from __future__ import annotations

import pytest

from watcher.store.ledger import ArchiveStamp
from watcher.watch.stability import Outcome, Stability

A, B = "checkpoint-a_ns-app-2026-11-25T10:11:12Z.tar", "checkpoint-b_ns-app-2026-11-25T10:11:13Z.tar"


def stamp(name: str, size: int = 1000, mtime_ns: int = 1) -> ArchiveStamp:
    return ArchiveStamp(name, size, mtime_ns)


def test_an_archive_is_ready_once_it_held_still_for_the_window_and_handed_out_once() -> None:
    plan = Stability(window=2.0)
    plan.observe(A, stamp(A), now=10.0)
    assert plan.ready(11.9) == [] and plan.next_wakeup(11.9) == pytest.approx(0.1)
    assert plan.ready(12.0) == [A]
    assert plan.ready(13.0) == []  # in flight: not handed out twice
    assert plan.next_wakeup(13.0) is None and plan.pending() == [A]


def test_a_change_of_size_or_mtime_restarts_the_window() -> None:
    plan = Stability(window=2.0)
    plan.observe(A, stamp(A, 100), now=0.0)
    plan.observe(A, stamp(A, 100), now=1.0)  # the same: still stable since 0
    plan.observe(A, stamp(A, 200), now=1.5)  # grew
    plan.observe(A, stamp(A, 200, 2), now=1.75)  # same size, new mtime
    assert plan.ready(3.5) == []
    assert plan.ready(3.75) == [A]


def test_ready_names_come_oldest_first() -> None:
    plan = Stability(window=1.0)
    plan.observe(B, stamp(B), now=0.0)
    plan.observe(A, stamp(A), now=0.5)
    assert plan.ready(5.0) == [B, A]


@pytest.mark.parametrize("outcome", [Outcome.DONE, Outcome.REFUSED, Outcome.INCOMPLETE])
def test_a_settled_outcome_holds_until_the_file_changes_then_it_is_judged_afresh(outcome: Outcome) -> None:
    plan = Stability(window=2.0, give_up_after=1e9)
    plan.observe(A, stamp(A), now=0.0)
    assert plan.ready(2.0) == [A]
    assert plan.finished(A, stamp(A), outcome, now=3.0) is None
    plan.observe(A, stamp(A), now=100.0)
    assert plan.ready(100.0) == [] and plan.pending() == []
    plan.observe(A, stamp(A, 2000, 2), now=200.0)  # rewritten
    assert plan.pending() == [A] and plan.ready(201.9) == []
    assert plan.ready(202.0) == [A]


def test_store_trouble_is_retried_after_a_doubling_delay_up_to_the_cap() -> None:
    plan = Stability(window=1.0, retry_base=5.0, retry_max=30.0)
    plan.observe(A, stamp(A), now=0.0)
    now, delays = 1.0, []
    for _ in range(6):
        assert plan.ready(now) == [A]
        delay = plan.finished(A, stamp(A), Outcome.STORE_TROUBLE, now=now)
        assert delay is not None
        delays.append(delay)
        assert plan.next_wakeup(now) == delay
        assert plan.ready(now + delay - 0.01) == []  # not before its time
        now += delay
    assert delays == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]
    assert plan.ready(now) == [A]
    plan.finished(A, stamp(A), Outcome.DONE, now=now)
    plan.observe(A, stamp(A, 5), now=now + 1)  # a new version starts with no failures counted
    assert plan.ready(now + 2) == [A]
    assert plan.finished(A, stamp(A, 5), Outcome.STORE_TROUBLE, now=now + 2) == 5.0


def test_an_attempt_on_a_version_that_changed_meanwhile_settles_nothing() -> None:
    plan = Stability(window=2.0)
    plan.observe(A, stamp(A, 100), now=0.0)
    assert plan.ready(2.0) == [A]
    plan.observe(A, stamp(A, 300), now=2.5)  # the writer went on while it was read
    assert plan.finished(A, stamp(A, 100), Outcome.DONE, now=3.0) is None
    assert plan.pending() == [A]
    assert plan.ready(4.4) == [] and plan.ready(4.5) == [A]  # the new version, from its own change


def test_a_file_gone_is_forgotten_unless_it_is_being_read() -> None:
    plan = Stability(window=1.0)
    plan.observe(A, stamp(A), now=0.0)
    plan.observe(B, stamp(B), now=0.0)
    assert plan.ready(1.0) == [A, B]
    plan.finished(B, stamp(B), Outcome.DONE, now=1.0)
    plan.observe(A, None, now=2.0)  # in flight: kept until its attempt reports
    plan.observe(B, None, now=2.0)
    assert plan.pending() == [A]
    plan.finished(A, stamp(A), Outcome.INCOMPLETE, now=3.0)
    plan.observe(A, None, now=4.0)
    plan.observe(A, stamp(A), now=5.0)  # it came back: a new file as far as the plan knows
    assert plan.pending() == [A] and plan.ready(6.0) == [A]


def test_finishing_a_name_never_observed_is_ignored() -> None:
    plan = Stability(window=1.0)
    assert plan.finished(A, stamp(A), Outcome.STORE_TROUBLE, now=0.0) is None
    assert plan.ready(10.0) == [] and plan.next_wakeup(10.0) is None and plan.given_up(10.0) == []


def test_next_wakeup_is_the_soonest_of_windows_retries_and_give_up_deadlines() -> None:
    plan = Stability(window=2.0, give_up_after=60.0, retry_base=5.0)
    plan.observe(A, stamp(A), now=0.0)
    plan.observe(B, stamp(B), now=0.0)
    assert plan.next_wakeup(0.5) == 1.5
    assert plan.ready(2.0) == [A, B]
    plan.finished(A, stamp(A), Outcome.INCOMPLETE, now=3.0)  # deadline at 0 + 60
    plan.finished(B, stamp(B), Outcome.STORE_TROUBLE, now=3.0)  # retry at 8
    assert plan.next_wakeup(4.0) == 4.0
    assert plan.ready(8.0) == [B]
    assert plan.next_wakeup(8.0) == 52.0  # B in flight; A's give-up deadline
    assert plan.next_wakeup(70.0) == 0.0  # overdue: at once, never negative
