"""Cluster mode's wiring: the agent's API client (``watcher.kube.client.Kube``), the Lease lock and the
reference source.

Kept apart so that standalone collectors never import the Kubernetes client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from kubernetes_asyncio.config.config_exception import ConfigException

from lpm_gc.collector import ReferenceSource
from lpm_gc.lease import LeaseLock
from lpm_gc.references import References, lookup
from watcher.errors import LpmError
from watcher.kube.client import Kube
from watcher.kube.client import connect as connect_api


@contextlib.asynccontextmanager
async def connect(kubeconfig: Path | None) -> AsyncIterator[Kube]:
    """A client from ``kubeconfig``, or from the pod's service account when None."""
    try:
        api = await connect_api(kubeconfig)
    except (ConfigException, OSError) as err:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config (not in a pod?)"
        raise LpmError(f"{where}: {err}; pass --standalone to run without a cluster") from None
    try:
        yield Kube(api)
    finally:
        await api.close()


def lease_lock(kube: Kube, namespace: str, identity: str) -> LeaseLock:
    return LeaseLock(kube, namespace, identity)


def reference_source(kube: Kube) -> ReferenceSource:
    async def source() -> References:
        return await lookup(kube)

    return source
