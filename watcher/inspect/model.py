"""What ``lpm inspect`` finds in a checkpoint: typed, frozen, free of I/O.

The reader (``watcher.inspect.reader``) builds an ``Inspection``; the renderers
(``watcher.inspect.render``) print it; the agent asks ``established_tcp`` before a restore.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

PAGE_SIZE = 4096
"""Bytes per page of CRIU's pages images. CRIU writes whole pages and records no page size; lpm's nodes
are x86_64 (and arm64 with 4 KiB pages, the Kubernetes default), as checkpointctl assumes the host's."""

# Linux's TCP states (include/net/tcp_states.h), the ``state`` CRIU records for inet sockets.
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
ESTABLISHED = "ESTABLISHED"

# CRIU records task states as its own numbers (criu/include/pstree.h: TASK_ALIVE ...).
TASK_STATES = {1: "Alive", 2: "Dead", 3: "Stopped", 6: "Zombie"}


def family_name(family: int) -> str:
    names: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6", socket.AF_UNIX: "UNIX",
             socket.AF_NETLINK: "NETLINK", socket.AF_PACKET: "PACKET"}
    return names.get(family, str(family))


def sock_type_name(kind: int) -> str:
    names: dict[int, str] = {socket.SOCK_STREAM: "STREAM", socket.SOCK_DGRAM: "DGRAM",
                             socket.SOCK_SEQPACKET: "SEQPACKET", socket.SOCK_RAW: "RAW", socket.SOCK_RDM: "RDM"}
    return names.get(kind, str(kind))


def protocol_name(proto: int) -> str:
    names: dict[int, str] = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP", socket.IPPROTO_ICMP: "ICMP",
             socket.IPPROTO_ICMPV6: "ICMPV6", socket.IPPROTO_RAW: "RAW", 136: "UDPLITE"}
    return names.get(proto, str(proto))


@dataclass(frozen=True)
class Memory:
    """A process's memory as CRIU dumped it."""

    pages: int
    """Pages written to the pages image (``pagemap-PID.img``'s entries that are present, not in a parent)."""
    vmas: int
    """Mappings in ``mm-PID.img``."""
    virtual_bytes: int
    """The mappings' total size: what the process had mapped, dumped or not."""

    @property
    def bytes(self) -> int:
        return self.pages * PAGE_SIZE


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    pgid: int
    sid: int
    command: str
    """The kernel's ``comm`` (at most 15 characters), from ``core-PID.img``."""
    state: str
    arguments: tuple[str, ...] | None
    """The command line, read from the process's memory (``mm_arg_start``..``mm_arg_end``); None when its
    pages were not in the archive, or came before the images that locate them."""
    memory: Memory | None
    environment: tuple[str, ...] | None = None
    """Only when asked for (``--env``): environment variables hold secrets."""


@dataclass(frozen=True)
class OpenFile:
    pid: int
    fd: str
    """The descriptor number, or ``cwd`` / ``root``."""
    type: str
    """CRIU's file type (``REG``, ``PIPE``, ``INETSK``, ``UNIXSK``, ...); empty for cwd and root."""
    path: str


@dataclass(frozen=True)
class Socket:
    pid: int
    fd: int
    kind: str
    """CRIU's file type: INETSK, UNIXSK, PACKETSK, NETLINKSK."""
    family: str
    type: str
    protocol: str
    state: str
    source: str = ""
    source_port: int = 0
    destination: str = ""
    destination_port: int = 0
    inode: int = 0

    @property
    def established_tcp(self) -> bool:
        """A TCP connection with a peer: a restore elsewhere cannot keep it (the peer sees the old one end)."""
        return self.kind == "INETSK" and self.protocol == "TCP" and self.state == ESTABLISHED


@dataclass(frozen=True)
class TcpConnection:
    """An established TCP connection in a checkpoint: closed or broken once the checkpoint is restored."""

    pid: int
    fd: int
    family: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int

    def __str__(self) -> str:
        return (f"pid {self.pid} fd {self.fd}: {_endpoint(self.local_address, self.local_port)} -> "
                f"{_endpoint(self.remote_address, self.remote_port)}")


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Mount:
    destination: str
    type: str
    source: str


@dataclass(frozen=True)
class ChangedFile:
    path: str
    kind: str
    """``file``, ``directory``, ``symlink``, ``hardlink``, ``device``, ``fifo``."""
    size: int


@dataclass(frozen=True)
class RootfsDiff:
    size: int
    """Bytes of ``rootfs-diff.tar`` in the archive."""
    changed: tuple[ChangedFile, ...]
    deleted: tuple[str, ...]
    """Paths the container deleted from its image (podman's and CRI-O's ``deleted.files``)."""


@dataclass(frozen=True)
class MemoryRegion:
    """Contents of a process's memory (``--memory PID``): a run of dumped pages, possibly cut at the limit."""

    pid: int
    address: int
    data: bytes


@dataclass(frozen=True)
class DumpStatistics:
    """CRIU's own account of the dump (``stats-dump``): times in microseconds, counts in pages."""

    freezing_time: int
    frozen_time: int
    memdump_time: int
    memwrite_time: int
    pages_scanned: int
    pages_written: int


@dataclass(frozen=True)
class Inspection:
    source: str
    runtime: str
    """The OCI runtime that checkpointed it (config.dump's ``runtime``), or empty."""
    engine: str
    """Who wrote the archive: Podman, CRI-O or containerd (told from the files and annotations)."""
    container: str
    container_id: str
    image: str
    created: str
    """When the container was created (config.dump), RFC 3339, or empty."""
    checkpointed: str
    criu_version: str
    """CRIU's version when the archive records it (annotation ``org.criu.checkpoint.criu.version``), else empty."""
    criu_image_version: int | None
    """The CRIU image format version (``inventory.img``)."""
    archive_size: int
    memory_pages_size: int
    """Bytes of every ``pages-*.img``."""
    processes: tuple[Process, ...]
    files: tuple[OpenFile, ...]
    sockets: tuple[Socket, ...]
    mounts: tuple[Mount, ...]
    rootfs_diff: RootfsDiff | None
    statistics: DumpStatistics | None = None
    notes: tuple[str, ...] = ()
    """What could not be read, and why (the rest stands)."""
    memory: tuple[MemoryRegion, ...] = field(default=())
    """Only when asked for (``--memory PID``): memory holds secrets."""


def established_tcp(inspection: Inspection) -> list[TcpConnection]:
    """The established TCP connections in a checkpoint: each is closed or broken by a restore (the restored
    process's peer still talks to the original, or has seen it go). Pure; issue 14 item 3 warns with it."""
    return [TcpConnection(s.pid, s.fd, s.family, s.source, s.source_port, s.destination, s.destination_port)
            for s in inspection.sockets if s.established_tcp]
