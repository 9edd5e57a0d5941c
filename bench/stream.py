"""Stream to the destination, measured before it is built: what overlapping the destination's import with the
source's ingest would take off the freeze window.

    .venv/bin/python bench/stream.py [--sizes 512M,2G] [--rounds 3]      (as root: a real containerd)

For a kubelet-style archive of SIZE (lab/archives.py's mix: zero pages, program text, heap, random bytes), the
time from "the source starts its ingest" to "containerd holds the checkpoint image, unpacked", two ways, each
round against a fresh containerd (so no blob is already there), in the same run:

- ``serial``, what lpm does: the source ingests and commits the dump (watcher/ingest), then the destination
  streams the stored dump into ``ctr images import`` (watcher/restore/stream.py), which writes the blob into
  its content store and unpacks it;
- ``streamed``, the best case of streaming to the destination: while the source ingests, a follower reads the
  growing staging file and pipes it into ``ctr content ingest``, hashing the stored bytes and the decompressed
  archive on the way, as the destination's check would; once the source has committed and both sums match its
  manifest, an OCI archive holding only the config, the image manifest and ``index.json`` is imported, and
  containerd unpacks the layer it already holds.

One line per size, medians over the rounds, then the parts measured alone in the serial way (the ingest, the
blob into the content store, the unpack):

    size=2GiB serial=X.XXs streamed=Y.YYs saved=Z.ZZs  (ingest A.AAs, blob B.BBs, unpack C.CCs)

and the agent's import alone through the 1 MiB pipe it gives ``ctr`` against Linux's default 64 KiB one (ctr
hands containerd what each read of its stdin returns as one gRPC write, and waits for the answer).

Both sides share this machine's cores, as the lab's two nodes do; on two machines the follower's work would not
compete with the source's compression. The follower skips the tar scan the real check does (a small part of
the read: bench/large.py's import step includes it).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.freeze import parse_size  # noqa: E402
from lab.archives import ArchiveSpec, Pod, archive_name, make_archive  # noqa: E402
from tests.restore.containerd import Containerd, run_containerd  # noqa: E402
from watcher.ingest import service  # noqa: E402
from watcher.restore import layer, stream  # noqa: E402
from watcher.restore.image import OCI_LAYOUT, host_platform, parse_config_dump, plan_image  # noqa: E402
from watcher.restore.importer import ContainerdImporter  # noqa: E402
from watcher.restore.pipeline import import_checkpoint  # noqa: E402
from watcher.restore.source import DirectorySource  # noqa: E402
from watcher.store import catalog, fsio  # noqa: E402
from watcher.store.manifest import Manifest  # noqa: E402
from watcher.zstream import CompressionSettings  # noqa: E402

MIB = 1 << 20
WIDE, NARROW = 1 << 20, 64 << 10  # the agent's import pipe (watcher/restore/importer.py), Linux's default
_CHUNK = 1 << 20
_POLL = 0.005  # seconds between two looks at a staging file that has not grown


def _ctr(containerd: Containerd) -> list[str]:
    return [str(containerd.ctr_binary), "--address", containerd.address, "--namespace", "k8s.io"]


def _manifest(root_fd: int) -> Manifest:
    [entry] = [e for e in catalog.scan(root_fd) if isinstance(e, catalog.Checkpoint)]
    return entry.manifests[0]


def _small_archive(manifest: Manifest, config_dump: bytes) -> bytes:
    """The checkpoint image as lpm writes it (watcher/restore/stream.py), without the layer's blob."""
    blob = layer.LayerDigest(f"sha256:{manifest.checksum_sha256}", manifest.compressed_size,
                             layer.ZSTD_MEDIA_TYPE, f"sha256:{manifest.uncompressed_sha256}")
    plan = plan_image(blob, manifest.container_name, parse_config_dump(config_dump, "bench"), host_platform(),
                      "bench")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("oci-layout", OCI_LAYOUT),
                           *((f"blobs/sha256/{b.digest.removeprefix('sha256:')}", b.data)
                             for b in (plan.config, plan.manifest)),
                           ("index.json", plan.index)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _import_small(containerd: Containerd, manifest: Manifest, config_dump: bytes) -> None:
    """Import the image without its layer's blob, which containerd already holds, and so unpack that blob."""
    subprocess.run([*_ctr(containerd), "images", "import", "--local", "--base-name", "localhost/bench", "-"],
                   input=_small_archive(manifest, config_dump), check=True, capture_output=True)


class _Follower(threading.Thread):
    """Reads the source's staging file as it grows into ``ctr content ingest``, hashing as it goes."""

    def __init__(self, staging: Path, ingest: subprocess.Popen[bytes]) -> None:
        super().__init__(name="follower")
        self._staging, self._ingest = staging, ingest
        self.final_size: int | None = None  # set once the source has committed
        self.stored, self.raw = hashlib.sha256(), hashlib.sha256()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as err:  # noqa: BLE001  (reported by the round, which fails on it)
            self.error = err
        finally:
            assert self._ingest.stdin is not None
            self._ingest.stdin.close()

    def _follow(self) -> None:
        while not (found := [p for p in self._staging.glob("*") if p.is_file()] if self._staging.is_dir() else []):
            time.sleep(_POLL)
        decompress = zstandard.ZstdDecompressor().decompressobj()
        assert self._ingest.stdin is not None
        done = 0
        with open(found[0], "rb") as dump:  # the open file stays readable when the commit renames it
            while self.final_size is None or done < self.final_size:
                piece = dump.read(_CHUNK)
                if not piece:
                    time.sleep(_POLL)
                    continue
                done += len(piece)
                self.stored.update(piece)
                self.raw.update(decompress.decompress(piece))
                self._ingest.stdin.write(piece)


def _serial(archive: Path, store: Path, containerd: Containerd) -> dict[str, float]:
    settings, cancel = CompressionSettings(), threading.Event()
    root = fsio.open_root(store, create=True)
    try:
        started = time.monotonic()
        service.ingest_archive(root, archive, "node-a", settings, cancel, datetime.now(UTC), target_node="node-b")
        ingested = time.monotonic()
        importer = ContainerdImporter(address=containerd.address, ctr=str(containerd.ctr_binary), timeout=3600)
        asyncio.run(import_checkpoint(DirectorySource(root, settings, cancel), _manifest(root).ref,
                                      store.parent / "work", importer))
        return {"serial": time.monotonic() - started, "ingest": ingested - started}
    finally:
        os.close(root)


def _streamed(archive: Path, store: Path, containerd: Containerd, config_dump: bytes) -> dict[str, float]:
    settings, cancel = CompressionSettings(), threading.Event()
    root = fsio.open_root(store, create=True)
    try:
        started = time.monotonic()
        ingest = subprocess.Popen([*_ctr(containerd), "content", "ingest", "lpm-bench-stream"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert ingest.stdin is not None
        fcntl.fcntl(ingest.stdin.fileno(), fcntl.F_SETPIPE_SZ, WIDE)  # as the agent's importer does
        follower = _Follower(store / ".ingest" / "node-a" / "staging", ingest)
        follower.start()
        service.ingest_archive(root, archive, "node-a", settings, cancel, datetime.now(UTC), target_node="node-b")
        manifest = _manifest(root)
        follower.final_size = manifest.compressed_size
        follower.join()
        assert ingest.stderr is not None
        err = ingest.stderr.read()  # ctr says little; its stdin the follower has closed
        ingest.wait()
        if follower.error is not None or ingest.returncode:
            raise SystemExit(f"streamed: the follower failed: {follower.error!r}; ctr content ingest: {err!r}")
        if (follower.stored.hexdigest(), follower.raw.hexdigest()) != (manifest.checksum_sha256,
                                                                       manifest.uncompressed_sha256):
            raise SystemExit("streamed: the followed bytes do not match the committed manifest")
        _import_small(containerd, manifest, config_dump)
        return {"streamed": time.monotonic() - started}
    finally:
        os.close(root)


def _parts(archive: Path, store: Path, containerd: Containerd, config_dump: bytes) -> dict[str, float]:
    """The blob into the content store and the unpack, each alone, after an ingest."""
    root = fsio.open_root(store, create=True)
    try:
        service.ingest_archive(root, archive, "node-a", CompressionSettings(), threading.Event(),
                               datetime.now(UTC), target_node="node-b")
        manifest = _manifest(root)
        [dump] = store.rglob("dump.tar.zst")
    finally:
        os.close(root)
    started = time.monotonic()
    with open(dump, "rb") as source:
        subprocess.run([*_ctr(containerd), "content", "ingest", "lpm-bench-parts"], stdin=source, check=True,
                       capture_output=True)
    blob = time.monotonic()
    _import_small(containerd, manifest, config_dump)
    return {"blob": blob - started, "unpack": time.monotonic() - blob}


def _pipe(archive: Path, store: Path, containerd: Containerd, size: int) -> dict[str, float]:
    """The agent's import (the stored dump streamed into ``ctr images import``) through a pipe of ``size``."""
    settings, cancel = CompressionSettings(), threading.Event()
    root = fsio.open_root(store, create=True)
    try:
        service.ingest_archive(root, archive, "node-a", settings, cancel, datetime.now(UTC), target_node="node-b")
        manifest = _manifest(root)
        subprocess.run(["sync"], check=True)
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, size)
        started = time.monotonic()
        tool = subprocess.Popen([*_ctr(containerd), "images", "import", "--local", "--base-name", "localhost/bench",
                                 "-"], stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(read_end)
        with os.fdopen(write_end, "wb") as out:
            stream.write_archive(DirectorySource(root, settings, cancel), manifest.ref, manifest, out, "bench")
        if tool.wait():
            raise SystemExit(f"ctr images import through a {size}-byte pipe failed")
        return {f"pipe {size // 1024} KiB": time.monotonic() - started}
    finally:
        os.close(root)


def _config_dump(archive: Path) -> bytes:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("config.dump")
        assert member is not None
        return member.read()


def measure(size: int, rounds: int, work: Path) -> dict[str, float]:
    pod = Pod(uid=f"stream-{size // MIB}", name=f"stream-{size // MIB}", container="app")
    archive = make_archive(work, ArchiveSpec(pod=pod, memory=size), archive_name(pod))
    config_dump = _config_dump(archive)
    results: list[dict[str, float]] = []
    for index in range(rounds):
        figures: dict[str, float] = {}
        for way in ("serial", "streamed", "parts", "narrow", "wide"):
            with tempfile.TemporaryDirectory(prefix=f"{way}-", dir=work) as scratch, run_containerd() as containerd:
                store = Path(scratch) / "store"
                subprocess.run(["sync"], check=True)  # the previous way's writes are not this one's to flush
                if way == "serial":
                    figures |= _serial(archive, store, containerd)
                elif way == "streamed":
                    figures |= _streamed(archive, store, containerd, config_dump)
                elif way == "parts":
                    figures |= _parts(archive, store, containerd, config_dump)
                else:
                    figures |= _pipe(archive, store, containerd, NARROW if way == "narrow" else WIDE)
        print(f"#   round {index + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
        results.append(figures)
    archive.unlink()
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main(sizes: list[int], rounds: int, work: Path | None) -> int:
    with tempfile.TemporaryDirectory(prefix="lpm-stream-", dir=work) as scratch:
        for size in sizes:
            m = measure(size, rounds, Path(scratch))
            label = f"{size // 2**30}GiB" if size % 2**30 == 0 else f"{size // MIB}MiB"
            print(f"size={label} serial={m['serial']:.2f}s streamed={m['streamed']:.2f}s "
                  f"saved={m['serial'] - m['streamed']:.2f}s  (ingest {m['ingest']:.2f}s, blob {m['blob']:.2f}s, "
                  f"unpack {m['unpack']:.2f}s)", flush=True)
            wide, narrow = m[f"pipe {WIDE // 1024} KiB"], m[f"pipe {NARROW // 1024} KiB"]
            print(f"  import through the agent's 1 MiB pipe {wide:.2f}s, through a 64 KiB one {narrow:.2f}s: "
                  f"{narrow / wide:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512M,2G", type=lambda s: [parse_size(p) for p in s.split(",")])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="where archives and stores go (room for 3x SIZE)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/stream.py needs root (a real containerd)")
    raise SystemExit(main(args.sizes, args.rounds, args.work))
