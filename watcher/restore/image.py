"""A kubelet checkpoint archive as an OCI image layout that the node's runtime can restore.

    <out>/oci-layout
    <out>/index.json             one manifest, tagged with ``org.opencontainers.image.ref.name``
    <out>/blobs/sha256/<layer>   one uncompressed tar of the archive's files (see layer.py; containerd gets
                                 the stored zstd dump itself instead: stream.py)
    <out>/blobs/sha256/<config>  architecture, os, rootfs.diff_ids
    <out>/blobs/sha256/<manif.>  config + layer, and the checkpoint annotations

The runtimes recognise a checkpoint image by the **manifest's** annotations (not the
index's, not config labels), each by its own key:

- CRI-O: ``io.kubernetes.cri-o.annotations.checkpoint.name`` = the container's name;
- containerd >= 2.1 and checkpointctl: ``org.criu.checkpoint.container.name`` and
  ``org.criu.checkpoint.rootfsImageName`` (the base image the container ran on);
- podman 5: ``io.podman.annotations.checkpoint.runtime.name``, which must equal the
  host's OCI runtime (the ``runtime`` field of config.dump, e.g. crun), else "image is
  not a checkpoint"; ``io.podman.annotations.checkpoint.name`` names the container.

Everything is derived from the archive's bytes and the arguments, with no clock and
sorted JSON, so the same checkpoint gives byte-identical blobs and the same manifest
digest. ``plan_image`` is the pure part; ``write_image`` does the I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from platform import machine
from typing import Any

from watcher.archive.tarscan import METADATA_CAP
from watcher.errors import ArchiveError, ImageError
from watcher.jsonobj import json_object
from watcher.restore import layer
from watcher.store import layout
from watcher.store.manifest import MAX_TEXT

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
REF_NAME = "org.opencontainers.image.ref.name"

CRIO_NAME = "io.kubernetes.cri-o.annotations.checkpoint.name"
CRIU_NAME = "org.criu.checkpoint.container.name"
CRIU_ROOTFS_IMAGE = "org.criu.checkpoint.rootfsImageName"
PODMAN_NAME = "io.podman.annotations.checkpoint.name"
PODMAN_RUNTIME = "io.podman.annotations.checkpoint.runtime.name"

# An OCI/Docker tag: a path segment by construction.
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
# platform.machine() -> the GOARCH names OCI configs use, for the machines CRIU runs on.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str = "linux"


def host_platform() -> Platform:
    """This machine's platform: a checkpoint restores only on the architecture it was dumped on."""
    name = machine()
    if name not in _GOARCH:
        raise ImageError(f"no OCI architecture known for machine {name!r}; pass the platform explicitly")
    return Platform(_GOARCH[name])


@dataclass(frozen=True)
class ConfigDump:
    """The fields of the runtime's ``config.dump`` that the annotations carry (None: absent)."""

    rootfs_image_name: str | None
    runtime: str | None


@dataclass(frozen=True)
class Blob:
    digest: str
    """``sha256:<hex>``"""
    size: int
    data: bytes


@dataclass(frozen=True)
class ImagePlan:
    config: Blob
    manifest: Blob
    index: bytes


@dataclass(frozen=True)
class WrittenImage:
    path: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer: layer.LayerDigest


def parse_config_dump(data: bytes, where: str) -> ConfigDump:
    config = json_object(data, f"{where}: config.dump", ArchiveError)
    fields = {}
    for key in ("rootfsImageName", "runtime"):
        value = config.get(key)
        # Both become image annotations, printed and stored by the runtime: one line, a name's length.
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT or "\n" in value):
            raise ArchiveError(f"{where}: config.dump field {key!r} is not a string (one line, at most "
                               f"{MAX_TEXT} characters)")
        fields[key] = value or None
    return ConfigDump(fields["rootfsImageName"], fields["runtime"])


def checkpoint_annotations(container: str, config: ConfigDump) -> dict[str, str]:
    """The manifest annotations; a key whose value config.dump lacks is left out, never guessed.

    Without ``runtime`` podman will not take the image as a checkpoint, but CRI-O and
    containerd still do; inventing "crun" could make podman restore on the wrong runtime.
    """
    found = {CRIO_NAME: container, CRIU_NAME: container, PODMAN_NAME: container,
             CRIU_ROOTFS_IMAGE: config.rootfs_image_name, PODMAN_RUNTIME: config.runtime}
    return {key: value for key, value in found.items() if value is not None}


def plan_image(layer_digest: layer.LayerDigest, container: str, config: ConfigDump,
               platform: Platform, tag: str) -> ImagePlan:
    """The config, manifest and index for a written layer. Pure: same inputs, same bytes."""
    check_names(container, tag)
    config_blob = _blob({
        "architecture": platform.architecture,
        "os": platform.os,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.diff_id or layer_digest.digest]},
    })
    manifest = _blob({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": _descriptor(CONFIG_MEDIA_TYPE, config_blob.digest, config_blob.size),
        "layers": [_descriptor(layer_digest.media_type, layer_digest.digest, layer_digest.size)],
        "annotations": checkpoint_annotations(container, config),
    })
    index = _canonical({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{**_descriptor(MANIFEST_MEDIA_TYPE, manifest.digest, manifest.size),
                       "annotations": {REF_NAME: tag}}],
    })
    return ImagePlan(config_blob, manifest, index)


def check_names(container: str, tag: str) -> None:
    """Refuse a container name or tag that cannot go into the image (before any I/O)."""
    layout.container_name(container)
    if _TAG.fullmatch(tag) is None:
        raise ImageError(f"unusable image tag {tag!r}: letters, digits, '_', '.', '-' (at most 128)")


def _canonical(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _blob(value: dict[str, Any]) -> Blob:
    data = _canonical(value)
    return Blob(f"sha256:{hashlib.sha256(data).hexdigest()}", len(data), data)


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def write_image(archive: Path, out: Path, container: str, tag: str,
                platform: Platform | None = None) -> WrittenImage:
    """Write the checkpoint image of ``archive`` (the uncompressed kubelet tar) to ``out``.

    ``out`` must not exist. The layout is built in a hidden sibling and renamed into place,
    so ``out`` holds a whole image or nothing. Directories are 0700 and files 0600 at most,
    whatever the umask: the layer is the process's memory, as secret as the store's dumps.
    Nothing is fsynced: the image is a scratch copy of what the store holds durably, made
    inside the freeze window; after a crash it is built again.
    """
    where = f"archive {archive}"
    check_names(container, tag)
    platform = platform or host_platform()
    if out.exists():
        raise ImageError(f"image directory {out} already exists")
    try:
        with open(archive, "rb") as src:
            entries = layer.index_archive(src, where)
            dump = _read_config_dump(src.fileno(), config_dump_entry(entries, where), where)
            config = parse_config_dump(dump, where)
            work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
            try:
                blobs = work / "blobs" / "sha256"
                blobs.parent.mkdir(mode=0o700)  # mkdtemp made ``work`` 0700; a umask only removes bits
                blobs.mkdir(mode=0o700)
                layer_digest = _write_layer_blob(src.fileno(), entries, blobs, where)
                plan = plan_image(layer_digest, container, config, platform, tag)
                for blob in (plan.config, plan.manifest):
                    _write_file(blobs / _hex(blob.digest), blob.data)
                _write_file(work / "index.json", plan.index)
                _write_file(work / "oci-layout", OCI_LAYOUT)
                os.rename(work, out)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
    except OSError as err:
        raise ImageError(f"cannot write the image of {where} to {out}: {err}") from None
    return WrittenImage(out, tag, plan.manifest.digest, plan.config.digest, layer_digest)


def config_dump_entry(entries: list[layer.Entry], where: str) -> layer.Entry:
    """config.dump, after checking the archive has what every runtime reads to restore."""
    files = {entry.name: entry for entry in entries if entry.kind is layer.Kind.FILE}
    missing = [name for name in ("config.dump", "spec.dump") if name not in files]
    if not any(entry.name.split("/", 1)[0] == "checkpoint" for entry in entries):
        missing.append("checkpoint/")
    if missing:
        raise ArchiveError(f"{where}: not a checkpoint archive (no {', '.join(missing)})")
    return files["config.dump"]


def _read_config_dump(src_fd: int, entry: layer.Entry, where: str) -> bytes:
    if entry.size > METADATA_CAP:
        raise ArchiveError(f"{where}: config.dump is {entry.size} bytes, over the {METADATA_CAP} cap")
    data = os.pread(src_fd, entry.size, entry.offset)
    if len(data) != entry.size:
        raise ArchiveError(f"{where}: config.dump ends after {len(data)} of its {entry.size} bytes")
    return data


def _write_layer_blob(src_fd: int, entries: list[layer.Entry], blobs: Path, where: str) -> layer.LayerDigest:
    """Stream the layer into a temporary blob, then name it by the digest computed on the way."""
    temp = blobs / ".layer.partial"
    with os.fdopen(_create(temp), "wb") as out:
        layer_digest = layer.write_layer(src_fd, entries, out, where)
    os.rename(temp, blobs / _hex(layer_digest.digest))
    return layer_digest


def _create(path: Path) -> int:
    # O_EXCL: the directory is this call's own, so anything already there is a bug, not a file to reuse.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _write_file(path: Path, data: bytes) -> None:
    with os.fdopen(_create(path), "wb") as out:
        out.write(data)


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")
