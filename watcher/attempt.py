"""One ingest attempt of a standalone agent, its failure told as the directory watch's ``Outcome``.

Both standalone agents (a directory store, ``watcher.agent``; a bucket, ``watcher.agent_s3``) watch the
kubelet's directory the same way, so an ingest that failed means the same to the watch whatever the store:
an archive still being written is waited for, a malformed one is refused for good, anything else is the
store's trouble and retried with backoff. Cluster mode adds the same hooks around either agent's ingests
(``IngestHooks``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol, TypeVar

from watcher.errors import ArchiveChanged, ArchiveError, ArchiveIncomplete, Cancelled, LpmError
from watcher.ingest.service import IngestResult
from watcher.observe import AgentMetrics, Operation
from watcher.store.catalog import Checkpoint
from watcher.stores import Where
from watcher.watch.stability import Outcome

log = logging.getLogger("lpm.agent")

T = TypeVar("T")


async def attempt(ingest: Awaitable[T], fields: dict[str, object], metrics: AgentMetrics) -> T | Outcome:
    """What ``ingest`` returned, or the outcome its failure means (logged, and counted where it failed)."""
    try:
        return await ingest
    except Cancelled:
        return Outcome.STORE_TROUBLE
    except (ArchiveIncomplete, ArchiveChanged) as err:
        log.info("archive not finished yet; waiting for its writer", extra={"fields": {**fields, "reason": str(err)}})
        return Outcome.INCOMPLETE
    except ArchiveError as err:
        log.error("archive refused", extra={"fields": {**fields, "reason": str(err)}})
        metrics.failed(Operation.INGEST, err)
        return Outcome.REFUSED
    except LpmError as err:
        log.error("ingest failed", extra={"fields": {**fields, "reason": str(err)}})
        metrics.failed(Operation.INGEST, err)
        return Outcome.STORE_TROUBLE


class IngestHooks(Protocol):
    """What cluster mode adds around the directory's ingests."""

    def before(self, path: Path) -> Outcome | None:
        """An outcome to report without ingesting (the archive is the agent's own request), or None."""

    async def after(self, path: Path, result: IngestResult, store: Where) -> None:
        """Announce an ingested archive nobody requested."""

    async def moved(self, checkpoint: Checkpoint) -> None:
        """Point the API at a checkpoint's shared copy, before its local copy is removed."""
