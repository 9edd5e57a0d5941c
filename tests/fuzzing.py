"""Property-based fuzz targets for every parser of untrusted input, shared by CI and bench/fuzz.py.

Each target takes one generated input and checks the contract of issue #13: the input ends in
success or in ONE ``LpmError`` — never another exception — and success never means a path
outside the store, nor a partial commit (a checkpoint visible without all of its parts, or a
refused one leaving anything behind). Real files throughout: archives are written to disk and
ingested into a real store, images written to a real directory.

``TARGETS`` maps a name to (strategy, check). ``tests/test_fuzz.py`` runs a few hundred cases of
each in CI; ``bench/fuzz.py`` runs 10,000 or more and prints the counts.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import random
import shutil
import tarfile
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

from hypothesis import strategies as st

from lab.archives import ArchiveSpec, Pod, archive_bytes, archive_name, containerd_spec, crio_spec
from tests.restore.support import BASE, write_tar
from tests.tarcraft import END, GNU, header, long_name, member, pax
from watcher.archive import names
from watcher.archive.identity import Identity, identify
from watcher.archive.stamp import ArchiveStamp
from watcher.archive.tarscan import TarScanner
from watcher.errors import LpmError
from watcher.ingest import service
from watcher.restore.image import Platform, write_image
from watcher.store import catalog, fsio, layout, retrieve
from watcher.store.ledger import Ledger, LedgerRecord, _file_name
from watcher.store.manifest import Manifest, Marker, Runtime
from watcher.zstream import CompressionSettings

POD = Pod(uid="6f1c2a4e-1b7d-4c1e-9a51-3e2d9c0b7a10")
UID, CID, CONTAINER = POD.uid, "20261125T101112Z-0a1b2c3d", POD.container
LOCAL = "/var/lib/lpm/local-store"

outcomes: Counter[str] = Counter()
"""``<target> ok`` / ``<target> refused`` per case run: bench/fuzz.py reports them."""


def _ended(target: str, call: Callable[[], Any]) -> Any:
    """Run one case: success, or exactly one LpmError (counted); anything else propagates as a failure."""
    try:
        result = call()
    except LpmError:
        outcomes[f"{target} refused"] += 1
        return None
    outcomes[f"{target} ok"] += 1
    return result


def _inside(root: str, *segments: str) -> bool:
    """The path the segments name under ``root`` is inside it, and is the same path once normalised."""
    joined = posixpath.join(root, *segments)
    return posixpath.normpath(joined) == joined and joined.startswith(root.rstrip("/") + "/")


# --- inputs --------------------------------------------------------------------------------------------

HOSTILE_TEXT = ["", ".", "..", "../etc", "/etc/shadow", "a/b", "a\x00b", "a\nb", "%2e%2e", "x" * 300, "é",
                "\udcff", "CART", "cart-0", "shop", "app", UID, CID, "dump.tar.zst", "node-a", " ", "-a"]
HOSTILE_JSON = [b"[" * 100_000, b'{"a":' * 50_000, b"1" * 50_000, b'"' + b"x" * 2_000_000 + b'"', b"1e99999",
                b"NaN", b"{}", b"[]", b"null", b'{"a": 1, "a": 2}', b"\xff\xfe{}", b'"\\ud800"', b"-0", b""]
names_text = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=24))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(), names_text)
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=3)
                          | st.dictionaries(names_text, kids, max_size=3), max_leaves=8)


def _mostly(valid: str, other: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``valid`` four times in five, else ``other`` (one_of would make it one in two)."""
    return st.integers(0, 4).flatmap(lambda pick: other if pick == 0 else st.just(valid))


def _mutated(doc: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid document with some fields replaced, removed or added, as JSON; or hostile raw bytes."""
    keys = sorted(doc)

    def apply(changes: list[tuple[str, int, Any]]) -> bytes:
        out = dict(doc)
        for key, op, value in changes:
            if op == 0:
                out.pop(key, None)
            else:
                out[key] = value
        return json.dumps(out, allow_nan=True).encode()

    change = st.tuples(st.one_of(st.sampled_from(keys), names_text), st.integers(0, 2), json_value)
    return st.one_of(st.lists(change, max_size=3).map(apply), st.sampled_from(HOSTILE_JSON), st.binary(max_size=300),
                     json_value.map(lambda v: json.dumps(v, allow_nan=True).encode()))


def _bytes_mutated(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` with bytes flipped, inserted, deleted, or cut off; half the time at a header's fields."""
    def apply(edits: list[tuple[float, int, int]], cut: float | None) -> bytes:
        data = bytearray(base)
        for where, op, value in edits:
            pos = int(where * max(1, len(data) - 1))
            if op == 0 and data:
                data[pos] = value
            elif op == 1:
                data[pos:pos] = bytes([value]) * (value % 7 + 1)
            elif data:
                del data[pos : pos + value % 600 + 1]
        if cut is not None:
            data = data[: int(cut * len(data))]
        return bytes(data)

    header_spot = st.integers(0, max(0, len(base) // 512 - 1)).flatmap(
        lambda block: st.integers(0, 511).map(lambda offset: (block * 512 + offset) / max(1, len(base) - 1)))
    where = st.one_of(st.floats(0, 1), header_spot)
    return st.builds(apply, st.lists(st.tuples(where, st.integers(0, 2), st.integers(0, 255)), max_size=4),
                     st.one_of(st.none(), st.floats(0, 1)))


def _crafted(rng: random.Random) -> bytes:
    """Runs of extended headers and members whose name sources and sizes collide (see tests/tarcraft.py)."""
    pool = ["spec.dump", "config.dump", "checkpoint/pages-1.img", "checkpoint/", "a/b", "", "x" * 120, "../up",
            "/abs"]
    out = b""
    for _ in range(rng.randint(1, 4)):
        for _ in range(rng.choice([0, 0, 1, 2])):
            if rng.random() < 0.1:  # a pax body that is not quite one: a sign, a short length, no newline
                body = rng.choice([b"+19 path=spec.dump\n", b"5 path=spec.dump\n", b"18 path=spec.dump", b"x\n"])
                out += header(b"PaxHeaders/x", b"x", len(body)) + body + bytes(-len(body) % 512)
            elif rng.random() < 0.5:
                records = [(k, v) for k, v in [("path", rng.choice(pool)), ("size", rng.choice(["0", "3", "", "x"])),
                                               ("linkpath", rng.choice(pool)), ("GNU.sparse.major", "1"),
                                               ("GNU.sparse.minor", "0"), ("GNU.sparse.name", rng.choice(pool)),
                                               ("GNU.sparse.size", rng.choice(["0", "x"]))] if rng.random() < 0.3]
                out += pax(records, kind=rng.choice([b"x", b"x", b"g"]))
            else:
                out += long_name(rng.choice(pool).encode(), kind=rng.choice([b"L", b"K"]))
        size = rng.choice([0, 3, 600])
        out += member((rng.choice(pool) or "n").encode(), bytes(size),
                      kind=rng.choice([b"0", b"\x00", b"5", b"2", b"7"]),
                      prefix=rng.choice([b"", b"checkpoint", b"q" * 140]), magic=rng.choice([b"ustar\x0000", GNU, b""]),
                      size=rng.choice([size, size, 0, 512]))
    return out + END


def _tar_bytes(members: list[tuple[str, bytes]], fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


KUBELET_ARCHIVE = archive_bytes(ArchiveSpec(pod=POD, memory=6000))
GNU_ARCHIVE = _tar_bytes([("checkpoint/" + "d" * 150 + "/pages-1.img", b"p" * 700),
                          ("spec.dump", json.dumps(crio_spec(POD)).encode())], tarfile.GNU_FORMAT)
PAX_ARCHIVE = _tar_bytes([("checkpoint/" + "é" * 80 + "/core.img", b"c" * 100),
                          ("spec.dump", json.dumps(crio_spec(POD)).encode())], tarfile.PAX_FORMAT)
with tempfile.TemporaryDirectory() as _tmp:
    CHECKPOINT_ARCHIVE = write_tar(Path(_tmp) / "base.tar", BASE).read_bytes()
with tarfile.open(fileobj=io.BytesIO(CHECKPOINT_ARCHIVE), mode="r:") as _tar:
    _tar.getmembers()
    CHECKPOINT_BODY = CHECKPOINT_ARCHIVE[: _tar.offset]
    """Its members without the end-of-archive blocks (nor tarfile's padding to 10 KiB): more can follow."""

tar_input = st.one_of(
    st.sampled_from([KUBELET_ARCHIVE, GNU_ARCHIVE, PAX_ARCHIVE]).flatmap(_bytes_mutated),
    st.randoms(use_true_random=False).map(_crafted),
    st.binary(max_size=2048),
    st.binary(max_size=1024).map(lambda b: header(b"spec.dump", b"0", len(b)) + b + bytes(-len(b) % 512) + END),
)
chunking = st.lists(st.integers(1, 1500), min_size=1, max_size=8)


# --- targets -------------------------------------------------------------------------------------------

def check_tarscan(case: tuple[bytes, list[int]]) -> None:
    data, sizes = case

    def scan(chunks: list[int] | None) -> Any:
        scanner = TarScanner(frozenset({"spec.dump", "config.dump"}), "fuzz.tar", keep_members=True)
        pos, turn = 0, 0
        while pos < len(data):
            step = len(data) if chunks is None else chunks[turn % len(chunks)]
            scanner.feed(data[pos : pos + step])
            pos, turn = pos + step, turn + 1
        return scanner.finish()

    whole = _ended("tarscan", lambda: scan(None))
    try:
        pieces = scan(sizes)
    except LpmError as err:
        pieces = err
    # The outcome never depends on how the bytes arrive.
    assert (whole is None) == isinstance(pieces, LpmError), (whole, pieces)
    if whole is not None:
        assert whole.captured == pieces.captured and whole.members == pieces.members
        for m in whole.members:
            assert m.name == "" or _inside("/store", *m.name.split("/")), m.name
            assert 0 <= m.offset and m.offset + m.size <= len(data)


spec_input = st.one_of(
    st.fixed_dictionaries({"annotations": st.dictionaries(
        st.sampled_from(["io.kubernetes.cri-o.Labels", "io.kubernetes.cri.sandbox-uid",
                         "io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-name",
                         "io.kubernetes.cri.container-name", "io.container.manager"]) | names_text,
        json_value | names_text, max_size=6)}).map(lambda d: json.dumps(d, allow_nan=True).encode()),
    _mutated(crio_spec(POD)), _mutated(containerd_spec(POD)), st.none())
identity_input = st.tuples(
    spec_input,
    _mostly(archive_name(POD), st.one_of(st.builds(lambda p, n, c: f"checkpoint-{p}_{n}-{c}-2026-11-25T10:11:12Z.tar",
                                                   names_text, names_text, names_text), names_text)),
    st.one_of(st.none(), st.builds(Identity, names_text, names_text, names_text, names_text),
              st.just(Identity(POD.uid, POD.namespace, POD.name, POD.container))),
    st.sets(st.sampled_from(["checkpoint", "status", "spec.dump"])),
)


def check_identity(case: tuple[bytes | None, str, Identity | None, set[str]]) -> None:
    spec, file_name, hint, top = case
    found = _ended("identity", lambda: identify(spec, names.parse(file_name), top, hint))
    if found is not None:
        who = found.identity
        assert _inside("/store", who.pod_uid, CID, who.container), who
        assert Identity.checked(who.pod_uid, who.namespace, who.pod_name, who.container) == who


_MANIFEST = Manifest(UID, POD.namespace, POD.name, CONTAINER, CID, datetime(2026, 11, 25, 10, 11, 12, tzinfo=UTC),
                     "node-a", None, Runtime.CRIO, archive_name(POD), "a" * 64, 10, "b" * 64, 20).to_json()
_MARKER = Marker(CID, UID, (CONTAINER,), datetime(2026, 11, 25, 10, 11, 13, tzinfo=UTC), None).to_json()
_LEDGER = LedgerRecord(ArchiveStamp(archive_name(POD), 20, 1), UID, CID, CONTAINER, True).to_json()
store_input = st.tuples(_mutated(_MANIFEST), _mutated(_MARKER), _mutated(_LEDGER))


@dataclass
class _Scratch:
    """One directory per target, reused from case to case (bench/fuzz.py runs tens of thousands)."""
    path: Path | None = None

    def fresh(self, name: str) -> Path:
        if self.path is None:
            self.path = Path(tempfile.mkdtemp(prefix="lpm-fuzz-"))
        where = self.path / name
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(mode=0o700)
        return where


scratch = _Scratch()


def check_store_files(case: tuple[bytes, bytes, bytes]) -> None:
    manifest, marker, record = case
    root = scratch.fresh("store")
    container = root / UID / CID / CONTAINER
    container.mkdir(parents=True)
    (container / "manifest.json").write_bytes(manifest)
    (container / "dump.tar.zst").write_bytes(b"")
    (root / UID / CID / ".checkpoint-complete").write_bytes(marker)
    root_fd = fsio.open_root(root, create=False)
    try:
        listed = _ended("manifest+marker", lambda: list(catalog.scan(root_fd)))
        for item in listed or []:
            if isinstance(item, catalog.Checkpoint):
                for m in item.manifests:
                    assert _inside(str(root), *m.ref.segments), m.ref
        ref = layout.ArtifactRef(UID, CID, CONTAINER)
        found = _ended("manifest+marker", lambda: catalog.find(root_fd, ref))
        if found is not None:
            assert found[1].ref == ref  # never another checkpoint's manifest under this one's name
        ledger = Ledger(root_fd, "node-a")
        ledger.record(LedgerRecord(ArchiveStamp(archive_name(POD), 1, 1), UID, CID, CONTAINER, False))
        ledger_dir = root / ".ingest" / "node-a" / "ledger"
        (ledger_dir / _file_name(archive_name(POD))).write_bytes(record)
        got = _ended("ledger", lambda: ledger.lookup(archive_name(POD)))
        if got is not None:
            assert got.stamp.name == archive_name(POD) and _inside(str(root), *got.ref.segments)
    finally:
        os.close(root_fd)


uri_segment = st.one_of(st.sampled_from([UID, CID, CONTAINER, "dump.tar.zst", "..", ".", "", "%2e%2e", "a\x00b", "\n",
                                         "x" * 300, "UID", "dump.tar.zst/"]), st.text(max_size=12))
_uri_near_valid = st.builds(lambda scheme, uid, cid, container, tail: f"{scheme}{uid}/{cid}/{container}/{tail}",
              st.sampled_from(["shared://", f"file://{LOCAL}/", "shared://", f"file://{LOCAL}/", "file:///etc/"]),
              *(_mostly(valid, uri_segment) for valid in (UID, CID, CONTAINER, "dump.tar.zst")))
uri_input = st.one_of(
    _uri_near_valid,
    st.builds(lambda scheme, parts: scheme + "/".join(parts),
              st.sampled_from(["shared://", f"file://{LOCAL}/", "file:///etc/", "file://" + LOCAL, "http://", "",
                               "shared:/", "SHARED://", f"file://{LOCAL}/../"]),
              st.lists(uri_segment, max_size=6)),
    st.text(max_size=60))


def check_uri(uri: str) -> None:
    located = _ended("uri", lambda: layout.parse_location(uri, PurePath(LOCAL)))
    if located is not None:
        kind, ref = located
        assert _inside("/store", *ref.segments, layout.DUMP_FILE), ref
        assert _inside(LOCAL, *ref.segments, layout.DUMP_FILE), ref
        # The URI says exactly what it resolves to: printed back, it is the same string.
        assert uri in (ref.uri, ref.file_uri(PurePath(LOCAL))), (uri, ref)


layer_input = st.one_of(st.just(CHECKPOINT_ARCHIVE).flatmap(_bytes_mutated),
                        st.randoms(use_true_random=False).map(_crafted).map(lambda b: CHECKPOINT_BODY + b))


def check_layer(data: bytes) -> None:
    work = scratch.fresh("layer")
    archive = work / "dump.tar"
    archive.write_bytes(data)
    before = sorted(os.listdir(work))
    out = work / "image"
    image = _ended("layer", lambda: write_image(archive, out, "cart-api", "ckpt", Platform("amd64")))
    if image is None:
        assert sorted(os.listdir(work)) == before  # refused: no image, no half-written sibling
        return
    blob = out / "blobs" / "sha256" / image.layer.digest.removeprefix("sha256:")
    layer_names = set()
    with tarfile.open(blob, "r:") as tar:
        for info in tar:
            assert _inside("/layer", *info.name.split("/")), info.name
            if info.issym():
                assert not info.linkname.startswith("/"), info.linkname
            assert info.isreg() or info.isdir() or info.issym(), info.name
            layer_names.add(info.name)
    # One identity: what the ingest's scanner read is what the layer holds, name for name.
    scanner = TarScanner(frozenset(), "fuzz.tar", keep_members=True)
    scanner.feed(data)
    assert {m.name for m in scanner.finish().members} == layer_names


ingest_input = st.one_of(st.just(KUBELET_ARCHIVE).flatmap(_bytes_mutated), st.just(KUBELET_ARCHIVE))


def check_ingest(data: bytes) -> None:
    """The whole ingest on a fuzzed kubelet archive: committed whole and byte-exact, or nothing at all."""
    work = scratch.fresh("ingest")
    kube, store = work / "kubelet", work / "store"
    kube.mkdir(mode=0o700)
    path = kube / archive_name(POD)
    path.write_bytes(data)
    root_fd = fsio.open_root(store, create=True)
    try:
        result = _ended("ingest", lambda: service.ingest_archive(
            root_fd, path, "node-a", CompressionSettings(level=1, threads=0), threading.Event(),
            datetime.now(UTC)))
        listed = [c for c in catalog.scan(root_fd)]
        staging = store / ".ingest" / "node-a" / "staging"
        assert not staging.exists() or not os.listdir(staging), os.listdir(staging)
        if result is None:
            assert listed == [], listed  # refused: nothing visible, complete or not
            assert not any(p.name == layout.MARKER_FILE for p in store.rglob("*"))
            return
        [checkpoint] = listed
        assert isinstance(checkpoint, catalog.Checkpoint) and checkpoint.manifests[0].ref == result.manifest.ref
        out = work / "back.tar"
        retrieve.get(root_fd, result.manifest.ref, out, CompressionSettings(), threading.Event())
        assert out.read_bytes() == data
    finally:
        os.close(root_fd)


TARGETS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], None]]] = {
    "tarscan": (st.tuples(tar_input, chunking), check_tarscan),
    "identity": (identity_input, check_identity),
    "manifest+marker+ledger": (store_input, check_store_files),
    "uri": (uri_input, check_uri),
    "layer": (layer_input, check_layer),
    "ingest": (ingest_input, check_ingest),
}
