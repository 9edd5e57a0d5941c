"""Kubelet checkpoint archive file names.

The kubelet names an archive ``checkpoint-<podName>_<namespace>-<container>-<time>.tar``
where ``<time>`` is Go's ``time.RFC3339`` in the node's local zone (``...T09:10:22Z`` or
``...T10:10:22+01:00``: colons included). Pod names contain ``-`` and ``.`` but never
``_``; namespaces and container names contain ``-``. So the name pins down the pod name
and the time, but ``<namespace>-<container>`` is ambiguous: identity comes from inside the
archive, and the name is only checked against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from watcher.errors import ArchiveError

_NAME = re.compile(
    r"^checkpoint-(?P<pod>[a-z0-9][a-z0-9.-]*)_(?P<rest>[a-z0-9][a-z0-9-]*)-"
    r"(?P<time>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2}))\.tar$"
)
PATTERN_TEXT = "checkpoint-<pod>_<namespace>-<container>-<RFC3339 time>.tar"


@dataclass(frozen=True)
class ArchiveName:
    file_name: str
    pod_name: str
    namespace_and_container: str
    taken_at: datetime

    def matches(self, namespace: str, container: str) -> bool:
        return self.namespace_and_container == f"{namespace}-{container}"


def is_candidate(file_name: str) -> bool:
    """Cheap filter for the directory watcher: could this be a kubelet archive?"""
    return file_name.startswith("checkpoint-") and file_name.endswith(".tar")


def parse(file_name: str) -> ArchiveName:
    match = _NAME.fullmatch(file_name)
    if match is None:
        raise ArchiveError(f"archive {file_name!r}: not a kubelet checkpoint name ({PATTERN_TEXT})")
    text = match.group("time")
    try:
        # fromisoformat accepts at most 6 fractional digits; Go may print up to 9.
        taken_at = datetime.fromisoformat(
            re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
        )
    except ValueError:
        raise ArchiveError(f"archive {file_name!r}: time {text!r} is not a valid RFC 3339 time") from None
    return ArchiveName(file_name, match.group("pod"), match.group("rest"), taken_at)


def format_name(pod: str, namespace: str, container: str, taken_at: datetime) -> str:
    """The name the kubelet would give an archive of ``container`` taken at ``taken_at``.

    lpm names the archives it asks the runtime for itself (``watcher.runtime.checkpoint``) the same way, so
    everything downstream (claims, the directory watcher, the collector's kubelet hygiene) treats them
    alike. In UTC, to the microsecond (RFC 3339 allows the fraction; the kubelet's names stop at the
    second): two checkpoints of one container in one second get two names, never one overwritten file.
    """
    when = taken_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    name = f"checkpoint-{pod}_{namespace}-{container}-{when}.tar"
    parse(name)  # the same rules as every other name: a pod, namespace or container that breaks them is refused
    return name
