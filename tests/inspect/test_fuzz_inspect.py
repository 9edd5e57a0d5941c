"""lpm inspect's reader on damaged real archives: whatever the bytes of the CRIU images and JSON files it
reads, the outcome is an inspection or one LpmError naming the archive, never another exception
(tests/test_fuzz.py's contract for every parser of untrusted input). The archive is the real one
(fixtures.py), each case changing, cutting or growing one member the reader decodes."""

from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.inspect.fixtures import Archives
from watcher.errors import LpmError
from watcher.inspect.reader import Collector, Options

CASES = int(os.environ.get("LPM_FUZZ_CASES", "300"))
_DECODED = ("checkpoint/core-", "checkpoint/mm-", "checkpoint/pagemap-", "checkpoint/ids-", "checkpoint/fs-",
            "checkpoint/fdinfo-", "checkpoint/files.img", "checkpoint/pstree.img", "checkpoint/inventory.img",
            "config.dump", "spec.dump", "stats-dump", "deleted.files", "rootfs-diff.tar")


def _members(archives: Archives) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archives.tcp) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]  # type: ignore[union-attr]


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("grow"), st.integers(0, 1 << 20), st.integers(0, 255)),
)


def test_damaged_images_end_in_an_inspection_or_one_lpm_error(archives: Archives) -> None:
    members = _members(archives)
    targets = [i for i, (info, data) in enumerate(members) if data and info.name.startswith(_DECODED)]
    assert len(targets) >= 20, [members[i][0].name for i in targets]
    outcomes: Counter[str] = Counter()

    @settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(targets), _edit)
    def check(index: int, edit: tuple[str, int, int]) -> None:
        kind, at, value = edit
        info, data = members[index]
        assert data is not None
        body = bytearray(data)
        at %= len(body)
        if kind == "flip":
            body[at] ^= value
        elif kind == "cut":
            del body[at:]
        else:
            body[at:at] = bytes([value]) * 7
        changed = [*members[:index], (tarfile.TarInfo(info.name), bytes(body)), *members[index + 1:]]
        collector = Collector("fuzzed.tar", Options(environment=True, memory_pid=1, memory_limit=4096))
        data_out = _tar(changed)
        try:
            collector.feed(data_out)
            result: Any = collector.finish(len(data_out))
        except LpmError as err:
            assert str(err), "an LpmError must say what is wrong"
            outcomes["refused"] += 1
        else:
            assert result.processes, result
            outcomes["ok"] += 1

    check()
    # Not vacuous: some damage is caught, some is in what the reader does not depend on.
    assert outcomes["refused"] and outcomes["ok"], outcomes
