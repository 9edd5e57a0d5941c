"""Stability's bounded wait: an archive that never finishes is given up on once; a rewrite starts it afresh."""

from watcher.archive.stamp import ArchiveStamp
from watcher.watch.stability import Outcome, Stability

NAME = "checkpoint-web_default-app-2026-11-25T10:11:12Z.tar"


def test_unfinished_archive_is_given_up_on_once_after_the_bound_and_a_rewrite_is_judged_afresh():
    plan = Stability(window=2.0, give_up_after=60.0)
    half = ArchiveStamp(NAME, 1000, 1)
    plan.observe(NAME, half, now=0.0)
    assert plan.ready(2.0) == [NAME]
    plan.finished(NAME, half, Outcome.INCOMPLETE, now=3.0)
    assert plan.ready(30.0) == [] and plan.given_up(30.0) == []
    assert plan.next_wakeup(30.0) == 30.0  # woken for the deadline, not left waiting forever
    plan.observe(NAME, half, now=59.0)  # unchanged: the bound counts from the last change
    assert plan.given_up(60.0) == [(NAME, 60.0)]
    assert plan.given_up(600.0) == [] and plan.ready(600.0) == [] and plan.next_wakeup(600.0) is None
    whole = ArchiveStamp(NAME, 2048, 2)
    plan.observe(NAME, whole, now=700.0)  # rewritten: looked at again
    assert plan.ready(702.0) == [NAME]


def test_a_writer_that_keeps_writing_is_never_given_up_on():
    plan = Stability(window=2.0, give_up_after=60.0)
    for step in range(10):
        stamp = ArchiveStamp(NAME, 1000 + step, step)
        plan.observe(NAME, stamp, now=step * 50.0)
        if plan.ready(step * 50.0 + 2):
            plan.finished(NAME, stamp, Outcome.INCOMPLETE, now=step * 50.0 + 3)
        assert plan.given_up(step * 50.0 + 49) == []
