"""lpm's CRDs, served by the real kube-apiserver: what they accept, what they refuse, and how they print."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio.client import ApiClient, ApiextensionsV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from lab.controlplane import ControlPlane
from tests.realstack import samples
from tests.realstack.clients import GROUP, RESOURCES, VERSION, create_object, kube_client, merge_patch

pytestmark = pytest.mark.realstack

NAMESPACE = "lpm-crd-tests"
Object = dict[str, Any]


@pytest.fixture(scope="module")
def namespace(control_plane: ControlPlane) -> str:
    control_plane.create_namespace(NAMESPACE)
    return NAMESPACE


@pytest_asyncio.fixture
async def admin(control_plane: ControlPlane) -> AsyncIterator[ApiClient]:
    async with kube_client(control_plane.admin_kubeconfig) as client:
        yield client


def unique(prefix: str) -> str:
    # Cluster-scoped objects outlive a test within the session: every test names its own.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


_DELETE = object()


@dataclass(frozen=True)
class Mutation:
    """Set ``path`` (dotted keys; digits index lists, as in spec.containers.0.artifactURI) or delete it."""

    path: str
    value: Any = _DELETE

    def apply(self, body: Object) -> None:
        *keys, leaf = self.path.split(".")
        parent: Any = body
        for key in keys:
            parent = parent[int(key)] if key.isdigit() else parent[key]
        if self.value is _DELETE:
            del parent[leaf]
        else:
            parent[leaf] = self.value

    def __str__(self) -> str:
        return f"without {self.path}" if self.value is _DELETE else f"{self.path}={self.value!r}"


def without(path: str) -> Mutation:
    return Mutation(path)


def setting(path: str, value: Any) -> Mutation:
    return Mutation(path, value)


SAMPLES: dict[str, Callable[[str, str], Object]] = {
    "ContainerCheckpoint": samples.container_checkpoint,
    "ContainerCheckpointContent": samples.container_checkpoint_content,
    "PodCheckpoint": samples.pod_checkpoint,
    "PodCheckpointContent": samples.pod_checkpoint_content,
    "PodMigration": samples.pod_migration,
}


@pytest.mark.asyncio
async def test_every_crd_is_established_with_a_structural_schema(admin: ApiClient) -> None:
    crds = await ApiextensionsV1Api(admin).list_custom_resource_definition()
    ours = {crd.metadata.name: crd for crd in crds.items if crd.spec.group == GROUP}
    assert sorted(ours) == sorted(f"{plural}.{GROUP}" for plural, _ in RESOURCES.values())
    for name, crd in ours.items():
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions.get("Established") == "True", name
        assert conditions.get("NamesAccepted") == "True", name
        # A non-structural schema is served but neither validated nor pruned properly.
        assert "NonStructuralSchema" not in conditions, name
        (version,) = crd.spec.versions
        assert (version.name, version.served, version.storage) == (VERSION, True, True)
        assert version.subresources.status is not None, name


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", sorted(SAMPLES))
async def test_a_valid_object_is_accepted_with_every_field_known(admin: ApiClient, namespace: str, kind: str) -> None:
    body = SAMPLES[kind](unique(kind.lower()), namespace)
    created = await create_object(CustomObjectsApi(admin), body)
    # Strict field validation passed, so nothing was pruned: the spec comes back as sent (plus defaults).
    for key, value in body["spec"].items():
        assert created["spec"][key] == value


@pytest.mark.asyncio
async def test_podmigration_defaults_retain_original_pod_to_false(admin: ApiClient, namespace: str) -> None:
    created = await create_object(CustomObjectsApi(admin), samples.pod_migration(unique("mig"), namespace))
    assert created["spec"]["retainOriginalPod"] is False


URI_SCHEME = "artifactURI in body should match '^(shared|file)://'"
INVALID_SPECS: list[tuple[str, Mutation, str]] = [
    # (kind, mutation, what the apiserver's message says)
    ("ContainerCheckpoint", without("spec.podName"), "spec.podName: Required value"),
    ("ContainerCheckpoint", without("spec.containerName"), "spec.containerName: Required value"),
    ("ContainerCheckpoint", setting("spec.containerName", "App_1"), "spec.containerName: Invalid value"),
    ("ContainerCheckpoint", without("spec"), "spec: Required value"),
    ("ContainerCheckpointContent", setting("spec.checksumSHA256", "ABC123"), "spec.checksumSHA256: Invalid value"),
    ("ContainerCheckpointContent", setting("spec.checksumSHA256", "g" * 64), "spec.checksumSHA256: Invalid value"),
    ("ContainerCheckpointContent", setting("spec.artifactURI", "http://example.invalid/x"), URI_SCHEME),
    ("ContainerCheckpointContent", setting("spec.artifactURI", "/var/lib/x.tar"), URI_SCHEME),
    ("ContainerCheckpointContent", setting("spec.compressedSize", -1), "greater than or equal to 0"),
    ("ContainerCheckpointContent", setting("spec.storageType", "nfs"), "Unsupported value"),
    ("ContainerCheckpointContent", setting("spec.storageType", "local"), "storageType shared goes with"),
    ("ContainerCheckpointContent", without("spec.containerCheckpointRef.namespace"), "Required value"),
    ("PodCheckpoint", setting("spec.podName", "../etc"), "spec.podName: Invalid value"),
    ("PodCheckpointContent", setting("spec.checkpointID", "latest"), "spec.checkpointID: Invalid value"),
    ("PodCheckpointContent", setting("spec.podUID", "not-a-uid"), "spec.podUID: Invalid value"),
    ("PodCheckpointContent", setting("spec.containers", []), "should have at least 1 items"),
    ("PodCheckpointContent", setting("spec.containers.0.compressedSize", -5), "greater than or equal to 0"),
    ("PodCheckpointContent", setting("spec.containers.1.artifactURI", "s3://bucket/x"), URI_SCHEME),
    ("PodCheckpointContent", setting("spec.containers.1.containerName", "app"), "spec.containers[1]: Duplicate value"),
    ("PodMigration", without("spec.targetNode"), "spec.targetNode: Required value"),
    ("PodMigration", without("spec.podName"), "spec.podName: Required value"),
    ("PodMigration", setting("spec.targetNode", "Node B"), "spec.targetNode: Invalid value"),
    ("PodMigration", setting("spec.retainOriginalPod", "yes"), "spec.retainOriginalPod: Invalid value"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "mutation", "message"), [pytest.param(*case, id=f"{case[0]} {case[1]}") for case in INVALID_SPECS]
)
async def test_an_invalid_object_is_refused_by_the_server(
    admin: ApiClient, namespace: str, kind: str, mutation: Mutation, message: str
) -> None:
    body = SAMPLES[kind](unique(kind.lower()), namespace)
    mutation.apply(body)
    with pytest.raises(ApiException) as refused:
        await create_object(CustomObjectsApi(admin), body)
    assert refused.value.status == 422, str(refused.value.body)
    assert message in str(refused.value.body)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("ContainerCheckpoint", {"phase": "Done"}),
        ("PodCheckpoint", {"phase": "Complete"}),
        ("PodMigration", {"phase": "Migrated"}),
        ("PodMigration", {"conditions": [{"type": "Ready", "status": "Maybe"}]}),
    ],
)
async def test_an_invalid_status_is_refused_by_the_server(
    admin: ApiClient, namespace: str, kind: str, status: Object
) -> None:
    api = CustomObjectsApi(admin)
    body = await create_object(api, SAMPLES[kind](unique(kind.lower()), namespace))
    with pytest.raises(ApiException) as refused:
        await merge_patch(api, body, {"status": status}, status=True)
    assert refused.value.status == 422, str(refused.value.body)


@pytest.mark.asyncio
async def test_status_is_written_only_through_the_status_subresource(admin: ApiClient, namespace: str) -> None:
    api = CustomObjectsApi(admin)
    name = unique("ccp")
    body = samples.container_checkpoint(name, namespace)
    body["status"] = {"phase": "Succeeded", "ready": True}
    created = await create_object(api, body)
    # With a status subresource, status sent with the main resource is dropped...
    assert "status" not in created

    status = {"phase": "Succeeded", "ready": True, "boundContentName": "web-0-app-x", "message": "checkpointed"}
    updated = await merge_patch(api, created, {"status": status, "spec": {"podName": "other"}}, status=True)
    # ...and the status subresource writes status but ignores any spec it is sent.
    assert updated["status"] == status
    assert updated["spec"]["podName"] == "web-0"
    assert updated["metadata"]["generation"] == created["metadata"]["generation"]


@pytest.mark.asyncio
async def test_spec_is_immutable(admin: ApiClient, namespace: str) -> None:
    api = CustomObjectsApi(admin)
    name = unique("mig")
    created = await create_object(api, samples.pod_migration(name, namespace))
    with pytest.raises(ApiException) as refused:
        await merge_patch(api, created, {"spec": {"targetNode": "node-c"}})
    assert refused.value.status == 422
    assert "spec is immutable" in str(refused.value.body)


@pytest.mark.asyncio
async def test_printer_columns_are_served(admin: ApiClient, namespace: str) -> None:
    api = CustomObjectsApi(admin)
    name = unique("mig")
    created = await create_object(api, samples.pod_migration(name, namespace))
    await merge_patch(api, created, {"status": {"phase": "Checkpointing", "sourceNode": "node-a"}}, status=True)
    # What `kubectl get podmigrations` asks for: the server renders the CRD's printer columns as a Table.
    # (The generated list method overwrites any Accept header it is given, so go one level down.)
    response = await admin.call_api(
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/podmigrations",
        "GET",
        query_params=[("fieldSelector", f"metadata.name={name}")],
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    table = json.loads(await response.read())
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:5] == ["Name", "Pod", "Source", "Target", "Phase"]
    (row,) = table["rows"]
    assert row["cells"][:5] == [name, "web-0", "node-a", "node-b", "Checkpointing"]


LOCAL_STORE = "/var/lib/lpm/local-store"


def _held_locally(body: Object) -> Object:
    """The same content as announced while the shared store was unavailable: file:// and local."""
    entries = body["spec"]["containers"] if body["kind"] == "PodCheckpointContent" else [body["spec"]]
    for entry in entries:
        entry["artifactURI"] = f"file://{LOCAL_STORE}/" + entry["artifactURI"].removeprefix("shared://")
        entry["storageType"] = "local"
    return body


def _entries(body: Object) -> list[Object]:
    return body["spec"]["containers"] if body["kind"] == "PodCheckpointContent" else [body["spec"]]


async def _replace(api: CustomObjectsApi, body: Object) -> Object:
    plural, _ = RESOURCES[body["kind"]]
    result: Object = await api.replace_cluster_custom_object(GROUP, VERSION, plural, body["metadata"]["name"], body)
    return result


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["ContainerCheckpointContent", "PodCheckpointContent"])
async def test_a_local_content_moves_to_the_shared_store_once_and_nothing_else_changes(
    admin: ApiClient, namespace: str, kind: str
) -> None:
    api = CustomObjectsApi(admin)
    local = await create_object(api, _held_locally(SAMPLES[kind](unique(kind.lower()), namespace)))
    assert {e["storageType"] for e in _entries(local)} == {"local"}

    # The move may not change what the bytes are, only where they are.
    tampered = json.loads(json.dumps(local))
    for entry in _entries(tampered):
        entry["artifactURI"] = "shared://" + entry["artifactURI"].split(f"{LOCAL_STORE}/", 1)[1]
        entry["storageType"] = "shared"
    _entries(tampered)[0]["checksumSHA256"] = "0" * 64
    with pytest.raises(ApiException) as refused:
        await _replace(api, tampered)
    assert refused.value.status == 422 and "moving to the shared store" in str(refused.value.body)

    # ...nor which checkpoint and container they are: the shared address is the local path's tail.
    elsewhere = json.loads(json.dumps(local))
    for entry in _entries(elsewhere):
        uid, _, container, dump = entry["artifactURI"].split(f"{LOCAL_STORE}/", 1)[1].split("/")
        entry["artifactURI"] = f"shared://{uid}/20261125T000000Z-00000000/{container}/{dump}"
        entry["storageType"] = "shared"
    with pytest.raises(ApiException) as refused:
        await _replace(api, elsewhere)
    assert refused.value.status == 422 and "moving to the shared store" in str(refused.value.body)

    moved = json.loads(json.dumps(local))
    for entry in _entries(moved):
        entry["artifactURI"] = "shared://" + entry["artifactURI"].split(f"{LOCAL_STORE}/", 1)[1]
        entry["storageType"] = "shared"
    updated = await _replace(api, moved)
    assert [e["artifactURI"] for e in _entries(updated)] == [e["artifactURI"] for e in _entries(moved)]
    assert {e["storageType"] for e in _entries(updated)} == {"shared"}

    # Once shared, it stays: back to local (or anywhere else) is refused.
    with pytest.raises(ApiException) as refused:
        await _replace(api, _held_locally(updated))
    assert refused.value.status == 422 and "spec is immutable" in str(refused.value.body)
