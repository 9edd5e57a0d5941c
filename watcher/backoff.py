"""Exponential backoff with full jitter, shared by every retry loop (informers, workers, the
kubelet call, the supervisor), and the grace a checkpoint call gets past its timeout. A bottom-layer
module: it imports nothing of lpm's."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter; pure, so it is tested without sleeping."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


def grace(timeout: float) -> float:
    """What a checkpoint call gets after the runtime's own ``timeout``: as much again, at most 30 s, for the
    archive's write and the reply (the kubelet allows the runtime the same). Past it the call counts as failed."""
    return min(30.0, timeout)
