"""Cluster mode's wiring: a kubernetes-asyncio client, the Lease lock and the reference source.

Kept apart so that standalone collectors never import the Kubernetes client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

from lpm_gc.collector import ReferenceSource
from lpm_gc.lease import LeaseLock
from lpm_gc.references import References, lookup
from watcher.errors import LpmError


@contextlib.asynccontextmanager
async def connect(kubeconfig: Path | None) -> AsyncIterator[client.ApiClient]:
    """A client from ``kubeconfig``, or from the pod's service account when None."""
    try:
        if kubeconfig is not None:
            api = await config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
        else:
            config.load_incluster_config()
            api = client.ApiClient()
    except (ConfigException, OSError) as err:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config (not in a pod?)"
        raise LpmError(f"{where}: {err}; pass --standalone to run without a cluster") from None
    try:
        yield api
    finally:
        await api.close()


def lease_lock(api: client.ApiClient, namespace: str, identity: str) -> LeaseLock:
    return LeaseLock(client.CoordinationV1Api(api), namespace, identity)


def reference_source(api: client.ApiClient) -> ReferenceSource:
    objects = client.CustomObjectsApi(api)

    async def source() -> References:
        return await lookup(objects)

    return source
