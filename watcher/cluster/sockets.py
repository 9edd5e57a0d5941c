"""Which established TCP connections a checkpoint holds, read as it is ingested: a warning before it hurts.

A restored process keeps its sockets, but not its TCP peers: the connection a client had to the source
pod is closed or broken by the restore (the lab's CRIU is set to close them, ``tcp-close``; a peer that kept
talking to the old address sees it vanish either way). The source's agent reads the checkpoint's CRIU images
with ``lpm inspect``'s reader while the ingest streams the archive past (``stage_archive``'s ``also``: no
second pass, nothing held but the small images), so the migration's status and a Warning Event on the pod say
so when the checkpoint is complete, before the destination restores it.

Reading is best effort: an archive the reader does not understand (a runtime's layout it has not met, an
image over its caps) loses the warning, never the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

from watcher.inspect.model import TcpConnection, established_tcp
from watcher.inspect.reader import Collector

SHOWN = 5
"""Connections named in a warning; the rest are counted."""


class Sockets:
    """Fed an archive's raw bytes in order; then ``connections``."""

    def __init__(self, where: str) -> None:
        self._collector = Collector(where)
        self._size = 0
        self.failed: str | None = None
        """Why the archive could not be read for its sockets (None: it could)."""

    def feed(self, chunk: memoryview) -> None:
        if self.failed is not None:
            return
        self._size += len(chunk)
        try:
            self._collector.feed(chunk)
        except Exception as err:  # noqa: BLE001  (best effort: the ingest's own scanner judges the archive)
            self.failed = f"{type(err).__name__}: {err}"

    def connections(self) -> tuple[TcpConnection, ...] | str:
        """The established TCP connections, or why they could not be read."""
        if self.failed is None:
            try:
                return tuple(established_tcp(self._collector.finish(self._size)))
            except Exception as err:  # noqa: BLE001  (as above)
                self.failed = f"{type(err).__name__}: {err}"
        return self.failed


def warning(found: Mapping[str, tuple[TcpConnection, ...] | str]) -> str | None:
    """The warning for a checkpoint whose containers hold ``found`` (pure; a str: why a container's could not
    be read); None when none holds any."""
    held = {container: list(connections) for container, connections in found.items()
            if connections and not isinstance(connections, str)}
    total = sum(len(connections) for connections in held.values())
    if not total:
        return None
    named = [f"{container}: {connection}" for container, connections in sorted(held.items())
             for connection in connections][:SHOWN]
    more = f" and {total - SHOWN} more" if total > SHOWN else ""
    return (f"the checkpoint holds {total} established TCP connection{'s' if total > 1 else ''} "
            f"({'; '.join(named)}{more}): a restore closes or breaks them, so their peers must reconnect")
