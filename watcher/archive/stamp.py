"""What identifies one version of a kubelet archive file on its node.

The watcher debounces on it, ingest checks the archive did not change while it was read, and
the store's ledger records it; so it lives here, at the bottom, beside the archive's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ArchiveStamp:
    """What identifies one version of a kubelet archive file on its node."""

    name: str
    size: int
    mtime_ns: int


def stamp_of(path: Path) -> ArchiveStamp | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return ArchiveStamp(path.name, info.st_size, info.st_mtime_ns)
