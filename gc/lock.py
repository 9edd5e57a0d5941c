"""One collector deletes at a time: the lock a pass holds from its scan to its last deletion.

Standalone, it is an exclusive ``flock`` on ``<store>/.gc/lock``, taken without waiting: a
collector that finds it held skips the pass (the holder is doing the work). The kernel drops
the lock when its holder dies, so a crash never wedges the store. On NFS, Linux clients turn
``flock`` into an NFSv4 whole-file lock held by the server, so collectors on different nodes
exclude each other too. In cluster mode the lock is a Lease (``lpm_gc.lease``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from typing import Protocol

from watcher.store import fsio, layout

LOCK_FILE = "lock"


class Lock(Protocol):
    async def acquire(self) -> bool:
        """Take the lock if free; False when another collector holds it."""

    def held(self) -> bool:
        """Still ours? Asked before every deletion (a Lease can be lost mid-pass)."""

    async def release(self) -> None: ...


class FileLock:
    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._fd: int | None = None

    async def acquire(self) -> bool:
        state = fsio.open_dir(self._root_fd, [layout.COLLECTOR_DIR], create=True, where="collector state")
        try:
            with fsio.os_errors(f"collector lock {layout.COLLECTOR_DIR}/{LOCK_FILE}"):
                fd = fsio.open_file(state, LOCK_FILE, os.O_RDWR | os.O_CREAT, f"store {layout.COLLECTOR_DIR}")
        finally:
            os.close(state)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # Who holds it, for a person wondering why their collector skips its passes.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
