"""Hand-built checkpoint archives (exact bytes, any member) and readers of OCI layouts."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lab.archives import Pod, crio_spec

# config.dump as podman 5 writes it: "runtime" is the OCI runtime that podman checks on restore.
PODMAN_CONFIG = {"id": "0123abcd", "name": "counter", "rootfsImageName": "localhost/counter:1", "runtime": "crun"}


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    target: str = ""
    mode: int = 0o600
    pax: tuple[tuple[str, str], ...] = ()


def dir_(name: str) -> Member:
    return Member(name, kind=tarfile.DIRTYPE, mode=0o700)


def link(name: str, target: str) -> Member:
    return Member(name, kind=tarfile.SYMTYPE, target=target, mode=0o777)


# A CRI-O/podman checkpoint as the runtime lays it out, with what stresses a copier: a pre-dump
# and CRIU's ``parent`` symlink to it, a name past ustar's 100 bytes, a non-ASCII name.
BASE = (
    dir_("checkpoint"),
    Member("checkpoint/inventory.img", b"\x01" * 64),
    Member("checkpoint/pages-1.img", bytes(range(256)) * 64),
    Member("checkpoint/" + "core-" * 24 + "1.img", b"core"),
    Member("checkpoint/fs-données.img", b"fs"),
    link("checkpoint/parent", "../pre-checkpoint"),
    dir_("pre-checkpoint"),
    Member("pre-checkpoint/pages-1.img", bytes(4096)),
    Member("config.dump", json.dumps(PODMAN_CONFIG).encode()),
    Member("spec.dump", json.dumps(crio_spec(Pod())).encode()),
    Member("rootfs-diff.tar", bytes(10240)),
)


def write_tar(path: Path, members: Iterable[Member], *, mtime: int = 0, uid: int = 0, uname: str = "",
              mode_bits: int = 0, fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type, info.linkname, info.mode = member.kind, member.target, member.mode | mode_bits
            info.size = len(member.data) if member.kind == tarfile.REGTYPE else 0
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, uid, uid, uname, uname
            info.pax_headers = dict(member.pax)
            tar.addfile(info, io.BytesIO(member.data) if info.size else None)
    return path


def checkpoint_tar(path: Path, extra: Iterable[Member] = (), drop: Iterable[str] = (), reverse: bool = False,
                   **attributes: int | str) -> Path:
    """BASE without the members named in ``drop`` (and those under them), then ``extra``."""
    dropped = tuple(drop)
    members = [m for m in BASE if not any(m.name == d or m.name.startswith(d + "/") for d in dropped)]
    members += extra
    return write_tar(path, reversed(members) if reverse else members, **attributes)  # type: ignore[arg-type]


def layout_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def read_blob(root: Path, digest: str) -> bytes:
    data = (root / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == digest
    return data
