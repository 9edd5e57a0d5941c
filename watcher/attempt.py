"""One ingest attempt of a standalone agent, its failure told as the directory watch's ``Outcome``.

Both standalone agents (a directory store, ``watcher.agent``; a bucket, ``watcher.agent_s3``) watch the
kubelet's directory the same way, so an ingest that failed means the same to the watch whatever the store:
an archive still being written is waited for, a malformed one is refused for good, anything else is the
store's trouble and retried with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

from watcher.errors import ArchiveChanged, ArchiveError, ArchiveIncomplete, Cancelled, LpmError
from watcher.observe import AgentMetrics, Operation
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
