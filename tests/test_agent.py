"""The standalone agent as a real process on a real kubelet-style checkpoint directory."""

import json
import os
import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, archive_bytes, archive_name, make_archive, write_in_place
from tests.support import lpm
from watcher.store.ledger import _file_name as ledger_file_name


def agent(kube_dir, store, *extra):
    return AgentProcess("--node", "node-a", "--checkpoint-dir", str(kube_dir), "--store", str(store),
                        "--debounce", "0.5", *extra)


def listed(store):
    result = lpm("store", "ls", "--store", str(store), "--json", check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_archives_present_at_start_and_written_in_place_later_are_ingested_once(kube_dir, store, tmp_path):
    present = make_archive(kube_dir, ArchiveSpec(pod=Pod(container="early"), memory=2 << 20))
    with agent(kube_dir, store) as proc:
        proc.wait_logged("archive ingested", 1)
        # Now the kubelet's runtime writes an archive in place, over ~2 s, no rename.
        late_pod = Pod(container="late")
        data = archive_bytes(ArchiveSpec(pod=late_pod, memory=4 << 20))
        late = kube_dir / archive_name(late_pod)
        write_in_place(late, data, pieces=8, pause=0.25)
        proc.wait_logged("archive ingested", 2)
        code, seconds = proc.stop()
    assert code == 0 and seconds < 5
    entries = listed(store)
    assert sorted(e["containers"][0] for e in entries) == ["early", "late"]
    for archive in (present, late):
        [entry] = [e for e in entries if e["containers"][0] in archive.name]
        out = tmp_path / f"{archive.name}.out"
        lpm("store", "get", entry["artifactURIs"][entry["containers"][0]], "--store", str(store), "-o", str(out),
            check=True)
        assert out.read_bytes() == archive.read_bytes()  # never an early, partial read
    # One JSON object per line on stderr, every line.
    assert all(line.get("msg") != "<not JSON>" for line in proc.lines)


def test_restart_never_duplicates(kube_dir, store):
    make_archive(kube_dir, ArchiveSpec(memory=1 << 20))
    with agent(kube_dir, store) as proc:
        proc.wait_logged("archive ingested")
        assert proc.stop()[0] == 0
    with agent(kube_dir, store) as proc:
        proc.wait_logged("archive already in the store")
        assert proc.stop()[0] == 0
    assert proc.logs("archive ingested") == []
    assert len(listed(store)) == 1


def _bad_archives(kube_dir):
    """Each kind of bad input the agent must refuse, with the words its error must contain."""
    pods = {kind: Pod(container=kind) for kind in ("notatar", "truncated", "nospec", "garbled", "hostile")}
    (kube_dir / archive_name(pods["notatar"])).write_bytes(b"\x89PNG not a tar" * 500)
    whole = archive_bytes(ArchiveSpec(pod=pods["truncated"], memory=1 << 20))
    (kube_dir / archive_name(pods["truncated"])).write_bytes(whole[: len(whole) // 2])
    make_archive(kube_dir, ArchiveSpec(pod=pods["nospec"], omit_spec=True))
    make_archive(kube_dir, ArchiveSpec(pod=pods["garbled"], spec=b"{\"annotations\": {\"io.kubernetes"))
    hostile = Pod(container="hostile", uid="../../../etc")
    make_archive(kube_dir, ArchiveSpec(pod=hostile), archive_name(pods["hostile"]))
    return {
        archive_name(pods["notatar"]): "not a tar archive",
        archive_name(pods["truncated"]): "ends at byte",
        archive_name(pods["nospec"]): "no spec.dump",
        archive_name(pods["garbled"]): "not valid JSON",
        archive_name(pods["hostile"]): "unsafe identity",
    }


def test_bad_archives_are_reported_once_each_and_the_next_good_one_is_ingested(kube_dir, store):
    expected = _bad_archives(kube_dir)
    with agent(kube_dir, store) as proc:
        proc.wait_for(lambda lines: len({line.get("archive") for line in lines
                                         if line.get("msg") in ("archive refused", "archive not finished yet; "
                                                                "waiting for its writer")}) >= len(expected))
        good = make_archive(kube_dir, ArchiveSpec(pod=Pod(container="good"), memory=1 << 20))
        [ingested] = proc.wait_logged("archive ingested")
        assert ingested["archive"] == good.name
        assert proc.stop()[0] == 0
    reports = proc.logs("archive refused") + proc.logs("archive not finished yet; waiting for its writer")
    by_archive = {}
    for line in reports:
        by_archive.setdefault(line["archive"], []).append(line["reason"])
    assert by_archive.keys() == expected.keys()
    for name, words in expected.items():
        assert len(by_archive[name]) == 1, by_archive[name]  # reported once, not in a loop
        assert words in by_archive[name][0] and name in by_archive[name][0]
    assert [e["containers"] for e in listed(store)] == [["good"]]
    assert not [p for p in store.rglob("*") if p.name.startswith(".") and ".tmp-" in p.name]
    assert not (store / "..").resolve().joinpath("etc").exists()


def test_delete_ingested_removes_the_kubelet_archive_only_after_verification(kube_dir, store):
    archive = make_archive(kube_dir, ArchiveSpec(memory=1 << 20))
    with agent(kube_dir, store, "--delete-ingested") as proc:
        proc.wait_logged("kubelet archive removed after verified ingest")
        assert proc.stop()[0] == 0
    assert not archive.exists()
    assert len(listed(store)) == 1
    ledger = [json.loads(p.read_text()) for p in (store / ".ingest" / "node-a" / "ledger").iterdir()]
    assert [record["verified"] for record in ledger] == [True]


def test_delete_ingested_keeps_an_archive_whose_stored_copy_is_bad(kube_dir, store, tmp_path):
    archive = make_archive(kube_dir, ArchiveSpec(memory=1 << 20))
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", check=True).stdout.strip()
    dump = store / "/".join(uri.removeprefix("shared://").split("/"))
    damaged = bytearray(dump.read_bytes())
    damaged[100] ^= 0xFF
    dump.write_bytes(bytes(damaged))
    with agent(kube_dir, store, "--delete-ingested") as proc:
        [line] = proc.wait_logged("stored copy failed verification; kubelet archive kept")
        assert proc.stop()[0] == 0
    assert archive.exists() and line["reason"].startswith(f"artifact {uri}: stored dump")


def test_force_polling(kube_dir, store):
    with agent(kube_dir, store, "--force-polling") as proc:
        proc.wait_logged("agent starting")
        write_in_place(kube_dir / archive_name(Pod()), archive_bytes(ArchiveSpec(memory=1 << 20)), pause=0.1)
        proc.wait_logged("archive ingested")
        assert proc.stop()[0] == 0


def _staged_bytes(store):
    """Bytes in node-a's staging files: the dump an ingest is writing, before its commit."""
    staging = store / ".ingest" / "node-a" / "staging"
    total = 0
    for path in staging.glob("*") if staging.is_dir() else ():
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # committed (renamed away) between the listing and the stat
            pass
    return total


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_agent_within_5_seconds_even_mid_ingest(kube_dir, store, sig):
    make_archive(kube_dir, ArchiveSpec(memory=768 << 20))
    with agent(kube_dir, store) as proc:
        # Mid-ingest for certain: its dump is being written into staging (not a guess at how long the
        # debounce and the start of the read take).
        deadline = time.monotonic() + 30
        while _staged_bytes(store) == 0:
            assert time.monotonic() < deadline and not proc.logs("archive ingested"), "no ingest under way"
            time.sleep(0.02)
        code, seconds = proc.stop(sig)
    assert code == 0 and seconds < 5, (code, seconds, proc.raw)
    # Stopped in the middle: nothing committed, nothing announced, no partial file anywhere.
    assert proc.logs("archive ingested") == [] and listed(store) == []
    assert not [p for p in store.rglob("*") if ".tmp-" in p.name and not p.parent.name == "staging"]


@pytest.mark.parametrize("where", ["checkpoint directory", "ledger", "probe file"])
def test_sigterm_stops_the_agent_within_5_seconds_with_a_fifo_planted(kube_dir, store, where):
    """A FIFO opened for reading blocks until a writer comes; a thread stuck there outlives SIGTERM."""
    good = make_archive(kube_dir, ArchiveSpec(pod=Pod(container="good"), memory=1 << 20))
    fifo = {
        "checkpoint directory": kube_dir / archive_name(Pod(container="fifo")),
        "ledger": store / ".ingest" / "node-a" / "ledger" / ledger_file_name(good.name),  # good's own record
        "probe file": store / ".readyz-node-a",
    }[where]
    for directory in reversed([fifo.parent, *fifo.parent.parents]):
        if not directory.exists():
            directory.mkdir(mode=0o700)
    os.mkfifo(fifo, 0o600)
    with agent(kube_dir, store) as proc:
        [ingested] = proc.wait_logged("archive ingested")
        assert ingested["archive"] == good.name
        if where == "checkpoint directory":
            [refused] = proc.wait_logged("archive refused")
            assert refused["reason"] == f"kubelet archive: {fifo} is a FIFO, refused", refused
        if where == "probe file":  # the shared store cannot be probed: the checkpoint is held locally, and why
            [degraded] = proc.wait_logged("shared store unavailable; checkpoints are held in the local store")
            assert degraded["reason"].endswith("store probe file: .readyz-node-a is a FIFO, refused"), degraded
            assert ingested["storageType"] == "local", ingested
        code, seconds = proc.stop()
    assert code == 0 and seconds < 5, (code, seconds, "".join(proc.raw))


def _metrics(proc):
    [served] = proc.wait_logged("health endpoints served")
    with urllib.request.urlopen(f"http://127.0.0.1:{served['port']}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_an_archive_that_never_finishes_is_given_up_on_with_a_warning_and_a_metric_then_read_again_when_rewritten(
        kube_dir, store):
    pod = Pod(container="stuck")
    whole = archive_bytes(ArchiveSpec(pod=pod, memory=1 << 20))
    path = kube_dir / archive_name(pod)
    path.write_bytes(whole[: len(whole) // 2])  # its writer died half-way: it will never end
    with agent(kube_dir, store, "--give-up-after", "2", "--health-port", "0") as proc:
        [gave_up] = proc.wait_logged("archive never finished; refused", timeout=20)
        assert gave_up["level"] == "warning" and gave_up["archive"] == path.name
        assert "no end-of-archive blocks after" in gave_up["reason"] and gave_up["unchangedSeconds"] >= 2
        seen = _metrics(proc)
        assert seen[("lpm_archives_given_up_total", ())] == 1
        assert seen[("lpm_failures_total", (("operation", "ingest"), ("reason", "archive")))] == 1
        # Rewritten whole (the kubelet checkpointed the container again under the same second's name).
        path.write_bytes(whole)
        [ingested] = proc.wait_logged("archive ingested", timeout=30)
        assert ingested["archive"] == path.name
        assert proc.stop()[0] == 0
    assert len(proc.logs("archive never finished; refused")) == 1  # once, not in a loop
    assert [e["containers"] for e in listed(store)] == [["stuck"]]
