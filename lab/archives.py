"""Real kubelet-style checkpoint archives for tests and benchmarks.

The layout is CRI-O's (and podman's): ``checkpoint/`` with CRIU images, ``config.dump``,
``spec.dump``, ``rootfs-diff.tar``, ``network.status``, ``stats-dump``. Archives are real
tar files written with ``tarfile`` in PAX format, as Go's archive/tar writes them. The memory
image mixes what CRIU dumps hold: zero pages, program text, heap, some random bytes.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PAGE = 4096


@dataclass(frozen=True)
class Pod:
    uid: str = "6f1c2a4e-1b7d-4c1e-9a51-3e2d9c0b7a10"
    namespace: str = "shop-prod"
    name: str = "cart-7d9f8-x2x4z"
    container: str = "cart-api"


def archive_name(pod: Pod, when: str = "2026-11-25T10:11:12Z") -> str:
    return f"checkpoint-{pod.name}_{pod.namespace}-{pod.container}-{when}.tar"


def crio_spec(pod: Pod) -> dict:
    labels = {
        "io.kubernetes.pod.uid": pod.uid,
        "io.kubernetes.pod.name": pod.name,
        "io.kubernetes.pod.namespace": pod.namespace,
        "io.kubernetes.container.name": pod.container,
    }
    return {"ociVersion": "1.0.2", "process": {"args": ["/app"]},
            "annotations": {"io.kubernetes.cri-o.Labels": json.dumps(labels),
                            "io.kubernetes.cri-o.ContainerType": "container"}}


def containerd_spec(pod: Pod) -> dict:
    return {"ociVersion": "1.1.0", "annotations": {
        "io.kubernetes.cri.sandbox-uid": pod.uid,
        "io.kubernetes.cri.sandbox-name": pod.name,
        "io.kubernetes.cri.sandbox-namespace": pod.namespace,
        "io.kubernetes.cri.container-name": pod.container,
    }}


def _text_pool() -> bytes:
    """Real program text: the pages of the running Python binary."""
    with open(os.path.realpath(sys.executable), "rb") as binary:
        pool = binary.read(8 << 20)
    return pool[: len(pool) - len(pool) % PAGE] or bytes(range(256)) * 16


_HEAP_ALPHABET = bytes.maketrans(bytes(range(256)), bytes(i % 16 for i in range(256)))


class MemoryImage(io.RawIOBase):
    """A CRIU-like pages image of ``size`` bytes, generated block by block (never held whole).

    Each 1 MiB block: 40% zero pages, 25% program text pages (from a real binary), 20% heap
    (low-entropy words), 15% random bytes (keys, compressed data). Every block differs, so
    zstd cannot cheat with long-range matches; level 1 gives the ~3x real dumps show.
    """

    _TEXT = b""

    def __init__(self, size: int, seed: int = 7) -> None:
        self._left = size
        self._rng = random.Random(seed)
        if not MemoryImage._TEXT:
            MemoryImage._TEXT = _text_pool()
        self._block = b""

    def _next_block(self) -> bytes:
        pages = (1 << 20) // PAGE
        text_pages = len(self._TEXT) // PAGE
        parts = [bytes(PAGE * 102)]
        for _ in range(64):
            start = self._rng.randrange(text_pages) * PAGE
            parts.append(self._TEXT[start : start + PAGE])
        parts.append(os.urandom(PAGE * 52).translate(_HEAP_ALPHABET))
        parts.append(os.urandom(PAGE * (pages - 102 - 64 - 52)))
        return b"".join(parts)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        want = min(len(buffer), self._left)
        done = 0
        while done < want:
            if not self._block:
                self._block = self._next_block()
            take = min(want - done, len(self._block))
            buffer[done : done + take] = self._block[:take]
            self._block = self._block[take:]
            done += take
        self._left -= done
        return done


@dataclass
class ArchiveSpec:
    pod: Pod = field(default_factory=Pod)
    memory: int = 256 * 1024
    spec: dict | bytes | None = None  # None: the runtime's spec for ``pod``; bytes: written as is
    omit_spec: bool = False  # no spec.dump at all, as in a hand-made or damaged archive
    extra: dict[str, bytes] = field(default_factory=dict)
    runtime: str = "crio"
    # config.dump as the runtime writes it; podman's also has "runtime" (its OCI runtime, e.g. crun)
    config: dict = field(default_factory=lambda: {"id": "0123abcd", "rootfsImageName": "app:1"})

    def spec_bytes(self) -> bytes | None:
        if self.omit_spec:
            return None
        if isinstance(self.spec, bytes):
            return self.spec
        spec = self.spec if self.spec is not None else (
            containerd_spec(self.pod) if self.runtime == "containerd" else crio_spec(self.pod))
        return json.dumps(spec).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes | io.RawIOBase, size: int | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o600
    info.mtime = 1764065472
    if isinstance(data, bytes):
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        assert size is not None
        info.size = size
        tar.addfile(info, io.BufferedReader(data, 1 << 20))


def _dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o700
    tar.addfile(info)


def write_archive(fileobj, spec: ArchiveSpec) -> None:  # type: ignore[no-untyped-def]
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _dir(tar, "checkpoint")
        _add(tar, "checkpoint/inventory.img", b"\x01" * 64)
        _add(tar, "checkpoint/pagemap-1.img", os.urandom(512))
        _add(tar, "checkpoint/pages-1.img", MemoryImage(spec.memory), spec.memory)
        _add(tar, "config.dump", json.dumps(spec.config).encode())
        spec_bytes = spec.spec_bytes()
        if spec_bytes is not None:
            _add(tar, "spec.dump", spec_bytes)
        _add(tar, "rootfs-diff.tar", bytes(10240))
        _add(tar, "network.status", b"[]")
        _add(tar, "stats-dump", b"\x00" * 32)
        if spec.runtime == "containerd":
            _add(tar, "status", b"{}")
        for name, data in spec.extra.items():
            _add(tar, name, data)


def archive_bytes(spec: ArchiveSpec | None = None) -> bytes:
    buffer = io.BytesIO()
    write_archive(buffer, spec or ArchiveSpec())
    return buffer.getvalue()


def make_archive(directory: Path, spec: ArchiveSpec | None = None, name: str | None = None) -> Path:
    spec = spec or ArchiveSpec()
    path = directory / (name or archive_name(spec.pod))
    with open(path, "wb") as out:
        write_archive(out, spec)
    os.chmod(path, 0o600)
    return path


def write_in_place(path: Path, data: bytes, pieces: int = 8, pause: float = 0.25) -> None:
    """Write ``data`` the way CRI-O and containerd do: create, then grow in place, no rename."""
    with open(path, "wb", buffering=0) as out:
        os.fchmod(out.fileno(), 0o600)
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            out.write(data[start : start + step])
            time.sleep(pause)


def iter_chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
