"""Hostile JSON wherever lpm reads it (manifest, marker, ledger record, spec.dump, config.dump): one
LpmError naming the file and the reason, and the one bad checkpoint skipped and reported while the
store keeps being listed, collected, restored from and ingested into."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab.archives import ArchiveSpec, Pod, make_archive
from tests.gc.support import gc, summary
from tests.support import lpm
from watcher.errors import ArchiveError, IdentityError, StoreError
from watcher.ingest import service
from watcher.jsonobj import json_object
from watcher.observe import AgentMetrics
from watcher.restore.image import parse_config_dump
from watcher.restore.importer import ContainersStorageImporter
from watcher.restore.source import DirectorySource
from watcher.restore.standalone import RestorerSettings, StandaloneRestorer
from watcher.store import catalog, fsio
from watcher.store.catalog import Checkpoint, Skipped
from watcher.store.ledger import Ledger
from watcher.zstream import CompressionSettings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

# (case, bytes, what the reason must say)
HOSTILE = [
    ("deep nesting", b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested deeper than 64 levels"),
    ("huge integer", b'{"a": ' + b"9" * 5000 + b"}", "a number of 5000 digits"),
    ("huge float", b'{"a": 1' + b"0" * 400 + b".5}", "a number of 403 characters"),
    ("infinite float", b'{"a": 1e999}', "the number 1e999 is not finite"),
    ("NaN", b'{"a": NaN}', "NaN is not a JSON number"),
    ("key given twice", b'{"a": 1, "a": 2}', "key 'a' appears twice in one object"),
    ("lone surrogate", b'{"a": "\\ud800"}', "surrogates not allowed"),
    ("not UTF-8", b'{"a": "\xff"}', "can't decode byte 0xff"),
    ("UTF-16", '{"a": 1}'.encode("utf-16"), "can't decode byte 0xff"),
    ("truncated", b'{"a": [1, 2', "Expecting"),
    ("empty", b"", "Expecting value"),
]
IDS = [case for case, _, _ in HOSTILE]


@pytest.mark.parametrize(("case", "data", "reason"), HOSTILE, ids=IDS)
def test_every_hostile_input_is_one_error_naming_the_file_and_the_reason(case, data, reason):
    with pytest.raises(StoreError) as caught:
        json_object(data, "checkpoint u/c/manifest.json", StoreError)
    assert str(caught.value).startswith("checkpoint u/c/manifest.json is not valid JSON ("), (case, caught.value)
    assert reason in str(caught.value), (case, caught.value)


def test_what_is_valid_still_reads():
    nested = b'{"a": ' + b"[" * 63 + b'"[[[[ in a string do not nest"' + b"]" * 63 + b"}"
    assert json_object(nested, "f", StoreError)["a"][0][0][0]
    assert json_object(b'{"a": "\\ud83d\\ude00", "n": -12345678901234567890, "f": 0.5}', "f", StoreError) == {
        "a": "\U0001f600", "n": -12345678901234567890, "f": 0.5}
    with pytest.raises(StoreError, match="^f is not a JSON object$"):
        json_object(b"[1]", "f", StoreError)


def _ingest(store: Path, tmp_path: Path, name: str, target: str | None = None) -> tuple[str, str, Path]:
    pod = Pod(uid=str(uuid.uuid4()), namespace="shop", name=name, container="app")
    kube_dir = tmp_path / f"kubelet-{name}"
    kube_dir.mkdir(exist_ok=True)
    archive = make_archive(kube_dir, ArchiveSpec(pod=pod, memory=64 * 1024))
    root = fsio.open_root(store, create=True)
    try:
        result = service.ingest_archive(root, archive, "node-a", CompressionSettings(), threading.Event(), NOW,
                                        target_node=target)
    finally:
        os.close(root)
    return result.manifest.pod_uid, result.manifest.checkpoint_id, archive


def _scan(store: Path) -> list[Checkpoint | Skipped]:
    root = fsio.open_root(store, create=False)
    try:
        return list(catalog.scan(root))
    finally:
        os.close(root)


@pytest.mark.parametrize("planted", ["app/manifest.json", ".checkpoint-complete"])
@pytest.mark.parametrize(("case", "data", "reason"), HOSTILE, ids=IDS)
def test_one_hostile_manifest_or_marker_skips_that_checkpoint_only(store, tmp_path, planted, case, data, reason):
    bad_uid, bad_cid, _ = _ingest(store, tmp_path, "bad-0")
    good_uid, good_cid, _ = _ingest(store, tmp_path, "good-0")
    (store / bad_uid / bad_cid / planted).write_bytes(data)
    entries = _scan(store)
    assert [(e.marker.pod_uid, e.marker.checkpoint_id) for e in entries if isinstance(e, Checkpoint)] == [
        (good_uid, good_cid)], entries
    [skipped] = [e for e in entries if isinstance(e, Skipped)]
    assert skipped.path == f"{bad_uid}/{bad_cid}" and skipped.damaged, skipped
    assert f"{bad_uid}/{bad_cid}/{planted} is not valid JSON (" in skipped.reason, skipped
    assert reason in skipped.reason, skipped


def _plant_three(store: Path, tmp_path: Path) -> tuple[list[str], str]:
    """Three checkpoints with a damaged manifest (deep, a huge integer, a megabyte-long pod name), one sound."""
    planted = []
    for name, change in [
        ("deep", lambda body: b"[" * 100_000 + b"]" * 100_000),
        ("bigint", lambda body: json.dumps({**body, "compressedSize": 0})
         .replace('"compressedSize": 0', '"compressedSize": ' + "9" * 5000).encode()),
        ("longtext", lambda body: json.dumps({**body, "podName": "x" * 900_000}).encode()),
    ]:
        uid, cid, _ = _ingest(store, tmp_path, name)
        manifest = store / uid / cid / "app" / "manifest.json"
        manifest.write_bytes(change(json.loads(manifest.read_bytes())))
        planted.append(f"{uid}/{cid}")
    good_uid, good_cid, _ = _ingest(store, tmp_path, "good")
    return planted, f"{good_uid}/{good_cid}"


def test_store_ls_lists_the_rest_and_says_what_it_skipped_and_why(store, tmp_path):
    planted, good = _plant_three(store, tmp_path)
    result = lpm("store", "ls", "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    assert [f"{c['podUID']}/{c['checkpointID']}" for c in map(json.loads, result.stdout.splitlines())] == [good]
    lines = result.stderr.splitlines()
    assert lines[0] == f"lpm: skipped 3 damaged checkpoint(s) in {store}:", result.stderr
    why = {line.split(": ", 2)[1].strip(): line for line in lines[1:]}
    assert sorted(why) == sorted(planted), result.stderr
    assert "manifest.json is not valid JSON (nested deeper than 64 levels)" in why[planted[0]], result.stderr
    assert "manifest.json is not valid JSON (a number of 5000 digits)" in why[planted[1]], result.stderr
    assert "unsafe pod name 'xxxx" in why[planted[2]] and "(900000 long)" in why[planted[2]], result.stderr
    assert max(map(len, lines)) < 1000, result.stderr  # a megabyte-long field is not echoed back
    assert "Traceback" not in result.stderr


def test_store_ls_of_a_sound_store_and_of_writes_in_progress_says_nothing(store, tmp_path):
    uid, cid, _ = _ingest(store, tmp_path, "one")
    _, cid2, _ = _ingest(store, tmp_path, "two")
    (store / uid / cid / ".checkpoint-complete").unlink()  # as while a write is under way
    result = lpm("store", "ls", "--store", str(store))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert len(result.stdout.splitlines()) == 1 and cid2 in result.stdout, result.stdout


def test_the_collector_counts_damaged_checkpoints_and_collects_the_rest(store, tmp_path):
    planted, good = _plant_three(store, tmp_path)
    code, lines, stderr = gc(store, "--retention", "0s")
    assert code == 0, stderr
    deleted = {line["path"] for line in lines if line["event"] == "deletion"}
    assert deleted == {good}, lines
    assert summary(lines)["keptUnknown"] == 3 and summary(lines)["deleted"] == 1, lines
    assert all((store / path).is_dir() for path in planted)
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize(("case", "data", "reason"), HOSTILE, ids=IDS)
def test_a_hostile_ledger_record_is_an_error_and_ingest_heals_it(store, tmp_path, case, data, reason):
    uid, cid, archive = _ingest(store, tmp_path, "led")
    [record] = (store / ".ingest" / "node-a" / "ledger").iterdir()
    record.write_bytes(data)
    root = fsio.open_root(store, create=False)
    try:
        with pytest.raises(StoreError) as caught:
            Ledger(root, "node-a").lookup(archive.name)
        assert f"record for {archive.name!r} is not valid JSON (" in str(caught.value), caught.value
        assert reason in str(caught.value), caught.value
        again = service.ingest_archive(root, archive, "node-a", CompressionSettings(), threading.Event(), NOW)
        assert (again.manifest.pod_uid, again.manifest.checkpoint_id) == (uid, cid)
        healed = Ledger(root, "node-a").lookup(archive.name)
    finally:
        os.close(root)
    assert healed is not None and healed.ref == again.manifest.ref


@pytest.mark.parametrize("field", ["size", "mtimeNs"])
@pytest.mark.parametrize("value", [10**30, -1, 1.5, "12", True])
def test_ledger_numbers_are_exact_non_negative_64_bit_integers(store, tmp_path, field, value):
    _, _, archive = _ingest(store, tmp_path, "nums")
    [record] = (store / ".ingest" / "node-a" / "ledger").iterdir()
    record.write_text(json.dumps({**json.loads(record.read_text()), field: value}))
    root = fsio.open_root(store, create=False)
    try:
        with pytest.raises(StoreError, match=f"is malformed \\({field} must be an integer from 0 to"):
            Ledger(root, "node-a").lookup(archive.name)
    finally:
        os.close(root)


@pytest.mark.parametrize(("case", "data", "reason"), HOSTILE, ids=IDS)
def test_a_hostile_spec_dump_is_an_identity_error(store, kube_dir, case, data, reason):
    archive = make_archive(kube_dir, ArchiveSpec(spec=data))
    root = fsio.open_root(store, create=True)
    try:
        with pytest.raises(IdentityError) as caught:
            service.ingest_archive(root, archive, "node-a", CompressionSettings(), threading.Event(), NOW)
    finally:
        os.close(root)
    assert f"{archive.name!r}: spec.dump is not valid JSON (" in str(caught.value), caught.value
    assert reason in str(caught.value), caught.value


def test_hostile_json_inside_the_cri_o_labels_annotation_is_an_identity_error(store, kube_dir):
    spec = {"annotations": {"io.kubernetes.cri-o.Labels": "[" * 100_000 + "]" * 100_000}}
    archive = make_archive(kube_dir, ArchiveSpec(spec=spec))
    root = fsio.open_root(store, create=True)
    try:
        with pytest.raises(IdentityError, match="io.kubernetes.cri-o.Labels in spec.dump is not valid JSON "
                                                r"\(nested deeper than 64 levels\)"):
            service.ingest_archive(root, archive, "node-a", CompressionSettings(), threading.Event(), NOW)
    finally:
        os.close(root)


@pytest.mark.parametrize(("case", "data", "reason"), HOSTILE, ids=IDS)
def test_a_hostile_config_dump_is_an_archive_error(case, data, reason):
    with pytest.raises(ArchiveError) as caught:
        parse_config_dump(data, "archive a.tar")
    assert str(caught.value).startswith("archive a.tar: config.dump is not valid JSON ("), caught.value
    assert reason in str(caught.value), caught.value


@pytest.mark.parametrize("field", ["kubeletArchive", "creationTime"])
def test_a_megabyte_manifest_string_is_refused_in_a_line(store, tmp_path, field):
    uid, cid, _ = _ingest(store, tmp_path, "text")
    manifest = store / uid / cid / "app" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), field: "x" * 900_000}))
    [skipped] = [e for e in _scan(store) if isinstance(e, Skipped)]
    assert f"{field} must be a one-line string of at most 1024 characters" in skipped.reason, skipped.reason[:2000]
    assert len(skipped.reason) < 1000


def test_a_megabyte_config_dump_field_is_refused():
    with pytest.raises(ArchiveError, match="field 'rootfsImageName' is not a string \\(one line, at most 1024"):
        parse_config_dump(json.dumps({"rootfsImageName": "a" * 1_000_000}).encode(), "archive a.tar")


def test_the_restorer_refuses_a_hostile_checkpoint_and_passes_over_a_hostile_marker(store, tmp_path, caplog):
    bad_uid, bad_cid, _ = _ingest(store, tmp_path, "deep", target="node-b")
    (store / bad_uid / bad_cid / "app" / "manifest.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    marker_uid, marker_cid, _ = _ingest(store, tmp_path, "bigint", target="node-b")
    (store / marker_uid / marker_cid / ".checkpoint-complete").write_bytes(b'{"a": ' + b"9" * 5000 + b"}")
    work = tmp_path / "work-b"
    settings = RestorerSettings("node-b", work, ContainersStorageImporter(()), 0.1)
    root = fsio.open_root(store, create=False)
    try:
        restorer = StandaloneRestorer(settings, DirectorySource(root, CompressionSettings(), threading.Event()),
                                      AgentMetrics(store))
        try:
            with caplog.at_level(logging.WARNING):
                asyncio.run(restorer.poll_round())
        finally:
            restorer.close()
    finally:
        os.close(root)
    record = json.loads((work / "imported" / f"{bad_uid}_{bad_cid}.json").read_text())
    assert record["outcome"] == "refused", record
    assert "manifest.json is not valid JSON (nested deeper than 64 levels)" in record["reason"], record
    assert sorted(os.listdir(work / "imported")) == [f"{bad_uid}_{bad_cid}.json"]
    passed_over = [r for r in caplog.records if r.getMessage() == "store entry passed over"]
    assert [r.fields["path"] for r in passed_over] == [f"{marker_uid}/{marker_cid}"], caplog.text
    assert "a number of 5000 digits" in passed_over[0].fields["reason"], caplog.text
