"""lpm's image, built from the repository's Dockerfile with buildah, as users build it.

No image registry is reachable here, so the Dockerfile's ``BASE_IMAGE`` build argument points at a base
made locally from a Debian trixie minbase rootfs (scripts/image/build-base.sh, cached under
.cache/image-base/), imported into the sandbox's containers-storage. buildah runs in the trixie rootfs
(lab/sandbox.py); the image's own ``apt-get`` and ``pip`` reach Debian's archive and PyPI through the
host's network.

``oci_archive`` is the built image as an OCI archive, cached under .cache/lpm-image/ by a digest of the
build context, so the lab's nodes (which import it into containerd) and tests/image share one build.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
from pathlib import Path

from lab.controlplane import REPO
from lab.sandbox import Sandbox, rootfs

REFERENCE = "localhost/lpm:lab"  # the name lab/deploy/ gives the DaemonSet's and the CronJob's image
CONTEXT = ("Dockerfile", "pyproject.toml", "README.md", "lock/image.txt", "watcher", "gc")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


class ImageError(Exception):
    """The image could not be built or saved; the message carries the tool's output."""


def _context_files() -> list[Path]:
    files: list[Path] = []
    for name in CONTEXT:
        path = REPO / name
        files += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
    return files


def context_digest() -> str:
    """What the image is built from: every context file's path and bytes, and the base image's recipe."""
    digest = hashlib.sha256(_base_tarball().name.encode())
    for path in _context_files():
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _base_tarball() -> Path:
    result = subprocess.run([str(REPO / "scripts" / "image" / "build-base.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"cannot build the base rootfs: {result.stderr.strip()[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def _base_image(box: Sandbox) -> str:
    """The local Debian base in the sandbox's containers-storage, imported from the cached tarball."""
    tarball = _base_tarball()
    image = f"localhost/lpm-debian-base:{tarball.name.removesuffix('.tar')}"
    if box.run("podman", "image", "exists", image, check=False).returncode != 0:
        with tarball.open("rb") as stream:
            imported = subprocess.run([*box.prefix(), "podman", "import", "-", image], stdin=stream,
                                      capture_output=True, text=True, timeout=300)
        if imported.returncode != 0:
            raise ImageError(f"podman import of the base: {imported.stderr[-1500:]}")
    return image


def build(box: Sandbox) -> str:
    """Build the Dockerfile into the sandbox's containers-storage as ``REFERENCE``; returns it."""
    context = box.share / "lpm-image-context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    for name in CONTEXT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=_SKIP)
        else:
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / name)
    reference = REFERENCE
    # --network host: the sandbox shares the host's network (containers.conf says netns none);
    # --ulimit: buildah asks for 1048576 open files and processes by default, above this machine's
    # hard limits, which root cannot raise here (no CAP_SYS_RESOURCE);
    # --layers: a rebuild in the same storage reuses the cached steps.
    nofile, nproc = (resource.getrlimit(limit)[1] for limit in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC))
    box.run("buildah", "bud", "--layers", "--network", "host", "--ulimit", f"nofile={nofile}:{nofile}",
            "--ulimit", f"nproc={nproc}:{nproc}", "--build-arg", f"BASE_IMAGE={_base_image(box)}",
            "-t", reference, "-f", str(context / "Dockerfile"), str(context), timeout=900)
    return reference


def cache_path() -> Path:
    cache = Path(os.environ.get("LPM_CACHE_DIR", REPO / ".cache")) / "lpm-image"
    return cache / f"{context_digest()}.tar"


def save(box: Sandbox, reference: str) -> Path:
    """The sandbox's image as the cached OCI archive of this context (written once, renamed into place)."""
    path = cache_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = box.share / "lpm-image.partial.tar"
        box.run("podman", "save", "--format", "oci-archive", "-o", str(partial), reference, timeout=300)
        shutil.move(partial, path)
    return path


def oci_archive(scratch: Path) -> Path:
    """lpm's image for this checkout as an OCI archive: from the cache, or built in a sandbox under
    ``scratch`` (minutes, once per change of the context)."""
    path = cache_path()
    if path.exists():
        return path
    with Sandbox(rootfs(), scratch) as box:
        return save(box, build(box))
