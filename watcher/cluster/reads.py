"""What a reconciler's pure ``decide`` is given for an object it has not asked for yet, and the read it asks.

Each reconciler is a pure ``decide`` over what its executor has read so far, and the executor reads only
what ``decide`` asks for next: so an object is read exactly when the old inline code read it (a finished
migration on another node costs no pod GET), and every branch is a row in a table test.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Final

from watcher.errors import NotFound
from watcher.kube.client import Kube


class Unread(Enum):
    UNREAD = "unread"


UNREAD: Final = Unread.UNREAD
"""Not read (yet): distinct from None, which is "read, and there is no such object"."""


async def get_or_none(kube: Kube, path: str) -> dict[str, Any] | None:
    """The object at ``path``; None on a 404 (any other API error propagates, for the worker to retry)."""
    try:
        return await kube.get(path)
    except NotFound:
        return None
