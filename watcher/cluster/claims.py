"""Which archives in the kubelet directory the agent asked for itself.

The kubelet's runtime writes an archive in place while the agent's own request is still
open, so the directory watcher sees it too. Archives of a (namespace, pod, container) with a
request in flight are held back until the request has committed them; the archives its
replies named are then the request's. Everything else in the directory was taken without lpm (a person with curl) and
is ingested and announced on its own, so nothing taken is invisible.
"""

from __future__ import annotations

from enum import Enum


class Claim(Enum):
    OURS = "ours"
    WAIT = "wait"
    NONE = "none"


class Claims:
    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}
        self._ours: set[str] = set()

    @staticmethod
    def prefix(namespace: str, pod: str, container: str) -> str:
        return f"checkpoint-{pod}_{namespace}-{container}-"

    def begin(self, namespace: str, pod: str, container: str) -> str:
        prefix = self.prefix(namespace, pod, container)
        self._in_flight[prefix] = self._in_flight.get(prefix, 0) + 1
        return prefix

    def end(self, prefix: str, archive: str | None) -> None:
        self._in_flight[prefix] -= 1
        if not self._in_flight[prefix]:
            del self._in_flight[prefix]
        if archive is not None:
            self._ours.add(archive)

    def of(self, archive: str) -> Claim:
        if archive in self._ours:
            return Claim.OURS
        if any(archive.startswith(prefix) for prefix in self._in_flight):
            return Claim.WAIT
        return Claim.NONE
