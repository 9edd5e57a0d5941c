"""Reading a checkpoint archive as it streams past, once, without holding it: the push half of ``lpm inspect``.

Fed the archive's bytes (a kubelet/podman tar, or a stored dump as it decompresses), ``Collector`` lets
``TarScanner`` check the tar and hands each member to a sink: the small CRIU images and the runtime's JSON
files are kept (each capped, and all of them together), the memory pages (``pages-*.img``) are counted and
dropped but for the few bytes asked for (command lines; environments and memory only when the caller asked),
and ``rootfs-diff.tar`` is scanned as a tar of its own for the names it changes. ``finish`` then decodes
the CRIU images with CRIU's definitions (``watcher.inspect.criu``) and builds the ``Inspection``.

Command lines live in the processes' memory. They are read from ``pages-N.img`` while it streams past,
at offsets worked out from ``mm-PID.img`` and ``pagemap-PID.img``, which the runtimes' archives carry
before the pages (the images are written in name order: ``mm-``, ``pagemap-``, ``pages-``); an archive in
another order gets no command lines, and says so in its notes.

No I/O here: ``watcher.inspect.sources`` opens archives and stored dumps and feeds this.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from watcher.archive.tarscan import Member, MemberSink, TarScanner
from watcher.errors import ArchiveError
from watcher.inspect import criu
from watcher.inspect.model import (
    PAGE_SIZE,
    TASK_STATES,
    TCP_STATES,
    ChangedFile,
    DumpStatistics,
    Inspection,
    Memory,
    MemoryRegion,
    Mount,
    OpenFile,
    Process,
    RootfsDiff,
    Socket,
    family_name,
    protocol_name,
    sock_type_name,
)

# One image or JSON file: CRIU's largest small images (files.img, a big process's mm) are hundreds of KiB.
MEMBER_CAP = 16 << 20
# Everything kept at once, whatever the archive: bounds what a hostile archive can make lpm hold.
TOTAL_CAP = 64 << 20
# A command line or environment read from memory (Linux's ARG_MAX is 2 MiB for both together).
ARGS_CAP = 2 << 20

_PER_PID = re.compile(r"^checkpoint/(core|mm|pagemap|ids|fs|fdinfo)-([0-9]{1,10})\.img$")
_SINGLE = frozenset({"checkpoint/inventory.img", "checkpoint/pstree.img", "checkpoint/files.img"})
_PAGES = re.compile(r"^checkpoint/pages-([0-9]{1,10})\.img$")
_METADATA = frozenset({"config.dump", "spec.dump", "stats-dump", "network.status", "status", "deleted.files"})
ROOTFS_DIFF = "rootfs-diff.tar"
_GZIP_MAGIC = b"\x1f\x8b"

# pagemap entry flags (criu/include/pagemap.h): pages in a parent image, or present in this one.
_PE_PARENT = 1 << 0
_PE_PRESENT = 1 << 2

_CRIU_VERSION_ANNOTATION = "org.criu.checkpoint.criu.version"


@dataclass(frozen=True)
class Options:
    environment: bool = False
    """Read the processes' environments (they hold secrets): ``--env``."""
    memory_pid: int | None = None
    """Read this process's memory contents (secrets too): ``--memory PID``."""
    memory_limit: int = 1 << 20
    """At most this many bytes of it."""


class _Budget:
    def __init__(self, where: str) -> None:
        self.left = TOTAL_CAP
        self.where = where

    def take(self, name: str, count: int) -> None:
        if count > self.left:
            raise ArchiveError(f"archive {self.where}: the small images and metadata exceed {TOTAL_CAP} bytes "
                               f"together (at {name}); refused")
        self.left -= count


class _Keep:
    """A member kept whole (capped)."""

    def __init__(self, name: str, size: int, budget: _Budget, done: Callable[[str, bytes], None]) -> None:
        if size > MEMBER_CAP:
            raise ArchiveError(f"archive {budget.where}: {name} is {size} bytes, over the {MEMBER_CAP} cap")
        budget.take(name, size)
        self._name = name
        self._data = bytearray()
        self._done = done

    def feed(self, chunk: memoryview) -> None:
        self._data += chunk

    def close(self) -> None:
        self._done(self._name, bytes(self._data))


@dataclass
class _Want:
    start: int
    """Offset in the pages image."""
    end: int
    into: bytearray
    at: int
    """Where the first byte goes in ``into``."""


class _Pages:
    """A pages image streaming past: only the byte ranges wanted are copied."""

    def __init__(self, wants: list[_Want]) -> None:
        self._wants = wants
        self._offset = 0

    def feed(self, chunk: memoryview) -> None:
        start, end = self._offset, self._offset + len(chunk)
        for want in self._wants:
            low, high = max(start, want.start), min(end, want.end)
            if low < high:
                target = want.at + (low - want.start)
                want.into[target : target + high - low] = chunk[low - start : high - start]
        self._offset = end

    def close(self) -> None:
        pass


class _Nested:
    """``rootfs-diff.tar``: a tar inside the tar, scanned as it streams (names and sizes, no contents).

    containerd writes it gzip-compressed (its name notwithstanding): that is read through gzip. One that
    cannot be read says so in the notes (``done`` is given the reason) instead of failing the inspection:
    the diff is a side matter beside the processes, and the runtimes' formats for it differ."""

    def __init__(self, where: str, done: Callable[[list[Member] | str], None]) -> None:
        self._scanner = TarScanner(frozenset(), f"{ROOTFS_DIFF} in {where}", keep_members=True)
        self._done = done
        self._gunzip: Any = None
        self._started = False
        self._failed: str | None = None

    def feed(self, chunk: memoryview) -> None:
        if self._failed is not None:
            return
        try:
            if not self._started:
                self._started = True
                if bytes(chunk[:2]) == _GZIP_MAGIC:
                    self._gunzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            self._scanner.feed(chunk if self._gunzip is None else self._gunzip.decompress(chunk))
        except (ArchiveError, zlib.error) as err:
            self._failed = str(err)

    def close(self) -> None:
        if self._failed is None:
            try:
                self._done(self._scanner.finish().members)
                return
            except ArchiveError as err:
                self._failed = str(err)
        self._done(self._failed)


class _Count:
    def feed(self, chunk: memoryview) -> None:
        pass

    def close(self) -> None:
        pass


_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"1": "hardlink", b"2": "symlink", b"3": "device",
          b"4": "device", b"5": "directory", b"6": "fifo"}


class Collector:
    """Feed the archive with ``feed``; ``finish`` at its end gives the ``Inspection``."""

    def __init__(self, where: str, options: Options | None = None) -> None:
        self.where = where
        self.options = options or Options()
        self._budget = _Budget(where)
        self._scanner = TarScanner(frozenset(), where, tap=self._tap)
        self._kept: dict[str, bytes] = {}
        self._seen: set[str] = set()
        self._pages_sizes: dict[int, int] = {}
        self._rootfs: tuple[int, list[Member]] | None = None
        self._rootfs_unread: str | None = None
        """Why ``rootfs-diff.tar`` could not be read as a tar (None: it could, or there is none)."""
        self._rootfs_size = 0
        # Bytes read out of memory: (pid, "args" | "env") -> buffer; and --memory's regions.
        self._from_memory: dict[tuple[int, str], bytearray] = {}
        self._regions: list[tuple[int, int, bytearray]] = []

    def feed(self, chunk: bytes | memoryview) -> None:
        self._scanner.feed(chunk)

    def _tap(self, member: Member) -> MemberSink | None:
        name = member.name
        if member.kind not in (b"0", b"\0", b"7"):
            return None
        if name in self._seen:
            raise ArchiveError(f"archive {self.where}: {name} appears twice")
        self._seen.add(name)
        if name in _METADATA or name in _SINGLE or _PER_PID.match(name):
            return _Keep(name, member.size, self._budget, self._kept.__setitem__)
        if pages := _PAGES.match(name):
            pages_id = int(pages.group(1))
            self._pages_sizes[pages_id] = member.size
            wants = self._plan(pages_id)
            return _Pages(wants) if wants else _Count()
        if name == ROOTFS_DIFF:
            self._rootfs_size = member.size
            return _Nested(self.where, self._rootfs_done)
        return None

    def _rootfs_done(self, members: list[Member] | str) -> None:
        if isinstance(members, str):
            self._rootfs_unread = members
            members = []
        self._rootfs = (self._rootfs_size, members)

    def _plan(self, pages_id: int) -> list[_Want]:
        """What to copy out of ``pages-<pages_id>.img``, from the pagemaps and mms seen so far."""
        wants: list[_Want] = []
        for name, data in list(self._kept.items()):
            match = _PER_PID.match(name)
            if not match or match.group(1) != "pagemap":
                continue
            pid = int(match.group(2))
            head, *entries = _decode_pagemap(f"archive {self.where}: {name}", data)
            if head.pages_id != pages_id:
                continue
            runs = list(_present_runs(entries))
            mm_data = self._kept.get(f"checkpoint/mm-{pid}.img")
            if mm_data is None:
                continue
            mm = _decode_one(f"archive {self.where}: checkpoint/mm-{pid}.img", mm_data, "MM",
                             criu.message("mm", "mm_entry"))
            ranges = [("args", mm.mm_arg_start, mm.mm_arg_end)]
            if self.options.environment:
                ranges.append(("env", mm.mm_env_start, mm.mm_env_end))
            for key, start, end in ranges:
                if not start < end or end - start > ARGS_CAP:
                    continue
                into = bytearray(end - start)  # pages never dumped read as zeros, as the kernel would give
                self._from_memory[(pid, key)] = into
                wants += _wants_for(runs, start, end, into)
            if self.options.memory_pid == pid:
                left = self.options.memory_limit
                for vaddr, file_offset, pages in runs:
                    if left <= 0:
                        break
                    size = min(pages * PAGE_SIZE, left)
                    into = bytearray(size)
                    self._regions.append((pid, vaddr, into))
                    wants.append(_Want(file_offset, file_offset + size, into, 0))
                    left -= size
        return wants

    def finish(self, archive_size: int) -> Inspection:
        self._scanner.finish()
        return _assemble(self, archive_size)


def _decode_one(where: str, data: bytes, kind: str, cls: Any) -> Any:
    messages = criu.decode(where, data, kind, cls)
    if not messages:
        raise criu.ImageDecodeError(f"{where}: holds no entry")
    return messages[0]


def _decode_pagemap(where: str, data: bytes) -> list[Any]:
    messages = criu.decode(where, data, "PAGEMAP", criu.message("pagemap", "pagemap_entry"),
                           criu.message("pagemap", "pagemap_head"))
    if not messages:
        raise criu.ImageDecodeError(f"{where}: holds no pagemap head")
    return messages


def _present_runs(entries: list[Any]) -> list[tuple[int, int, int]]:
    """(vaddr, offset in the pages image, pages) of each run of pages the pages image holds, in its order."""
    runs = []
    offset = 0
    for entry in entries:
        pages = entry.nr_pages if entry.HasField("nr_pages") else entry.compat_nr_pages
        in_parent = entry.in_parent or (entry.HasField("flags") and entry.flags & _PE_PARENT)
        present = not entry.HasField("flags") or entry.flags & _PE_PRESENT
        if in_parent or not present:
            continue
        runs.append((entry.vaddr, offset, pages))
        offset += pages * PAGE_SIZE
    return runs


def _wants_for(runs: list[tuple[int, int, int]], start: int, end: int, into: bytearray) -> list[_Want]:
    wants = []
    for vaddr, file_offset, pages in runs:
        low, high = max(start, vaddr), min(end, vaddr + pages * PAGE_SIZE)
        if low < high:
            wants.append(_Want(file_offset + (low - vaddr), file_offset + (high - vaddr), into, low - start))
    return wants


def _json(collector: Collector, name: str) -> Any:
    data = collector._kept.get(name)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise ArchiveError(f"archive {collector.where}: {name} is not JSON ({err})") from None


def _image(collector: Collector, name: str, kind: str, proto: str, message: str) -> list[Any]:
    data = collector._kept.get(f"checkpoint/{name}")
    if data is None:
        raise ArchiveError(f"archive {collector.where}: checkpoint/{name} is missing")
    return criu.decode(f"archive {collector.where}: checkpoint/{name}", data, kind, criu.message(proto, message))


def _first(collector: Collector, name: str, kind: str, proto: str, message: str) -> Any:
    entries = _image(collector, name, kind, proto, message)
    if not entries:
        raise criu.ImageDecodeError(f"archive {collector.where}: checkpoint/{name} holds no entry")
    return entries[0]


def _ip(words: Any) -> str:
    raw = b"".join(struct.pack("<I", word) for word in words)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


def _args(raw: bytearray | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    parts = bytes(raw).split(b"\0")
    while parts and parts[-1] == b"":
        parts.pop()
    return tuple(part.decode("utf-8", "backslashreplace") for part in parts)


def _file_path(files: dict[int, Any], file_id: int, file_type: str) -> str:
    """The name checkpointctl (go-criu's crit) gives a file: a path, ``pipe[N]``, ``unix[ino (peer) name]``."""
    entry = files.get(file_id)
    if file_type == "REG":
        return str(entry.reg.name) if entry is not None and entry.HasField("reg") else "unknown"
    if file_type == "PIPE":
        return f"pipe[{entry.pipe.pipe_id}]" if entry is not None and entry.HasField("pipe") else "pipe[?]"
    if file_type == "UNIXSK":
        if entry is None or not entry.HasField("usk"):
            return "unix[?]"
        usk = entry.usk
        return f"unix[{usk.ino} ({usk.peer}) {usk.name.decode('utf-8', 'backslashreplace')}]"
    return f"{file_type}.{file_id}"


def _socket(pid: int, fd: int, kind: str, entry: Any) -> Socket | None:
    if kind == "INETSK" and entry is not None and entry.HasField("isk"):
        isk = entry.isk
        return Socket(pid, fd, kind, family_name(isk.family), sock_type_name(isk.type), protocol_name(isk.proto),
                      TCP_STATES.get(isk.state, str(isk.state)), _ip(isk.src_addr), isk.src_port,
                      _ip(isk.dst_addr), isk.dst_port, isk.ino)
    if kind == "UNIXSK" and entry is not None and entry.HasField("usk"):
        usk = entry.usk
        return Socket(pid, fd, kind, "UNIX", sock_type_name(usk.type), "", TCP_STATES.get(usk.state, str(usk.state)),
                      usk.name.decode("utf-8", "backslashreplace"), 0, "", 0, usk.ino)
    if kind == "PACKETSK" and entry is not None and entry.HasField("psk"):
        return Socket(pid, fd, kind, "PACKET", sock_type_name(entry.psk.type), protocol_name(entry.psk.protocol), "")
    if kind == "NETLINKSK" and entry is not None and entry.HasField("nlsk"):
        nlsk = entry.nlsk
        return Socket(pid, fd, kind, "NETLINK", "", str(nlsk.protocol), TCP_STATES.get(nlsk.state, str(nlsk.state)))
    return None


def _assemble(collector: Collector, archive_size: int) -> Inspection:
    where = collector.where
    kept = collector._kept
    notes: list[str] = []
    if "checkpoint/pstree.img" not in kept:
        raise ArchiveError(f"archive {where}: not a container checkpoint: no checkpoint/pstree.img "
                           f"(members seen: {len(collector._seen)})")
    config = _json(collector, "config.dump") or {}
    spec = _json(collector, "spec.dump") or {}
    if not isinstance(config, dict) or not isinstance(spec, dict):
        raise ArchiveError(f"archive {where}: config.dump and spec.dump must be JSON objects")
    annotations = spec.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}

    inventory = _first(collector, "inventory.img", "INVENTORY", "inventory", "inventory_entry")
    tree = _image(collector, "pstree.img", "PSTREE", "pstree", "pstree_entry")
    files: dict[int, Any] = {}
    if "checkpoint/files.img" in kept:
        for entry in _image(collector, "files.img", "FILES", "fdinfo", "file_entry"):
            files[entry.id] = entry

    processes: list[Process] = []
    open_files: list[OpenFile] = []
    sockets: list[Socket] = []
    file_type_names = criu.module("fdinfo").fd_types
    for task in tree:
        pid = task.pid
        core = _first(collector, f"core-{pid}.img", "CORE", "criu_core", "core_entry")
        state = TASK_STATES.get(core.tc.task_state, "Unknown")
        memory = None
        if state in ("Alive", "Stopped"):
            mm = _first(collector, f"mm-{pid}.img", "MM", "mm", "mm_entry")
            _, *entries = _decode_pagemap(f"archive {where}: checkpoint/pagemap-{pid}.img",
                                          _require(collector, f"pagemap-{pid}.img"))
            pages = sum(run[2] for run in _present_runs(entries))
            memory = Memory(pages, len(mm.vmas), sum(vma.end - vma.start for vma in mm.vmas))
            ids = _first(collector, f"ids-{pid}.img", "IDS", "criu_core", "task_kobj_ids_entry")
            for fdinfo in _image(collector, f"fdinfo-{ids.files_id}.img", "FDINFO", "fdinfo", "fdinfo_entry"):
                kind = file_type_names.Name(fdinfo.type)
                open_files.append(OpenFile(pid, str(fdinfo.fd), kind, _file_path(files, fdinfo.id, kind)))
                found = _socket(pid, fdinfo.fd, kind, files.get(fdinfo.id))
                if found is not None:
                    sockets.append(found)
            fs = _first(collector, f"fs-{pid}.img", "FS", "fs", "fs_entry")
            open_files.append(OpenFile(pid, "cwd", "", _file_path(files, fs.cwd_id, "REG")))
            open_files.append(OpenFile(pid, "root", "", _file_path(files, fs.root_id, "REG")))
        arguments = _args(collector._from_memory.get((pid, "args")))
        if arguments is None and state in ("Alive", "Stopped"):
            notes.append(f"pid {pid}: command line not read (its pages came before its mm and pagemap images, "
                         "or are missing)")
        environment = _args(collector._from_memory.get((pid, "env"))) if collector.options.environment else None
        processes.append(Process(pid, task.ppid, task.pgid, task.sid, core.tc.comm, state, arguments, memory,
                                 environment))

    wanted = collector.options.memory_pid
    if wanted is not None and not any(pid == wanted for pid, _, _ in collector._regions):
        notes.append(f"pid {wanted}: no memory read for --memory (no such process, or no pages of it dumped)")

    mounts = []
    for mount in spec.get("mounts") or []:
        if isinstance(mount, dict):
            mounts.append(Mount(str(mount.get("destination", "")), str(mount.get("type", "")),
                                str(mount.get("source", ""))))

    rootfs = None
    if collector._rootfs_unread is not None:
        notes.append(f"{ROOTFS_DIFF}: its files not listed: {collector._rootfs_unread}")
    if collector._rootfs is not None:
        size, members = collector._rootfs
        deleted = _json(collector, "deleted.files") or []
        rootfs = RootfsDiff(size, tuple(ChangedFile(m.name, _KINDS.get(m.kind, "other"), m.size) for m in members),
                            tuple(str(path) for path in deleted) if isinstance(deleted, list) else ())

    statistics = None
    if "stats-dump" in kept:
        stats = _decode_one(f"archive {where}: stats-dump", kept["stats-dump"], "STATS",
                            criu.message("stats", "stats_entry"))
        if stats.HasField("dump"):
            dump = stats.dump
            statistics = DumpStatistics(dump.freezing_time, dump.frozen_time, dump.memdump_time, dump.memwrite_time,
                                        dump.pages_scanned, dump.pages_written)

    engine = _engine(annotations, kept)
    container = str(config.get("name") or annotations.get("io.kubernetes.container.name")
                    or annotations.get("io.kubernetes.cri.container-name") or "")
    return Inspection(
        source=where, runtime=str(config.get("runtime") or ""), engine=engine, container=container,
        container_id=str(config.get("id") or ""), image=str(config.get("rootfsImageName") or ""),
        created=str(config.get("createdTime") or ""), checkpointed=str(config.get("checkpointedTime") or ""),
        criu_version=str(annotations.get(_CRIU_VERSION_ANNOTATION) or config.get(_CRIU_VERSION_ANNOTATION) or ""),
        criu_image_version=inventory.img_version, archive_size=archive_size,
        memory_pages_size=sum(collector._pages_sizes.values()), processes=tuple(processes),
        files=tuple(open_files), sockets=tuple(sockets), mounts=tuple(mounts), rootfs_diff=rootfs,
        statistics=statistics, notes=tuple(notes),
        memory=tuple(MemoryRegion(pid, address, bytes(data)) for pid, address, data in collector._regions),
    )


def _require(collector: Collector, name: str) -> bytes:
    data = collector._kept.get(f"checkpoint/{name}")
    if data is None:
        raise ArchiveError(f"archive {collector.where}: checkpoint/{name} is missing")
    return data


def _engine(annotations: dict[str, Any], kept: dict[str, bytes]) -> str:
    if annotations.get("io.container.manager") == "libpod":
        return "Podman"
    if any(key.startswith("io.kubernetes.cri-o.") for key in annotations):
        return "CRI-O"
    if "status" in kept or any(key.startswith("io.kubernetes.cri.") for key in annotations):
        return "containerd"
    return ""
