"""SIGKILL the agent at random points of ingests, many times; the store must stay consistent.

After every kill, ``lpm store ls`` may show only complete checkpoints, and each of them must
come back byte-exact through ``lpm store get``. After the last restart every archive is in
the store exactly once.
"""

import json
import random
import time

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from tests.support import lpm

TRIALS = 24
NEW_PER_TRIAL = 2
MEMORY = 48 << 20  # ~0.1-0.3 s of ingest each: kills land in the middle often


def _writing_since(store, started):
    staging = store / ".ingest" / "node-a" / "staging"
    try:
        return any(p.stat().st_mtime >= started for p in staging.iterdir())
    except FileNotFoundError:
        return False  # not created yet, or the file was committed between listing and stat


def _listed(store):
    return [json.loads(line) for line in lpm("store", "ls", "--store", str(store), "--json",
                                             check=True).stdout.splitlines()]


def _check_listed_checkpoints(store, archives, tmp_path, seen):
    """Get every listed checkpoint not verified before (committed ones never change)."""
    for entry in _listed(store):
        [(container, uri)] = entry["artifactURIs"].items()
        if uri in seen:
            continue
        seen.add(uri)
        out = tmp_path / "check.tar"
        lpm("store", "get", uri, "--store", str(store), "-o", str(out), check=True)
        assert out.read_bytes() == archives[container].read_bytes(), uri
        out.unlink()


def crash_trials(trials, kube_dir, store, tmp_path, seed=20261125):
    """``trials`` SIGKILLs of the agent mid-ingest, checking the store after each; returns the kills that
    landed with a dump half-written. bench/crash.py runs 200 of them; CI runs ``TRIALS``."""
    rng = random.Random(seed)
    archives = {}
    killed_mid_ingest = 0
    seen = set()
    for trial in range(trials):
        for index in range(NEW_PER_TRIAL):
            pod = Pod(uid=f"uid-{trial}-{index}", container=f"c{trial}-{index}")
            archives[pod.container] = make_archive(kube_dir, ArchiveSpec(pod=pod, memory=MEMORY),
                                                   archive_name(pod))
        started = time.time()
        with AgentProcess("--node", "node-a", "--checkpoint-dir", str(kube_dir), "--store", str(store),
                          "--debounce", "0") as proc:
            proc.wait_logged("agent starting")
            # Kill at a random moment of an ingest: wait until this run is writing a dump, then a
            # random fraction of the time one takes (so load on the machine cannot make every kill
            # land before or after the ingests).
            deadline = time.monotonic() + 20
            while not _writing_since(store, started) and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
        staging = store / ".ingest" / "node-a" / "staging"
        if staging.exists() and any(p.stat().st_mtime >= started for p in staging.iterdir()):
            killed_mid_ingest += 1  # this trial's kill left a dump half-written
        _check_listed_checkpoints(store, archives, tmp_path, seen)
    with AgentProcess("--node", "node-a", "--checkpoint-dir", str(kube_dir), "--store", str(store),
                      "--debounce", "0") as proc:
        deadline = time.monotonic() + 120 + trials
        while len(_listed(store)) < len(archives) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.stop()[0] == 0
    entries = _listed(store)
    assert sorted(e["containers"][0] for e in entries) == sorted(archives)  # each exactly once
    _check_listed_checkpoints(store, archives, tmp_path, seen)
    assert len(seen) == len(archives)
    return killed_mid_ingest


def test_sigkill_during_ingest_never_exposes_a_partial_checkpoint_nor_duplicates(kube_dir, store, tmp_path):
    killed_mid_ingest = crash_trials(TRIALS, kube_dir, store, tmp_path)
    print(f"crash trials: {TRIALS}, killed with an ingest in flight: {killed_mid_ingest}")
    assert killed_mid_ingest >= TRIALS // 4, "kills should land mid-ingest often enough to mean something"
