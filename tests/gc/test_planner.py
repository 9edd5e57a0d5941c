"""The planner, table-driven: entries + policy + now -> deletions with reasons, and pins kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lpm_gc.entries import Entry, Kind
from lpm_gc.planner import Policy, Reason, plan

NOW = 1_800_000_000.0
HOUR = 3600.0


def ck(name: str, age_h: float, ns: str = "ns", pod: str = "p", containers: tuple[str, ...] = ("app",),
       size: int = 1, pinned: bool = False) -> Entry:
    """A complete checkpoint ``age_h`` hours old; its name sorts it among checkpoints of equal age."""
    return Entry(Kind.COMPLETE, f"uid-{pod}", name, ns, pod, containers, NOW - age_h * HOUR, NOW - age_h * HOUR,
                 size, pinned)


def incomplete(name: str, idle_s: float, pinned: bool = False) -> Entry:
    return Entry(Kind.INCOMPLETE, "uid-p", name, modified=NOW - idle_s, pinned=pinned)


def empty_pod(name: str, idle_s: float) -> Entry:
    return Entry(Kind.EMPTY_POD, "", name, modified=NOW - idle_s)


def staging(name: str, idle_s: float) -> Entry:
    return Entry(Kind.STAGING, "node-a", name, modified=NOW - idle_s)


@dataclass
class Case:
    entries: list[Entry]
    policy: Policy
    deleted: list[tuple[str, Reason]]
    pinned: list[str] = field(default_factory=list)


R = Reason
NO_RETENTION = {"retention": None}

CASES = {
    "retention deletes what is older, keeps what is younger": Case(
        [ck("a", 25), ck("b", 23)], Policy(retention=24 * HOUR), [("a", R.RETENTION)]),
    "exactly the retention is not older than it": Case(
        [ck("a", 24)], Policy(retention=24 * HOUR), []),
    "no retention keeps every complete checkpoint": Case(
        [ck("a", 10_000)], Policy(retention=None), []),
    "a pin keeps an expired checkpoint and is reported": Case(
        [ck("a", 25, pinned=True), ck("b", 26)], Policy(retention=24 * HOUR), [("b", R.RETENTION)], ["a"]),
    "an incomplete checkpoint idle past stale-after was abandoned": Case(
        [incomplete("old", 2 * HOUR), incomplete("fresh", 10)], Policy(stale_after=HOUR), [("old", R.ABANDONED)]),
    "stale-after is strict too": Case(
        [incomplete("edge", HOUR)], Policy(stale_after=HOUR), []),
    "a pinned abandoned write is kept": Case(
        [incomplete("old", 2 * HOUR, pinned=True)], Policy(stale_after=HOUR), [], ["old"]),
    "retention never judges an incomplete checkpoint": Case(
        [incomplete("fresh", 1)], Policy(retention=0.0, stale_after=HOUR), []),
    "an empty pod directory goes once it has been empty for stale-after": Case(
        [empty_pod("old", 2 * HOUR), empty_pod("new", 1)], Policy(stale_after=HOUR), [("old", R.EMPTY_POD)]),
    "a staging file goes once idle for stale-after, a live one stays": Case(
        [staging(".dump.tmp-1", 2 * HOUR), staging(".dump.tmp-2", 5)], Policy(stale_after=HOUR),
        [(".dump.tmp-1", R.STALE_STAGING)]),
    "max per container keeps the newest": Case(
        [ck("a", 4), ck("b", 3), ck("c", 2), ck("d", 1)], Policy(**NO_RETENTION, max_per_container=2),
        [("a", R.MAX_PER_CONTAINER), ("b", R.MAX_PER_CONTAINER)]),
    "max per container counts each container of a multi-container checkpoint": Case(
        [ck("a", 3, containers=("app", "envoy")), ck("b", 2, containers=("envoy",)), ck("c", 1, containers=("app",))],
        Policy(**NO_RETENTION, max_per_container=1), [("a", R.MAX_PER_CONTAINER)]),
    "max per pod groups by namespace and pod name": Case(
        [ck("a", 3, pod="x"), ck("b", 2, pod="x"), ck("c", 3, pod="y"), ck("d", 1, ns="other", pod="x")],
        Policy(**NO_RETENTION, max_per_pod=1), [("a", R.MAX_PER_POD)]),
    "max per namespace": Case(
        [ck("a", 3, pod="x"), ck("b", 2, pod="y"), ck("c", 1, pod="z"), ck("d", 9, ns="other")],
        Policy(**NO_RETENTION, max_per_namespace=2), [("a", R.MAX_PER_NAMESPACE)]),
    "max size per namespace drops oldest until it fits": Case(
        [ck("a", 3, size=40), ck("b", 2, size=40), ck("c", 1, size=40), ck("d", 9, ns="other", size=90)],
        Policy(**NO_RETENTION, max_size_per_namespace=100), [("a", R.MAX_SIZE_PER_NAMESPACE)]),
    "max total size across namespaces": Case(
        [ck("a", 3, ns="n1", size=60), ck("b", 2, ns="n2", size=60), ck("c", 1, ns="n3", size=60)],
        Policy(**NO_RETENTION, max_total_size=100), [("a", R.MAX_TOTAL_SIZE), ("b", R.MAX_TOTAL_SIZE)]),
    "a pinned checkpoint counts toward a limit; the next oldest goes instead": Case(
        [ck("a", 3, pinned=True), ck("b", 2), ck("c", 1)], Policy(**NO_RETENTION, max_per_pod=2),
        [("b", R.MAX_PER_POD)], ["a"]),
    "a limit that only pins exceed deletes nothing and names every pin in the way": Case(
        [ck("a", 3, pinned=True), ck("b", 2, pinned=True)], Policy(**NO_RETENTION, max_per_pod=1), [], ["a", "b"]),
    "expired checkpoints do not count again toward the limits": Case(
        [ck("a", 30), ck("b", 2), ck("c", 1)], Policy(retention=24 * HOUR, max_per_pod=2), [("a", R.RETENTION)]),
    "a checkpoint taken by one limit is not taken again by the next": Case(
        [ck("a", 3), ck("b", 2), ck("c", 1)], Policy(**NO_RETENTION, max_per_container=2, max_per_pod=2),
        [("a", R.MAX_PER_CONTAINER)]),
    "limits apply in order container, pod, namespace, sizes": Case(
        [ck("a", 4, pod="x", size=10), ck("b", 3, pod="x", size=10), ck("c", 2, pod="y", size=10),
         ck("d", 1, pod="z", size=10)],
        Policy(**NO_RETENTION, max_per_pod=1, max_per_namespace=2, max_total_size=10),
        [("a", R.MAX_PER_POD), ("b", R.MAX_PER_NAMESPACE), ("c", R.MAX_TOTAL_SIZE)]),
    "equal ages are ordered by name, never by listing order": Case(
        [ck("b", 1), ck("a", 1)], Policy(**NO_RETENTION, max_per_pod=1), [("a", R.MAX_PER_POD)]),
    "nothing to do": Case([], Policy(), []),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan(case: Case) -> None:
    result = plan(case.entries, case.policy, NOW)
    assert [(d.entry.name, d.reason) for d in result.deletions] == case.deleted
    assert [e.name for e in result.kept_pinned] == case.pinned


def test_plan_is_pure_and_repeatable() -> None:
    entries = [ck(f"c{i:03d}", i % 7, pod=f"p{i % 5}", size=i) for i in range(200)]
    policy = Policy(retention=5 * HOUR, max_per_pod=10, max_total_size=3000)
    first = plan(entries, policy, NOW)
    assert plan(list(reversed(entries)), policy, NOW) == first
    assert len({d.entry for d in first.deletions}) == len(first.deletions)  # none twice


def test_segments_name_each_kind_below_the_store_root() -> None:
    assert ck("20261125T100000Z-0123abcd", 1).segments == ("uid-p", "20261125T100000Z-0123abcd")
    assert empty_pod("uid-q", 1).segments == ("uid-q",)
    assert staging(".dump.tar.zst.tmp-ab", 1).path == ".ingest/node-a/staging/.dump.tar.zst.tmp-ab"
