"""The ``lpm`` command line exactly as other tools call it."""

import hashlib
import json
import os

import pytest
import zstandard

from lab.archives import ArchiveSpec, Pod, make_archive
from tests.support import KINDS, WORDS, lpm, planted
from watcher.cli import runtime_endpoint


def test_ingest_prints_uri_and_ls_json_lists_it(kube_dir, store):
    archive = make_archive(kube_dir, ArchiveSpec(memory=1 << 20))
    result = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", "--target-node", "node-b",
                 check=True)
    uri = result.stdout.strip()
    assert uri.startswith(f"shared://{Pod().uid}/") and uri.endswith("/cart-api/dump.tar.zst")
    listed = [json.loads(line) for line in lpm("store", "ls", "--store", str(store), "--json",
                                               check=True).stdout.splitlines()]
    assert listed == [{
        "podUID": Pod().uid, "podNamespace": "shop-prod", "podName": "cart-7d9f8-x2x4z",
        "checkpointID": uri.split("/")[3], "containers": ["cart-api"], "creationTime": "2026-11-25T10:11:12Z",
        "targetNode": "node-b", "artifactURIs": {"cart-api": uri},
    }]
    # Ingesting the same archive again prints the same URI and adds nothing.
    assert lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", check=True).stdout.strip() == uri
    assert len(lpm("store", "ls", "--store", str(store), "--json").stdout.splitlines()) == 1


def test_get_writes_the_original_archive(kube_dir, store, tmp_path):
    archive = make_archive(kube_dir, ArchiveSpec(memory=1 << 20))
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", check=True).stdout.strip()
    out = tmp_path / "restored.tar"
    lpm("store", "get", uri, "--store", str(store), "-o", str(out), check=True)
    assert out.read_bytes() == archive.read_bytes()


def _fails_cleanly(result, out, *words):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.stderr
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_get_refuses_unsafe_unknown_incomplete_and_corrupt(kube_dir, store, tmp_path):
    archive = make_archive(kube_dir)
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", check=True).stdout.strip()
    out = tmp_path / "out.tar"
    _, _, uid, cid, container, _ = uri.split("/")
    _fails_cleanly(lpm("store", "get", f"shared://{uid}/../{container}/dump.tar.zst", "--store", str(store), "-o",
                       str(out)), out, "unsafe", "checkpoint ID")
    # file:// names the node's local store only; anything else on the node is refused.
    _fails_cleanly(lpm("store", "get", "file:///etc/passwd", "--store", str(store), "--local-store",
                       str(store.parent / "local"), "-o", str(out)), out, "is not in the local store")
    _fails_cleanly(lpm("store", "get", uri.replace(cid, "20200101T000000Z-00000000"), "--store", str(store),
                       "-o", str(out)), out, "does not exist")
    dump = store / uid / cid / container / "dump.tar.zst"
    data = bytearray(dump.read_bytes())
    data[-20] ^= 0xFF
    dump.write_bytes(bytes(data))
    _fails_cleanly(lpm("store", "get", uri, "--store", str(store), "-o", str(out)), out, uri)
    (store / uid / cid / ".checkpoint-complete").unlink()
    _fails_cleanly(lpm("store", "get", uri, "--store", str(store), "-o", str(out)), out, "incomplete")
    assert lpm("store", "ls", "--store", str(store), "--json", check=True).stdout == ""


def test_ingest_of_a_bad_archive_names_it_and_the_reason(kube_dir, store):
    bad = kube_dir / "checkpoint-p_ns-c-2026-11-25T10:11:12Z.tar"
    bad.write_bytes(b"this is not a tar archive" * 100)
    result = lpm("ingest", str(bad), "--store", str(store), "--node", "node-a")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"lpm: archive {bad.name!r}: not a tar archive (bad header checksum)"]


def test_ls_on_a_missing_store_is_an_error_not_a_new_directory(tmp_path):
    result = lpm("store", "ls", "--store", str(tmp_path / "nope"))
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "nope").exists()


def test_a_registry_importer_without_a_usable_registry_stops_before_starting(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("")  # never read: the importer's settings are checked first
    base = ("agent", "--node", "node-a", "--checkpoint-via", "kubelet", "--kubelet-ca", str(ca),
            "--store", str(tmp_path), "--importer", "registry")
    for extra, reason in (((), "lpm: --importer registry needs --registry"),
                          (("--registry", "https://10.0.0.5:5000"), "lpm: registry 'https://10.0.0.5:5000': expected")):
        result = lpm(*base, *extra, timeout=30)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(reason), result.stderr


@pytest.mark.parametrize("extra, reason", [
    # The default: checkpoints from the node's runtime, which a registry importer gives no way to reach.
    (("--importer", "registry", "--registry", "10.0.0.5:5000"),
     "lpm: --checkpoint-via runtime needs this node's CRI socket"),
    (("--importer", "containerd", "--runtime-endpoint", "none"),
     "lpm: --checkpoint-via runtime needs this node's CRI socket"),
    # The kubelet's API is always called over verified TLS, so it needs the kubelets' CA.
    (("--checkpoint-via", "kubelet"), "lpm: --checkpoint-via kubelet needs the kubelets' CA"),
])
def test_cluster_mode_says_what_its_checkpoints_need_before_starting(tmp_path, extra, reason):
    result = lpm("agent", "--node", "node-a", "--store", str(tmp_path), *extra, timeout=30)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(reason), \
        result.stderr


@pytest.mark.parametrize("given, importer, address, endpoint", [
    (None, "containerd", "/run/containerd/containerd.sock", "unix:///run/containerd/containerd.sock"),
    (None, "containerd", "unix:///tmp/c.sock", "unix:///tmp/c.sock"),
    (None, "containers-storage", "/run/containerd/containerd.sock", "unix:///var/run/crio/crio.sock"),
    (None, "registry", "/run/containerd/containerd.sock", None),
    ("unix:///tmp/other.sock", "registry", "", "unix:///tmp/other.sock"),
    ("none", "containerd", "/run/containerd/containerd.sock", None),
])
def test_the_runtime_endpoint_follows_the_importer_unless_given(given, importer, address, endpoint):
    assert runtime_endpoint(given, importer, address) == endpoint


def _stat_of(path):
    info = os.lstat(path)
    return info.st_ino, info.st_mode, info.st_rdev, info.st_size


@pytest.mark.parametrize("kind", KINDS)
def test_get_refuses_a_target_that_is_not_a_regular_file_and_leaves_it_be(kube_dir, store, tmp_path, kind):
    archive = make_archive(kube_dir)
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", check=True).stdout.strip()
    outdir = tmp_path / "out"
    outdir.mkdir()
    with planted(outdir / "target", kind) as target:
        before = sorted((p.name, _stat_of(p)) for p in outdir.iterdir())
        result = lpm("store", "get", uri, "--store", str(store), "-o", str(target), timeout=20)
        after = sorted((p.name, _stat_of(p)) for p in outdir.iterdir())
    shown = {"symlink to a fifo": "is a symlink to a FIFO", "symlink to a device": "is a symlink to a character device"}
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [f"lpm: output {target}: {shown.get(kind, WORDS[kind])}, refused"], \
        result.stderr
    assert after == before  # never replaced, never written through, no temp file left beside it


def test_get_replaces_an_existing_regular_file(kube_dir, store, tmp_path):
    archive = make_archive(kube_dir)
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", check=True).stdout.strip()
    old = tmp_path / "old.tar"
    old.write_bytes(b"stale")
    lpm("store", "get", uri, "--store", str(store), "-o", str(old), check=True)
    assert old.read_bytes() == archive.read_bytes()


def test_get_refuses_a_target_inside_the_store_however_it_is_named(kube_dir, store, tmp_path):
    archive = make_archive(kube_dir)
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", check=True).stdout.strip()
    _, _, uid, cid, container, _ = uri.split("/")
    (tmp_path / "door").symlink_to(store / uid)  # an alias of a directory inside the store
    before = sorted(str(p) for p in store.rglob("*"))
    for target in (store / "archive.tar", store / uid / cid / container / "dump.tar.zst",
                   tmp_path / "door" / "archive.tar"):
        result = lpm("store", "get", uri, "--store", str(store), "-o", str(target), timeout=20)
        assert result.returncode == 1, result
        assert result.stderr.splitlines() == [f"lpm: output {target}: is inside the store, refused"], \
            result.stderr
    assert sorted(str(p) for p in store.rglob("*")) == before


def _ingested(kube_dir, store, name):
    archive = make_archive(kube_dir, ArchiveSpec(pod=Pod(uid=f"{name}-0000", name=name)))
    uri = lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", check=True).stdout.strip()
    _, _, uid, cid, container, _ = uri.split("/")
    return f"{uid}/{cid}", store / uid / cid / container


def _reforge(container, dump):
    """Replace a dump and make its manifest's SHA-256 and size match it: only deeper checks can tell."""
    (container / "dump.tar.zst").write_bytes(dump)
    body = json.loads((container / "manifest.json").read_text())
    (container / "manifest.json").write_text(json.dumps(
        {**body, "checksumSHA256": hashlib.sha256(dump).hexdigest(), "compressedSize": len(dump)}))


def test_store_verify_passes_a_sound_store(kube_dir, store):
    names = sorted(_ingested(kube_dir, store, name)[0] for name in ("one", "two"))
    result = lpm("store", "verify", "--store", str(store))
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.splitlines() == [f"ok  {name}" for name in names]


def test_store_verify_names_each_bad_checkpoint_and_why(kube_dir, store):
    good, _ = _ingested(kube_dir, store, "good")
    flipped, container = _ingested(kube_dir, store, "flipped")
    dump = bytearray((container / "dump.tar.zst").read_bytes())
    dump[len(dump) // 2] ^= 0x01
    (container / "dump.tar.zst").write_bytes(bytes(dump))
    cut, container = _ingested(kube_dir, store, "cut")
    # A frame that ends early, and one followed by more bytes, each with a manifest that matches it:
    # zstd itself yields what a cut frame holds without complaint (python-zstandard 0.25).
    _reforge(container, (container / "dump.tar.zst").read_bytes()[:-100])
    trailing, container = _ingested(kube_dir, store, "trailing")
    _reforge(container, (container / "dump.tar.zst").read_bytes() + b"\0" * 64)
    bomb, container = _ingested(kube_dir, store, "bomb")
    _reforge(container, zstandard.ZstdCompressor(write_checksum=True).compress(bytes(64 << 20)))
    resummed, container = _ingested(kube_dir, store, "resummed")
    body = json.loads((container / "manifest.json").read_text())
    (container / "manifest.json").write_text(json.dumps({**body, "checksumSHA256": "0" * 64}))
    unsummed, container = _ingested(kube_dir, store, "unsummed")
    body = json.loads((container / "manifest.json").read_text())
    (container / "manifest.json").write_text(json.dumps({**body, "uncompressedSHA256": "0" * 64}))
    garbled, container = _ingested(kube_dir, store, "garbled")
    (container / "manifest.json").write_bytes(b"[" * 10_000)
    in_progress, _ = _ingested(kube_dir, store, "writing")
    (store / in_progress / ".checkpoint-complete").unlink()

    result = lpm("store", "verify", "--store", str(store), "--json")
    assert result.returncode == 1, result
    assert result.stderr == f"lpm: 7 of 8 checkpoint(s) in {store} failed verification\n", result.stderr
    lines = {line["checkpoint"]: line for line in map(json.loads, result.stdout.splitlines())}
    # Every complete checkpoint, damaged ones included; not the one still being written.
    assert sorted(lines) == sorted([good, flipped, cut, trailing, bomb, resummed, unsummed, garbled]), lines
    assert lines[good] == {"checkpoint": good, "ok": True, "reasons": []}
    expected = {flipped: "stored dump is not valid zstd (zstd decompress error: Restored data doesn't match checksum)",
                cut: "stored dump is not one whole zstd frame: it ends at byte",
                trailing: "stored dump is not one whole zstd frame: it holds 64 bytes after its zstd frame",
                resummed: "stored dump has sha256",
                unsummed: "decompressed archive has sha256",
                bomb: "decompresses to more than the manifest's uncompressedSize",
                garbled: "manifest.json is not valid JSON (nested deeper than 64 levels)"}
    for name, words in expected.items():
        [reason] = lines[name]["reasons"]
        assert lines[name]["ok"] is False and words in reason, (name, lines[name])
    text = lpm("store", "verify", "--store", str(store))
    assert text.returncode == 1 and f"ok  {good}" in text.stdout.splitlines(), text
    assert sorted(line.split(":")[0] for line in text.stdout.splitlines() if line.startswith("bad ")) == sorted(
        f"bad {name}" for name in expected), text.stdout


def test_store_verify_usage_errors_exit_2(tmp_path):
    missing = lpm("store", "verify", "--store", str(tmp_path / "nowhere"))
    assert (missing.returncode, missing.stdout) == (2, ""), missing
    assert missing.stderr == f"lpm: store {tmp_path / 'nowhere'}: does not exist or is not a directory\n"
    assert lpm("store", "verify", "--store", str(tmp_path), "--bogus").returncode == 2
