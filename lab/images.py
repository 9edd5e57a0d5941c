"""The two images every real node of the lab needs, built locally: no registry is reachable from here.

- ``PAUSE_IMAGE``: the pod sandbox. containerd starts one per pod before its containers, and would pull
  ``registry.k8s.io/pause`` otherwise; any process that sleeps until killed does the job.
- ``BUSYBOX_IMAGE``: the workloads' base image. A restored container runs on the base image its checkpoint
  was taken on, so every node has it, under the same name.

Both are one uncompressed layer holding the rootfs's static busybox and its applet links, written as an
OCI archive (``oci-layout``, ``index.json``, ``blobs/``) that ``ctr images import`` reads; the index names
the image (``io.containerd.image.name``). Deterministic: mtime 0, uid 0, sorted entries.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

PAUSE_IMAGE = "localhost/lpm-pause:1"
BUSYBOX_IMAGE = "localhost/lpm-busybox:1"
_APPLETS = ("sh", "sleep", "echo", "cat", "date", "seq", "head", "ls", "true")


def _layer(busybox: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """busybox and its applets in bin/, and ``extra`` executables (bin/NAME -> bytes)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo("bin")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(directory)
        binary = tarfile.TarInfo("bin/busybox")
        binary.size, binary.mode = len(busybox), 0o755
        tar.addfile(binary, io.BytesIO(busybox))
        for applet in _APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
        for name, data in sorted((extra or {}).items()):
            executable = tarfile.TarInfo(f"bin/{name}")
            executable.size, executable.mode = len(data), 0o755
            tar.addfile(executable, io.BytesIO(data))
    return out.getvalue()


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data),
            **extra}


def write_oci_archive(path: Path, name: str, busybox: bytes, entrypoint: list[str],
                      extra: dict[str, bytes] | None = None) -> Path:
    """An OCI archive of the image ``name`` (``host/repo:tag``) running ``entrypoint`` by default, with
    ``extra`` executables in bin/ beside busybox."""
    layer = _layer(busybox, extra)
    config = _json({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    })
    manifest = _json({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    })
    index = _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        _descriptor("application/vnd.oci.image.manifest.v1+json", manifest, annotations={
            "io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]})]})
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(member: str, data: bytes) -> None:
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for blob in sorted((layer, config, manifest), key=lambda b: hashlib.sha256(b).hexdigest()):
            add(f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", blob)
    return path


def node_images(rootfs: Path, directory: Path) -> dict[str, Path]:
    """The pause and busybox archives by image name, from the rootfs's static busybox, in ``directory``."""
    busybox = (rootfs / "usr" / "bin" / "busybox").read_bytes()
    return {PAUSE_IMAGE: write_oci_archive(directory / "pause.tar", PAUSE_IMAGE, busybox, ["/bin/sleep", "2147483647"]),
            BUSYBOX_IMAGE: write_oci_archive(directory / "busybox.tar", BUSYBOX_IMAGE, busybox, ["/bin/sh"])}


MEMHOLD_IMAGE = "localhost/lpm-memhold:1"
_MEMHOLD_SOURCE = Path(__file__).resolve().parents[1] / "bench" / "memhold"


def memhold_image(rootfs: Path, directory: Path, variant: str | None = None) -> Path:
    """The image bench/freeze.py migrates: busybox and ``memhold`` (bench/memhold), built with the machine's
    Go as a static binary, cached under .cache/ by a digest of its source. A ``variant`` is the same image with
    one more file naming it: another image ID, so that no runtime mistakes one for the other."""
    source = b"".join(p.read_bytes() for p in sorted(_MEMHOLD_SOURCE.glob("*.go")) + [_MEMHOLD_SOURCE / "go.mod"])
    cache = Path(os.environ.get("LPM_CACHE_DIR", _MEMHOLD_SOURCE.parents[1] / ".cache")) / "memhold"
    binary = cache / hashlib.sha256(source).hexdigest()[:16]
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        subprocess.run(["go", "build", "-trimpath", "-o", str(partial), "."], cwd=_MEMHOLD_SOURCE, check=True,
                       env={**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"})
        partial.rename(binary)
    busybox = (rootfs / "usr" / "bin" / "busybox").read_bytes()
    extra = {"memhold": binary.read_bytes()}
    if variant is not None:
        extra[f"memhold-{variant}"] = variant.encode()
    return write_oci_archive(directory / f"memhold{'-' + variant if variant else ''}.tar", MEMHOLD_IMAGE, busybox,
                             ["/bin/memhold"], extra)
