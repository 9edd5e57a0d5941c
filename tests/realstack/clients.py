"""kubernetes-asyncio clients for tests that talk to the real control plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from kubernetes_asyncio.config import new_client_from_config

GROUP = "lpm.my.domain"
VERSION = "v1"
# kubernetes-asyncio sends a dict body of a custom-object PATCH as a JSON *patch* (RFC 6902, a list of
# operations) unless told otherwise, and the server then refuses it.
MERGE_PATCH = "application/merge-patch+json"


@asynccontextmanager
async def kube_client(kubeconfig: Path) -> AsyncIterator[ApiClient]:
    """An ApiClient built from ``kubeconfig`` (TLS verified against the CA it names), closed on exit."""
    client = await new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    try:
        yield client
    finally:
        await client.close()


# kind -> (plural, namespaced), for lpm's five kinds.
RESOURCES: dict[str, tuple[str, bool]] = {
    "ContainerCheckpoint": ("containercheckpoints", True),
    "ContainerCheckpointContent": ("containercheckpointcontents", False),
    "PodCheckpoint": ("podcheckpoints", True),
    "PodCheckpointContent": ("podcheckpointcontents", False),
    "PodMigration": ("podmigrations", True),
}


async def create_object(api: CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    """Create one lpm object with strict field validation: an unknown field is an error, not pruned."""
    plural, namespaced = RESOURCES[body["kind"]]
    created: dict[str, Any]
    if namespaced:
        created = await api.create_namespaced_custom_object(
            GROUP, VERSION, body["metadata"]["namespace"], plural, body, field_validation="Strict"
        )
    else:
        created = await api.create_cluster_custom_object(GROUP, VERSION, plural, body, field_validation="Strict")
    return created


async def merge_patch(
    api: CustomObjectsApi, obj: dict[str, Any], patch: dict[str, Any], *, status: bool = False
) -> dict[str, Any]:
    """Merge-patch one lpm object (as returned by the API, so with kind and metadata), or its status."""
    plural, namespaced = RESOURCES[obj["kind"]]
    name = obj["metadata"]["name"]
    # A keyword the runtime accepts but the stubs do not declare, hence passed through **.
    options: dict[str, Any] = {"_content_type": MERGE_PATCH}
    patched: dict[str, Any]
    if namespaced:
        namespace = obj["metadata"]["namespace"]
        method = api.patch_namespaced_custom_object_status if status else api.patch_namespaced_custom_object
        patched = await method(GROUP, VERSION, namespace, plural, name, patch, **options)
    else:
        cluster_method = api.patch_cluster_custom_object_status if status else api.patch_cluster_custom_object
        patched = await cluster_method(GROUP, VERSION, plural, name, patch, **options)
    return patched
