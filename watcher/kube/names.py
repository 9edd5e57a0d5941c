"""Kubernetes object names (pure). Here, below both cluster mode and the restorer, because both
name things by the same rule: CRs and pods (``cluster``, ``restore.destination``) and checkpoint
images (``restore.pipeline``, which also runs without a cluster)."""

from __future__ import annotations

import hashlib


def short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def dns_name(*parts: str, limit: int = 253) -> str:
    """A DNS-1123 subdomain made of ``parts``; long ones keep a hash so they stay unique."""
    name = "-".join(part.lower() for part in parts)
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}-{short_hash(name)}"
