"""One container's checkpoint from the store into the node's runtime: verified and imported.

Shared by both destinations (cluster mode's PodMigration reconciler and standalone mode's marker
poller). Both SHA-256 sums, the zstd content checksum and the sizes are checked against the store's
manifest (and, in cluster mode, the SHA-256 against the one the API announced); nothing is imported
unless all of them hold. Two ways, by what the runtime's importer reads:

- streamed (containerd): the stored dump goes to the runtime as the image's zstd layer while it is
  checked, in one read (stream.py);
- normalised (skopeo: containers-storage, registries): the archive is decompressed into node-local
  scratch space, re-written as a normalised uncompressed layer (layer.py), then imported.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from watcher.errors import LpmError
from watcher.kube.names import dns_name
from watcher.restore import stream
from watcher.restore.image import write_image
from watcher.restore.importer import ArchiveImporter, Importer, LayoutImporter
from watcher.restore.source import Source
from watcher.store import layout
from watcher.store.manifest import Manifest


class RestoreRefused(LpmError):
    """The checkpoint cannot be restored as it is (checksums, missing containers, no source spec)."""


@dataclass(frozen=True)
class Imported:
    reference: str
    """The image reference a container spec restores from."""
    manifest: Manifest
    timings: dict[str, float] = field(default_factory=dict)
    """verifySeconds, imageSeconds, importSeconds."""


def _check_room(manifest: Manifest, ref: layout.ArtifactRef, work: Path) -> None:
    """Refuse a checkpoint whose archive and image layer (twice its uncompressedSize) would not fit.

    Decompression stops at the manifest's uncompressedSize (zstream.Bounds), but a forged manifest
    may promise terabytes; this keeps such a checkpoint from filling the node's disk.
    """
    free = shutil.disk_usage(work).free
    if 2 * manifest.uncompressed_size > free:
        raise RestoreRefused(f"artifact {ref.uri}: its archive ({manifest.uncompressed_size} bytes) and image "
                             f"layer need {2 * manifest.uncompressed_size} bytes, {work.parent} has {free} free")


def repository(manifest: Manifest) -> str:
    """The image repository of a container's checkpoints: one per pod and container, DNS-safe."""
    return dns_name("lpm-checkpoint", manifest.pod_namespace, manifest.pod_name, manifest.container_name, limit=128)


async def import_checkpoint(source: Source, ref: layout.ArtifactRef, work_dir: Path, importer: Importer,
                            announced_sha256: str | None = None) -> Imported:
    """Verify ``ref``'s dump, read from ``source`` (a directory store or a bucket), and import its checkpoint
    image: streamed where the runtime reads an archive from a pipe (stream.py), else written to scratch space
    (always removed) as a normalised layout."""
    if isinstance(importer, ArchiveImporter):
        return await _import_streamed(source, ref, importer, announced_sha256)
    return await _import_normalised(source, ref, work_dir, importer, announced_sha256)


def _check_announced(ref: layout.ArtifactRef, manifest: Manifest, announced_sha256: str | None) -> None:
    if announced_sha256 is not None and manifest.checksum_sha256 != announced_sha256:
        raise RestoreRefused(f"artifact {ref.uri}: the API says sha256 {announced_sha256}, "
                             f"the store's manifest {manifest.checksum_sha256}")


async def _import_streamed(source: Source, ref: layout.ArtifactRef, importer: ArchiveImporter,
                           announced_sha256: str | None) -> Imported:
    started = time.monotonic()
    manifest = await source.find(ref)
    _check_announced(ref, manifest, announced_sha256)  # before a byte goes to the runtime
    tag = ref.checkpoint_id.lower()

    def feed(out: BinaryIO) -> None:
        stream.write_archive(source, ref, manifest, out, tag)

    reference = await importer.import_archive(feed, tag, repository(manifest))
    return Imported(reference, manifest, {"importSeconds": time.monotonic() - started})


async def _import_normalised(source: Source, ref: layout.ArtifactRef, work_dir: Path, importer: LayoutImporter,
                             announced_sha256: str | None) -> Imported:
    work = work_dir / f"{ref.checkpoint_id}-{ref.container}"
    shutil.rmtree(work, ignore_errors=True)  # a previous attempt cut short by a crash
    work.mkdir(mode=0o700, parents=True)
    timings: dict[str, float] = {}
    try:
        _check_room(await source.find(ref), ref, work)
        started = time.monotonic()
        manifest = await source.get(ref, work / "archive.tar")
        _check_announced(ref, manifest, announced_sha256)
        timings["verifySeconds"] = time.monotonic() - started
        started = time.monotonic()
        tag = ref.checkpoint_id.lower()
        image = await asyncio.to_thread(write_image, work / "archive.tar", work / "image", ref.container, tag)
        timings["imageSeconds"] = time.monotonic() - started
        started = time.monotonic()
        reference = await importer.import_image(image.path, tag, repository(manifest))
        timings["importSeconds"] = time.monotonic() - started
        return Imported(reference, manifest, timings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
