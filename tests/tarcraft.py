"""Tar archives built block by block, for what ``tarfile`` will not write: headers whose name
sources disagree, sizes on directories, prefixes under the wrong magic.

Also the three readers' views of an archive, to compare: lpm's scanner, Python's ``tarfile``
(the restore's layer writer) and Go's ``archive/tar`` (the runtimes), the last through
``tests/fixtures/gotar`` built with the machine's Go toolchain.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from watcher.archive.tarscan import TarScanner, _normalise
from watcher.errors import ArchiveError

BLOCK = 512
USTAR = b"ustar\x0000"
GNU = b"ustar  \x00"
V7 = b""
END = bytes(2 * BLOCK)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def header(name: bytes, kind: bytes, size: int = 0, *, prefix: bytes = b"", magic: bytes = USTAR,
           trailer: bytes = b"", linkname: bytes = b"", mode: int = 0o644) -> bytes:
    """One raw 512-byte header with a valid checksum."""
    block = bytearray(BLOCK)
    block[0 : len(name[:100])] = name[:100]
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(0, 12)
    block[156:157] = kind
    block[157 : 157 + len(linkname[:100])] = linkname[:100]
    block[257 : 257 + len(magic)] = magic
    block[345 : 345 + len(prefix[:155])] = prefix[:155]
    block[508 : 508 + len(trailer)] = trailer
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes, data: bytes = b"", kind: bytes = b"0", size: int | None = None, **fields: object) -> bytes:
    """A member's header and its data; ``size`` may claim other than ``len(data)``."""
    return header(name, kind, len(data) if size is None else size, **fields) + padded(data)  # type: ignore[arg-type]


def pax_body(records: Sequence[tuple[str, str]]) -> bytes:
    body = b""
    for key, value in records:
        text = f" {key}={value}\n".encode("utf-8", "surrogateescape")
        length = len(text) + 1
        while len(str(length).encode()) + len(text) != length:
            length += 1
        body += str(length).encode() + text
    return body


def pax(records: Sequence[tuple[str, str]], kind: bytes = b"x") -> bytes:
    body = pax_body(records)
    return header(b"PaxHeaders/member", kind, len(body)) + padded(body)


def long_name(name: bytes, kind: bytes = b"L") -> bytes:
    data = name + b"\x00"
    return header(b"././@LongLink", kind, len(data), magic=GNU) + padded(data)


# --- the three readers ---------------------------------------------------------------------------------

View = tuple[tuple[str, str, int, str], ...]
"""Each member: normalised name, kind (file, dir, symlink, link or the type byte), data size, data SHA-256."""


def _kind(flag: str, name: str) -> str:
    if flag in ("0", "\x00", "7"):
        return "dir" if flag == "\x00" and name.endswith("/") else "file"
    return {"5": "dir", "2": "symlink", "1": "link"}.get(flag, repr(flag))


def lpm_view(data: bytes) -> View | ArchiveError:
    scanner = TarScanner(frozenset({"spec.dump"}), "crafted.tar", keep_members=True)
    try:
        scanner.feed(data)
        result = scanner.finish()
    except ArchiveError as err:
        return err
    return tuple((m.name, _kind(m.kind.decode("latin-1"), ""), m.size,
                  hashlib.sha256(data[m.offset : m.offset + m.size]).hexdigest()) for m in result.members)


def tarfile_view(path: Path) -> View | str:
    """What ``tarfile`` reads, or why it cannot; a quiet stop before the end blocks is a failure too."""
    out = []
    try:
        with open(path, "rb") as file, tarfile.open(fileobj=file, mode="r:") as tar:
            for info in tar:
                size = info.size if info.isreg() else 0
                file.seek(info.offset_data)
                digest = hashlib.sha256(file.read(size)).hexdigest()
                name = _normalise(info.name)
                if name is None:
                    return f"unsafe name {info.name!r}"
                flag = info.type.decode("latin-1")
                out.append((name, "dir" if info.isdir() else _kind(flag, info.name), size, digest))
            end = tar.offset
            file.seek(end)
            if file.read(2 * BLOCK) != END:
                return f"no end-of-archive blocks at {end}"
    except (tarfile.TarError, ValueError, OSError) as err:
        return f"{type(err).__name__}: {err}"
    return tuple(out)


def go_lister(directory: Path) -> Path:
    """Build tests/fixtures/gotar with the machine's Go toolchain; fail (never skip) without one."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    assert go is not None, "no Go toolchain (PATH, /usr/local/go/bin): scripts/setup --for-live installs one"
    source = Path(__file__).parent / "fixtures" / "gotar" / "main.go"
    binary = directory / "gotar"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "", "CGO_ENABLED": "0"}
    done = subprocess.run([go, "build", "-o", str(binary), str(source)], capture_output=True, text=True,
                          env=env, cwd=directory, timeout=300)
    assert done.returncode == 0, f"go build of {source} failed: {done.stderr}"
    return binary


def go_views(binary: Path, paths: Sequence[Path]) -> dict[Path, View | str]:
    """Go's archive/tar view of each archive (the type-'g' entries it returns are left out: no file)."""
    done = subprocess.run([str(binary), *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    views: dict[Path, View | str] = {}
    for line in done.stdout.splitlines():
        listing = json.loads(line)
        path = Path(listing["path"])
        if "error" in listing:
            views[path] = listing["error"]
            continue
        out = []
        for m in listing["members"]:
            if m["type"] == "g":
                continue
            raw = bytes.fromhex(m["name"]).decode("utf-8", "surrogateescape")
            name = _normalise(raw)
            if name is None:
                views[path] = f"unsafe name {raw!r}"
                break
            out.append((name, _kind(m["type"], raw), m["size"], m["sha256"]))
        else:
            views[path] = tuple(out)
    return views
