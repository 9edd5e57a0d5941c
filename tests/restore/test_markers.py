"""The marker poller's planner: a table of cases, then the real store seen through a second view.

The second view is a bindfs mount of the store directory, the way each test node sees the
shared directory: the poller must find, through node-b's view, markers written through
node-a's after the view was mounted — by reading, not by being told (no inotify across views).
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab.archives import ArchiveSpec, Pod, make_archive
from tests.support import lpm
from watcher.restore.markers import PollState, plan, read_markers
from watcher.store import fsio
from watcher.store.manifest import Marker

WHEN = datetime(2026, 11, 25, 10, 11, 12, tzinfo=UTC)


def marker(cid: str, target: str | None) -> Marker:
    return Marker(checkpoint_id=cid, pod_uid=f"uid-{cid}", containers=("app",), completed_at=WHEN, target_node=target)


A, B, C, D = (marker("a", "node-b"), marker("b", "node-c"), marker("c", None), marker("d", "node-b"))


@pytest.mark.parametrize("markers, acted, first_seen, now, look_up, give_up, forget", [
    ([A, B, C], set(), {}, 100.0, ["a"], [], set()),  # only markers naming this node
    ([A, D], {"a"}, {}, 100.0, ["d"], [], set()),  # acted on: not again
    ([A, D], set(), {"a": 0.0, "d": 50.0}, 100.0, ["d"], ["a"], set()),  # looked up past the patience (60 s)
    ([A, D], set(), {"a": 40.0}, 100.0, ["a", "d"], [], set()),  # within it: look again
    ([D], {"a", "x"}, {"y": 1.0}, 100.0, ["d"], [], {"a", "x", "y"}),  # collected checkpoints are forgotten
    ([], set(), {}, 100.0, [], [], set()),
])
def test_plan(markers: list[Marker], acted: set[str], first_seen: dict[str, float], now: float,
              look_up: list[str], give_up: list[str], forget: set[str]) -> None:
    got = plan(markers, "node-b", PollState(set(acted), dict(first_seen)), now, patience=60.0)
    assert [m.checkpoint_id for m in got.look_up] == look_up
    assert [m.checkpoint_id for m in got.give_up] == give_up
    assert got.forget == forget


def _ingest(tmp_path: Path, store: Path, name: str, target: str | None) -> str:
    pod = Pod(uid=str(uuid.uuid4()), namespace="shop", name=name, container="app")
    kube_dir = tmp_path / f"kubelet-{name}"
    kube_dir.mkdir()
    archive = make_archive(kube_dir, ArchiveSpec(pod=pod, memory=1 << 16))
    flags = ("--target-node", target) if target else ()
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", *flags, check=True).stdout.strip()
    return uri.split("/")[3]


def test_markers_written_through_one_view_are_found_through_the_other(two_views: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    store, view = two_views
    view_fd = fsio.open_root(view, create=False)  # opened before anything is written: node-b's agent at start
    try:
        ours = _ingest(tmp_path, store, "for-b", "node-b")
        _ingest(tmp_path, store, "for-c", "node-c")
        _ingest(tmp_path, store, "anywhere", None)
        unfinished = _ingest(tmp_path, store, "unfinished", "node-b")
        [marker_file] = store.glob(f"*/{unfinished}/.checkpoint-complete")
        marker_file.unlink()  # a checkpoint still being written: no marker yet
        state = PollState()
        got = plan(list(read_markers(view_fd)), "node-b", state, 0.0, patience=600.0)
        assert [m.checkpoint_id for m in got.look_up] == [ours]
        assert got.look_up[0].containers == ("app",)
        state.acted.add(ours)
        assert plan(list(read_markers(view_fd)), "node-b", state, 1.0, 600.0).look_up == ()
        # The collector removes it through node-a's view; node-b's poller forgets it.
        [directory] = store.glob(f"*/{ours}")
        shutil.rmtree(directory)
        assert plan(list(read_markers(view_fd)), "node-b", state, 2.0, 600.0).forget == {ours}
    finally:
        os.close(view_fd)
