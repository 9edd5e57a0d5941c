"""Is an archive on disk finished? A regular file whose size is whole tar blocks and ends in the two zero
blocks that close a tar. Used where lpm waits for a runtime's archive without an answer saying it is done:
a checkpoint call that may have reached the kubelet or the runtime, whose reply never came back."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

_END = 1024  # two 512-byte zero blocks


def finished_shape(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of a finished archive at ``path``; None while it is absent, growing or not a file.

    Opened without following a symlink and without blocking, so nothing planted there can hang the caller."""
    try:
        info = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or info.st_size < _END or info.st_size % 512:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            tail = os.pread(fd, _END, info.st_size - _END)
        finally:
            os.close(fd)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns) if tail == bytes(_END) else None


async def wait_settled(locate: Callable[[], Path | None], settle: float, timeout: float) -> Path | None:
    """The archive ``locate()`` names, once it is finished and has held still (same size and mtime) for
    ``settle`` seconds; None when none has within ``timeout`` seconds. ``locate`` is asked each round: the
    archive may appear, or a newer one take its place, while this waits."""
    deadline = time.monotonic() + timeout
    seen: tuple[int, int] | None = None
    since = time.monotonic()
    while True:
        path = locate()
        shape = finished_shape(path) if path is not None else None
        if shape is None or shape != seen:
            seen, since = shape, time.monotonic()
        elif time.monotonic() - since >= settle:
            return path
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(min(0.25, settle / 4))
