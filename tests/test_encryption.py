"""Encryption at rest (docs/encryption.md) on real files: the sealed format, the key directory, the store,
``lpm store get/verify`` and the standalone agent."""

import hashlib
import json
import os
import random
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, make_archive
from tests.support import lpm
from watcher.crypt import keyring, seal
from watcher.errors import ChecksumMismatch, KeyringError, KeyUnavailable, WrongKey
from watcher.ingest import service
from watcher.store import fsio, layout, retrieve
from watcher.store.manifest import Manifest
from watcher.zstream import CompressionSettings

SMALL = seal.MIN_CHUNK_SIZE
STEP = SMALL + seal.TAG_SIZE


# --- the format, pure -------------------------------------------------------------------------------------


def _seal(data: bytes, key: bytes, chunk_size: int = SMALL, pieces: int = 7) -> bytes:
    sealer = seal.Sealer(key, chunk_size)
    rng = random.Random(len(data))
    out, at = [], 0
    while at < len(data):
        size = rng.randint(1, max(1, len(data) // pieces))
        out.append(sealer.feed(data[at:at + size]))
        at += size
    out.append(sealer.finish())
    return b"".join(out)


def _open(sealed: bytes, key: bytes, piece: int = 1000) -> bytes:
    opener = seal.Opener(key)
    out = [opener.feed(sealed[at:at + piece]) for at in range(0, len(sealed), piece)]
    out.append(opener.finish())
    return b"".join(out)


def _chunks(sealed: bytes) -> tuple[bytes, list[bytes]]:
    body = sealed[seal.HEADER_SIZE:]
    return sealed[:seal.HEADER_SIZE], [body[at:at + STEP] for at in range(0, len(body), STEP)]


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL, 5 * SMALL + 17])
def test_round_trip_at_every_boundary(size):
    key, data = os.urandom(32), os.urandom(size)
    sealed = _seal(data, key)
    assert len(sealed) == seal.HEADER_SIZE + max(1, -(-size // SMALL)) * seal.TAG_SIZE + size
    assert _open(sealed, key) == data
    assert _open(sealed, key, piece=len(sealed) or 1) == data


def _refused(sealed: bytes, key: bytes) -> str:
    with pytest.raises(seal.SealError) as caught:
        _open(sealed, key)
    return str(caught.value)


def test_truncation_at_any_chunk_boundary_or_inside_a_chunk_is_detected():
    key, data = os.urandom(32), os.urandom(4 * SMALL + 100)
    sealed = _seal(data, key)
    header, chunks = _chunks(sealed)
    for keep in range(len(chunks)):  # the last chunk dropped, and every shorter prefix
        assert "does not authenticate" in _refused(header + b"".join(chunks[:keep]), key) or keep == 0
    assert _refused(header, key) == "ends inside chunk 0"
    assert _refused(sealed[:5], key) == "ends inside its header"
    assert "does not authenticate" in _refused(sealed[:-1], key)
    assert "does not authenticate" in _refused(sealed[:-seal.TAG_SIZE - 3], key)


def test_reordered_swapped_duplicated_and_foreign_chunks_are_detected():
    key, data = os.urandom(32), os.urandom(4 * SMALL + 100)
    header, chunks = _chunks(_seal(data, key))
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    assert "chunk 0" in _refused(header + b"".join(swapped), key)
    duplicated = [chunks[0], chunks[0], *chunks[2:]]
    assert "chunk 1" in _refused(header + b"".join(duplicated), key)
    # The last chunk moved up: sealed as last, it does not open as chunk 3 of 5.
    assert "chunk 3" in _refused(header + b"".join([*chunks[:3], chunks[4], chunks[3]]), key)
    # A chunk from another dump sealed at the same index, with another data key.
    _, others = _chunks(_seal(os.urandom(4 * SMALL + 100), os.urandom(32)))
    assert "chunk 2" in _refused(header + b"".join([*chunks[:2], others[2], *chunks[3:]]), key)


def test_a_flipped_byte_anywhere_and_appended_bytes_are_detected():
    key, data = os.urandom(32), os.urandom(2 * SMALL + 10)
    sealed = _seal(data, key)
    for at in [0, 7, 8, 11, 12, seal.HEADER_SIZE + SMALL, len(sealed) - 1]:
        damaged = bytearray(sealed)
        damaged[at] ^= 0x01
        _refused(bytes(damaged), key)
    assert "does not authenticate" in _refused(sealed + b"\0", key)
    assert "does not authenticate" in _refused(sealed + sealed[-STEP:], key)
    assert "does not authenticate" in _refused(sealed, os.urandom(32))


def test_header_declaring_another_chunk_size_or_version_is_refused():
    key = os.urandom(32)
    sealed = _seal(os.urandom(3 * SMALL), key)
    assert "outside" in _refused(seal.header(seal.MAX_CHUNK_SIZE * 2) + sealed[seal.HEADER_SIZE:], key)
    assert "does not authenticate" in _refused(seal.header(2 * SMALL) + sealed[seal.HEADER_SIZE:], key)
    assert "version 9" in _refused(seal.MAGIC + b"\x09" + sealed[8:], key)
    assert "header" in _refused(b"\x28\xb5\x2f\xfd" + sealed[4:], key)


def test_a_wrapped_key_opens_only_with_its_key_and_for_its_artifact():
    kek, data_key = os.urandom(32), os.urandom(32)
    wrapped = seal.wrap(kek, data_key, "k1", "shared://a/b/c/dump.tar.zst")
    assert len(wrapped.wrapped_key) == seal.WRAPPED_SIZE
    assert seal.unwrap(kek, wrapped, "shared://a/b/c/dump.tar.zst") == data_key
    with pytest.raises(seal.SealError):
        seal.unwrap(os.urandom(32), wrapped, "shared://a/b/c/dump.tar.zst")
    with pytest.raises(seal.SealError):
        seal.unwrap(kek, wrapped, "shared://a/b/other/dump.tar.zst")


# --- the key directory ------------------------------------------------------------------------------------


def _key_dir(path: Path, **keys: bytes) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data in keys.items():
        (path / name).write_bytes(data)
    return path


def test_keys_load_by_file_name_and_the_last_id_is_current(tmp_path):
    k1, k2 = os.urandom(32), os.urandom(32)
    ring = keyring.load(_key_dir(tmp_path / "keys", k1=k1, k2=k2))
    assert ring.ids == ("k1", "k2") and ring.current == "k2"
    assert keyring.load(tmp_path / "keys", "k1").current == "k1"
    assert k1.hex() not in repr(ring) and repr(k1) not in repr(ring) and repr(k2) not in repr(ring)
    assert "k1" in repr(ring) and repr(k1) not in repr(ring.new_dump_key())
    with pytest.raises(KeyringError, match="'k9' is not among its keys"):
        keyring.load(tmp_path / "keys", "k9")


def test_a_kubelet_secret_volume_layout_loads(tmp_path):
    keys = tmp_path / "keys"
    data = _key_dir(keys / "..2026_12_02_03_00_00.123", old=os.urandom(32), new=os.urandom(32))
    os.symlink(data.name, keys / "..data")
    for name in ("old", "new"):
        os.symlink(f"..data/{name}", keys / name)
    ring = keyring.load(keys)
    assert ring.ids == ("new", "old") and ring.current == "old"


SECRET = b"not-a-key-but-secret-material-!!x"


@pytest.mark.parametrize("make, words", [
    (lambda d: (d / "short").write_bytes(b"\1" * 31), "key file 'short': holds 31 bytes"),
    (lambda d: (d / "long").write_bytes(SECRET), "key file 'long': holds more than 32 bytes"),
    (lambda d: (d / "empty").write_bytes(b""), "key file 'empty': holds 0 bytes"),
    (lambda d: (d / "sub").mkdir(), "key file 'sub': is not a regular file"),
    (lambda d: os.mkfifo(d / "fifo"), "key file 'fifo': is not a regular file"),
    (lambda d: socket.socket(socket.AF_UNIX).bind(str(d / "sock")), "key file 'sock': is not a regular file"),
    (lambda d: os.symlink("/etc/hostname", d / "out"), "key file 'out': is a symlink leading out"),
    (lambda d: os.symlink("nowhere", d / "dangling"), "key file 'dangling': is a dangling"),
    (lambda d: os.symlink("loop", d / "loop"), "key file 'loop': is a dangling or looping"),
    (lambda d: (d / "-rf").write_bytes(os.urandom(32)), "entry '-rf': not a key ID"),
    (lambda d: (d / "a b").write_bytes(os.urandom(32)), "entry 'a b': not a key ID"),
    (lambda d: (d / "line\nbreak").write_bytes(os.urandom(32)), "entry 'line\\nbreak': not a key ID"),
    (lambda d: (d / ".hidden").write_bytes(os.urandom(32)), "entry '.hidden': not a key ID"),
    (lambda d: (d / ("x" * 200)).write_bytes(os.urandom(32)), "not a key ID"),
])
def test_a_bad_entry_refuses_the_directory_naming_it_and_why_never_its_bytes(tmp_path, make, words):
    keys = _key_dir(tmp_path / "keys", good=os.urandom(32))
    make(keys)
    with pytest.raises(KeyringError) as caught:
        keyring.load(keys)
    message = str(caught.value)
    assert words in message and str(keys) in message
    assert SECRET.decode() not in message and "x" * 100 not in message


def test_an_empty_or_missing_key_directory_is_refused(tmp_path):
    with pytest.raises(KeyringError, match="holds no key files"):
        keyring.load(_key_dir(tmp_path / "keys"))
    with pytest.raises(KeyringError, match="cannot read the directory"):
        keyring.load(tmp_path / "missing")


# --- the store, on real files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """Two archives whose dumps take several sealed chunks (about 3 MiB compressed each)."""
    directory = tmp_path_factory.mktemp("kube")
    return [make_archive(directory, ArchiveSpec(pod=Pod(container=name), memory=12 << 20)) for name in ("a", "b")]


def _ingest(store: Path, archive: Path, ring: keyring.Keyring | None) -> Manifest:
    root = fsio.open_root(store, create=True)
    try:
        return service.ingest_archive(root, archive, "node-a", CompressionSettings(encryption=ring),
                                      threading.Event(), datetime.now(UTC)).manifest
    finally:
        os.close(root)


def _get(store: Path, ref: layout.ArtifactRef, out: Path, ring: keyring.Keyring | None) -> None:
    root = fsio.open_root(store, create=False)
    try:
        retrieve.get(root, ref, out, CompressionSettings(encryption=ring), threading.Event())
    finally:
        os.close(root)


def _verify(store: Path, ref: layout.ArtifactRef, ring: keyring.Keyring | None) -> None:
    root = fsio.open_root(store, create=False)
    try:
        retrieve.verify(root, ref, CompressionSettings(encryption=ring), threading.Event())
    finally:
        os.close(root)


def _dump(store: Path, ref: layout.ArtifactRef) -> Path:
    return store.joinpath(*ref.segments, layout.DUMP_FILE)


def _rewrite(store: Path, ref: layout.ArtifactRef, data: bytes) -> None:
    """Replace a dump and record its new sum and size in its manifest: only the seal can tell now."""
    _dump(store, ref).write_bytes(data)
    path = store.joinpath(*ref.segments, layout.MANIFEST_FILE)
    manifest = json.loads(path.read_text())
    manifest.update(checksumSHA256=hashlib.sha256(data).hexdigest(), compressedSize=len(data))
    path.write_text(json.dumps(manifest))


def _ring(**keys: bytes) -> keyring.Keyring:
    return keyring.Keyring(keys)


def test_a_sealed_dump_round_trips_and_its_sums_keep_their_meaning(store, archives, tmp_path):
    ring = _ring(k1=os.urandom(32))
    manifest = _ingest(store, archives[0], ring)
    stored = _dump(store, manifest.ref).read_bytes()
    assert manifest.encryption is not None and manifest.encryption.key_id == "k1"
    assert stored.startswith(seal.MAGIC) and len(stored) > 2 * seal.CHUNK_SIZE
    assert manifest.checksum_sha256 == hashlib.sha256(stored).hexdigest()
    assert manifest.compressed_size == len(stored)
    assert manifest.uncompressed_sha256 == hashlib.sha256(archives[0].read_bytes()).hexdigest()
    on_disk = json.loads(store.joinpath(*manifest.ref.segments, layout.MANIFEST_FILE).read_text())
    assert on_disk["formatVersion"] == 2 and on_disk["encryption"]["keyID"] == "k1"
    _get(store, manifest.ref, tmp_path / "out.tar", ring)
    assert (tmp_path / "out.tar").read_bytes() == archives[0].read_bytes()
    _verify(store, manifest.ref, ring)


def test_plain_dumps_stay_plain_and_readable_with_keys_configured(store, archives, tmp_path):
    manifest = _ingest(store, archives[0], None)
    assert manifest.encryption is None
    assert json.loads(store.joinpath(*manifest.ref.segments, layout.MANIFEST_FILE).read_text())["formatVersion"] == 1
    _get(store, manifest.ref, tmp_path / "out.tar", _ring(k1=os.urandom(32)))
    assert (tmp_path / "out.tar").read_bytes() == archives[0].read_bytes()


def _nothing_written(out: Path) -> bool:
    return not out.exists() and os.listdir(out.parent) == []


@pytest.mark.parametrize("ring, error, words", [
    (None, KeyUnavailable, "encrypted with key 'k1', and no encryption keys are configured"),
    ({"k2": os.urandom(32)}, KeyUnavailable, "encrypted with key 'k1', which is not among the encryption keys (k2)"),
    ({"k1": os.urandom(32)}, WrongKey, "key 'k1' does not open its data key"),
])
def test_a_missing_or_wrong_key_is_an_error_naming_it_and_nothing_is_written(store, archives, tmp_path, ring,
                                                                              error, words):
    manifest = _ingest(store, archives[0], _ring(k1=os.urandom(32)))
    out = tmp_path / "empty" / "out.tar"
    out.parent.mkdir()
    with pytest.raises(error, match="k1") as caught:
        _get(store, manifest.ref, out, keyring.Keyring(ring) if ring else None)
    assert words in str(caught.value) and caught.value.key_id == "k1"
    assert _nothing_written(out)


def test_rotation_new_key_for_new_dumps_and_removing_a_key_loses_exactly_its_dumps(store, archives, tmp_path):
    k1, k2 = os.urandom(32), os.urandom(32)
    old = _ingest(store, archives[0], _ring(k1=k1))
    new = _ingest(store, archives[1], keyring.Keyring({"k1": k1, "k2": k2}))
    assert (old.encryption.key_id, new.encryption.key_id) == ("k1", "k2")
    both = keyring.Keyring({"k1": k1, "k2": k2})
    for manifest, archive in ((old, archives[0]), (new, archives[1])):
        _get(store, manifest.ref, tmp_path / "out.tar", both)
        assert (tmp_path / "out.tar").read_bytes() == archive.read_bytes()
    only_new = _ring(k2=k2)
    _verify(store, new.ref, only_new)
    with pytest.raises(KeyUnavailable, match="'k1'"):
        _verify(store, old.ref, only_new)
    root = fsio.open_root(store, create=False)
    try:  # what can be checked without the key: the stored bytes
        retrieve.verify_stored(root, old.ref, threading.Event())
    finally:
        os.close(root)


def test_a_wrapped_key_copied_into_another_dumps_manifest_does_not_open(store, archives, tmp_path):
    ring = _ring(k1=os.urandom(32))
    first, second = _ingest(store, archives[0], ring), _ingest(store, archives[1], ring)
    path = store.joinpath(*second.ref.segments, layout.MANIFEST_FILE)
    body = json.loads(path.read_text())
    body["encryption"] = json.loads(store.joinpath(*first.ref.segments, layout.MANIFEST_FILE).read_text())["encryption"]
    path.write_text(json.dumps(body))
    with pytest.raises(WrongKey, match="'k1'"):
        _get(store, second.ref, tmp_path / "out.tar", ring)


def _tampered(stored: bytes, how: str) -> bytes:
    header, body = stored[:seal.HEADER_SIZE], stored[seal.HEADER_SIZE:]
    step = seal.CHUNK_SIZE + seal.TAG_SIZE
    chunks = [body[at:at + step] for at in range(0, len(body), step)]
    assert len(chunks) >= 3
    if how == "last chunk dropped":
        return header + b"".join(chunks[:-1])
    if how == "truncated inside a chunk":
        return stored[:len(stored) - 1000]
    if how == "chunks swapped":
        return header + b"".join([chunks[1], chunks[0], *chunks[2:]])
    if how == "chunk repeated":
        return header + b"".join([chunks[0], chunks[0], *chunks[1:]])
    flipped = bytearray(stored)
    flipped[len(stored) // 2] ^= 0x10
    return bytes(flipped)


@pytest.mark.parametrize("how", ["last chunk dropped", "truncated inside a chunk", "chunks swapped",
                                 "chunk repeated", "a flipped byte"])
def test_a_tampered_sealed_dump_with_a_matching_manifest_is_refused_and_nothing_is_written(store, archives,
                                                                                         tmp_path, how):
    ring = _ring(k1=os.urandom(32))
    manifest = _ingest(store, archives[0], ring)
    _rewrite(store, manifest.ref, _tampered(_dump(store, manifest.ref).read_bytes(), how))
    out = tmp_path / "empty" / "out.tar"
    out.parent.mkdir()
    with pytest.raises(ChecksumMismatch, match="sealed dump .*does not authenticate"):
        _get(store, manifest.ref, out, ring)
    assert _nothing_written(out)
    with pytest.raises(ChecksumMismatch, match="sealed dump"):
        _verify(store, manifest.ref, ring)


def test_a_flipped_byte_is_caught_by_the_stored_sum_with_or_without_the_key(store, archives):
    ring = _ring(k1=os.urandom(32))
    manifest = _ingest(store, archives[0], ring)
    _dump(store, manifest.ref).write_bytes(_tampered(_dump(store, manifest.ref).read_bytes(), "flip"))
    root = fsio.open_root(store, create=False)
    try:
        with pytest.raises(ChecksumMismatch, match="stored dump has sha256"):
            retrieve.verify_stored(root, manifest.ref, threading.Event())
    finally:
        os.close(root)
    with pytest.raises(ChecksumMismatch):
        _verify(store, manifest.ref, ring)


def _uri_dump(store: Path, uri: str) -> Path:
    return store.joinpath(*uri.removeprefix("shared://").split("/"))


def test_cli_get_and_verify_with_rotation_and_a_removed_key(store, archives, tmp_path):
    keys = _key_dir(tmp_path / "keys", k1=os.urandom(32))
    old = lpm("ingest", str(archives[0]), "--store", str(store), "--node", "node-a",
              "--encryption-keys", str(keys), check=True).stdout.strip()
    _key_dir(keys, k2=os.urandom(32))
    new = lpm("ingest", str(archives[1]), "--store", str(store), "--node", "node-a",
              "--encryption-keys", str(keys), check=True).stdout.strip()
    assert json.loads(_uri_dump(store, new).with_name("manifest.json").read_text())["encryption"]["keyID"] == "k2"
    assert lpm("store", "verify", "--store", str(store), "--encryption-keys", str(keys)).returncode == 0
    for uri, archive in ((old, archives[0]), (new, archives[1])):
        lpm("store", "get", uri, "--store", str(store), "-o", str(tmp_path / "out.tar"),
            "--encryption-keys", str(keys), check=True)
        assert (tmp_path / "out.tar").read_bytes() == archive.read_bytes()

    (keys / "k1").unlink()
    (tmp_path / "out.tar").unlink()
    got = lpm("store", "get", old, "--store", str(store), "-o", str(tmp_path / "out.tar"),
              "--encryption-keys", str(keys))
    assert got.returncode == 1 and "encrypted with key 'k1'" in got.stderr
    assert not (tmp_path / "out.tar").exists()
    verified = lpm("store", "verify", "--store", str(store), "--encryption-keys", str(keys), "--json")
    lines = {line["checkpoint"]: line for line in map(json.loads, verified.stdout.splitlines())}
    assert verified.returncode == 1 and len(lines) == 2
    [bad] = [line for line in lines.values() if not line["ok"]]
    assert bad["checkpoint"] in old and "key 'k1'" in bad["reasons"][0]
    assert "stored bytes match their sha256" in bad["reasons"][0]
    # With the stored bytes damaged too, the report says so, still without the key.
    dump = _uri_dump(store, old)
    damaged = bytearray(dump.read_bytes())
    damaged[100] ^= 0xFF
    dump.write_bytes(bytes(damaged))
    verified = lpm("store", "verify", "--store", str(store), "--encryption-keys", str(keys), "--json")
    [bad] = [line for line in map(json.loads, verified.stdout.splitlines()) if not line["ok"]]
    assert "key 'k1'" in bad["reasons"][0] and "stored dump has sha256" in bad["reasons"][0]


def test_cli_refuses_bad_encryption_settings_clearly(store, archives, tmp_path):
    keys = _key_dir(tmp_path / "keys", k1=os.urandom(32), bad=b"\0" * 16)
    result = lpm("ingest", str(archives[0]), "--store", str(store), "--node", "node-a", "--encryption-keys", str(keys))
    assert result.returncode == 1 and "key file 'bad': holds 16 bytes" in result.stderr
    (keys / "bad").unlink()
    result = lpm("ingest", str(archives[0]), "--store", str(store), "--node", "node-a", "--encryption-keys", str(keys),
                 "--encryption-key-id", "k7")
    assert result.returncode == 1 and "'k7' is not among its keys (k1)" in result.stderr
    result = lpm("ingest", str(archives[0]), "--store", str(store), "--node", "node-a", "--encryption-key-id", "k1")
    assert result.returncode == 1 and "--encryption-key-id needs --encryption-keys" in result.stderr
    assert not list(store.glob("*/*/*/dump.tar.zst"))


def test_the_agent_seals_what_it_ingests(kube_dir, store, tmp_path):
    keys = _key_dir(tmp_path / "keys", k1=os.urandom(32), k2=os.urandom(32))
    archive = make_archive(kube_dir, ArchiveSpec(memory=2 << 20))
    with AgentProcess("--node", "node-a", "--checkpoint-dir", str(kube_dir), "--store", str(store),
                      "--debounce", "0.5", "--encryption-keys", str(keys), "--encryption-key-id", "k1",
                      "--delete-ingested") as proc:
        proc.wait_logged("kubelet archive removed after verified ingest")
        assert proc.stop()[0] == 0
    assert not archive.exists()  # deleted only after its sealed copy was read back and verified with the key
    [entry] = [json.loads(line) for line in lpm("store", "ls", "--store", str(store), "--json",
                                                check=True).stdout.splitlines()]
    uri = entry["artifactURIs"][entry["containers"][0]]
    manifest = json.loads(_uri_dump(store, uri).with_name("manifest.json").read_text())
    assert manifest["encryption"]["keyID"] == "k1"
    assert _uri_dump(store, uri).read_bytes().startswith(seal.MAGIC)
    lpm("store", "get", uri, "--store", str(store), "-o", str(tmp_path / "out.tar"), "--encryption-keys", str(keys),
        check=True)
    assert hashlib.sha256((tmp_path / "out.tar").read_bytes()).hexdigest() == manifest["uncompressedSHA256"]
    assert all(keys.joinpath(name).read_bytes().hex() not in "\n".join(map(json.dumps, proc.lines))
               for name in ("k1", "k2"))


def test_the_collector_lets_a_sealed_copy_vouch_for_its_archive_only_with_the_key(store, archives):
    from lpm_gc.kubelet import stored_copy_doubt
    from watcher.archive.stamp import stamp_of
    from watcher.store.ledger import Ledger

    ring = _ring(k1=os.urandom(32))
    _ingest(store, archives[0], ring)
    root = fsio.open_root(store, create=False)
    try:
        record = Ledger(root, "node-a").lookup(archives[0].name)
        stamp = stamp_of(archives[0])
        assert stored_copy_doubt(root, record, stamp, ring) is None
        doubt = stored_copy_doubt(root, record, stamp)
        assert doubt is not None and "encrypted with key 'k1'" in doubt
    finally:
        os.close(root)


def test_the_mover_copies_a_sealed_checkpoint_without_any_key_and_it_opens_from_the_shared_store(
        tmp_path, archives):
    from watcher.store import transfer

    ring = _ring(k1=os.urandom(32))
    local, shared = tmp_path / "local", tmp_path / "shared"
    manifest = _ingest(local, archives[0], ring)
    local_fd, shared_fd = fsio.open_root(local, create=False), fsio.open_root(shared, create=True)
    try:
        [checkpoint] = transfer.local_checkpoints(local_fd)
        assert transfer.copy_to_shared(local_fd, shared_fd, "node-a", checkpoint, threading.Event())
        transfer.shared_copy_complete(shared_fd, checkpoint)
    finally:
        os.close(local_fd)
        os.close(shared_fd)
    assert _dump(shared, manifest.ref).read_bytes() == _dump(local, manifest.ref).read_bytes()
    _get(shared, manifest.ref, tmp_path / "out.tar", ring)
    assert (tmp_path / "out.tar").read_bytes() == archives[0].read_bytes()
