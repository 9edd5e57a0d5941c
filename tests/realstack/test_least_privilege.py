"""Least privilege per node (issue #16, docs/threat-model.md), on the real kube-apiserver.

Two agents, on node-a and node-b, each with the token the kubelet would mount in its DaemonSet pod: the
agent's ServiceAccount, bound by TokenRequest to a pod of lpm's namespace that is bound to that node. The
API server writes the node into such a token, and deploy/base/admission's policies compare what each token
writes with it. A third token, bound to no pod, names no node.

The policies are applied for this module only and removed after it: the session's other tests run agents
on tokens bound to no pod (there are no DaemonSet pods on this control plane), which the policies refuse.
"""

from __future__ import annotations

import copy
import http.client
import json
import re
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from kubernetes_asyncio.client import (
    ApiClient,
    AuthenticationV1Api,
    AuthorizationV1Api,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    V1Eviction,
    V1ObjectMeta,
    V1SelfSubjectReview,
    V1SelfSubjectRulesReview,
    V1SelfSubjectRulesReviewSpec,
)
from kubernetes_asyncio.client.exceptions import ApiException

from lab.apiclient import ApiError
from lab.controlplane import ControlPlane
from lab.manifests import AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, install_admission, remove
from tests.realstack import samples
from tests.realstack.clients import GROUP, RESOURCES, VERSION, create_object, kube_client
from tests.realstack.threat_model import CLUSTER, LPM, THREAT_MODEL, Grant, permissions

pytestmark = pytest.mark.realstack

NAMESPACE = "lpm-least-privilege"
NODES = ("node-a", "node-b")
UNBOUND = "unbound"  # the token bound to no pod
NODE_NAME = "authentication.kubernetes.io/node-name"
MIGRATION_LABEL = "lpm.my.domain/migration"  # watcher/cluster/objects.py
RESTORED_FROM = "lpm.my.domain/restored-from"  # watcher/restore/destination.py


def _agent_pod(node: str) -> dict[str, Any]:
    """What the DaemonSet would run on ``node``, as far as the token cares: its ServiceAccount and node."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"lpm-agent-lp-{node}", "namespace": AGENT_NAMESPACE},
            "spec": {"nodeName": node, "serviceAccountName": AGENT_SERVICE_ACCOUNT,
                     "containers": [{"name": "agent", "image": "lpm:dev"}]}}


def _pod(name: str, node: str | None, *, label: bool = True, annotation: bool = True) -> dict[str, Any]:
    """A pod as the destination agent creates a restored one: pinned to a node, with lpm's markers."""
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "labels": {"app": "web"},
                                "annotations": {}}
    if label:
        metadata["labels"][MIGRATION_LABEL] = "web-0-migration"
    if annotation:
        metadata["annotations"][RESTORED_FROM] = f"{NAMESPACE}/web-0"
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "localhost/restored:1"}]}
    if node is not None:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _lease(name: str, node: str, namespace: str = AGENT_NAMESPACE) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 90}}


def _content(kind: str, name: str, source_node: str | None) -> dict[str, Any]:
    body = (samples.container_checkpoint_content(name, NAMESPACE) if kind == "ContainerCheckpointContent"
            else samples.pod_checkpoint_content(name, NAMESPACE))
    if source_node is None:
        del body["spec"]["sourceNode"]
    else:
        body["spec"]["sourceNode"] = source_node
    return body


def _local_content(name: str, source_node: str | None) -> dict[str, Any]:
    """A container's checkpoint held in its node's local store (relocation.py later switches it to shared)."""
    body = _content("ContainerCheckpointContent", name, source_node)
    body["spec"]["artifactURI"] = "file:///var/lib/lpm/local-store/" + body["spec"]["artifactURI"][len("shared://"):]
    body["spec"]["storageType"] = "local"
    return body


def _status(cp: ControlPlane, token: str, method: str, path: str, body: dict[str, Any]) -> int:
    """The HTTP status of one request made with ``token`` (TLS verified against the control plane's CA)."""
    url = urlsplit(cp.server)
    assert url.hostname is not None
    connection = http.client.HTTPSConnection(url.hostname, url.port, timeout=10,
                                             context=ssl.create_default_context(cafile=str(cp.ca_file)))
    try:
        connection.request(method, path, body=json.dumps(body),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _probes() -> list[tuple[str, dict[str, Any]]]:
    """One dry-run create per policy that node-a's token must be refused and an unbound token is refused only
    while the policies are enforced: (path, body)."""
    return [
        (f"/api/v1/namespaces/{NAMESPACE}/pods", _pod("probe", "node-b")),
        (f"/apis/{GROUP}/{VERSION}/containercheckpointcontents",
         _content("ContainerCheckpointContent", "probe", "node-b")),
        (f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NAMESPACE}/leases", _lease("lpm-node-node-b", "node-a")),
    ]


def _wait_enforced(cp: ControlPlane, token: str) -> None:
    """Until each policy refuses what it must (the API server picks new policies up within a few seconds)."""
    deadline = time.monotonic() + 30
    for path, body in _probes():
        while _status(cp, token, "POST", f"{path}?dryRun=All", body) != 403:
            assert time.monotonic() < deadline, f"{path}: the admission policy is not enforced after 30 s"
            time.sleep(0.2)


def _wait_lifted(cp: ControlPlane, token: str) -> None:
    """Until a token bound to no node may again do what each policy refused (dry runs): no policy is enforced.

    Every policy is probed, not one: the API server drops each deleted policy on its own watch event, so the
    pods' policy can be gone while the contents' one still refuses the next module's unbound agent."""
    deadline = time.monotonic() + 30
    for path, body in _probes():
        while (status := _status(cp, token, "POST", f"{path}?dryRun=All", body)) == 403:
            assert time.monotonic() < deadline, f"{path}: the admission policy still refuses 30 s after its removal"
            time.sleep(0.2)
        assert status < 300 or status == 409, f"{path}: an unbound token is answered {status} without the policies"


@pytest.fixture(scope="module")
def kubeconfigs(control_plane: ControlPlane) -> Iterator[dict[str, Path]]:
    cp = control_plane
    cp.create_namespace(NAMESPACE)
    cp.create_service_account(NAMESPACE, "nobody")  # what any identity may do, for the permissions' baseline
    for node in NODES:
        cp.create_node(node)
    pods = [_agent_pod(node) for node in NODES]
    for pod in pods:
        try:
            cp.admin.request("POST", f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods", pod)
        except ApiError as e:
            if e.status != 409:
                raise
    configs = {node: cp.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT,
                                                   pod=pod["metadata"]["name"])
               for node, pod in zip(NODES, pods, strict=False)}
    configs[UNBOUND] = cp.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)
    configs["nobody"] = cp.service_account_kubeconfig(NAMESPACE, "nobody")
    policies = install_admission(cp.admin)
    try:
        _wait_enforced(cp, cp.service_account_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT,
                                                    pod=pods[0]["metadata"]["name"]))
        yield configs
    finally:
        remove(cp.admin, policies)
        # The API server drops a deleted policy within a few seconds, not at once: the next module's agents
        # (unbound tokens, which the policies refuse) must not meet it.
        _wait_lifted(cp, cp.service_account_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT))
        paths = [f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods/{pod['metadata']['name']}" for pod in pods]
        for path in [*paths, f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NAMESPACE}/leases/lpm-node-node-a"]:
            try:
                cp.admin.request("DELETE", path)
            except ApiError as e:
                if e.status != 404:
                    raise


@pytest_asyncio.fixture
async def agents(kubeconfigs: dict[str, Path]) -> AsyncIterator[dict[str, ApiClient]]:
    async with kube_client(kubeconfigs["node-a"]) as a, kube_client(kubeconfigs["node-b"]) as b, \
            kube_client(kubeconfigs[UNBOUND]) as unbound:
        yield {"node-a": a, "node-b": b, UNBOUND: unbound}


async def _refused(call: Any, says: str, status: int = 403) -> None:
    with pytest.raises(ApiException) as refused:
        await call
    assert refused.value.status == status, refused.value.body
    assert says in json.loads(refused.value.body)["message"], refused.value.body


@pytest.mark.asyncio
async def test_each_token_names_the_node_of_the_pod_it_is_bound_to(agents: dict[str, ApiClient]) -> None:
    for node in NODES:
        review = await AuthenticationV1Api(agents[node]).create_self_subject_review(V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}"
        assert review.status.user_info.extra[NODE_NAME] == [node]
    review = await AuthenticationV1Api(agents[UNBOUND]).create_self_subject_review(V1SelfSubjectReview())
    assert NODE_NAME not in (review.status.user_info.extra or {})


@pytest.mark.asyncio
async def test_an_agent_creates_restored_pods_on_its_own_node(agents: dict[str, ApiClient]) -> None:
    for node in NODES:
        created = await CoreV1Api(agents[node]).create_namespaced_pod(NAMESPACE, _pod(f"restored-{node}", node))
        assert created.spec.node_name == node


@pytest.mark.asyncio
async def test_pods_on_another_node_are_refused(agents: dict[str, ApiClient]) -> None:
    core = CoreV1Api(agents["node-a"])
    await _refused(core.create_namespaced_pod(NAMESPACE, _pod("elsewhere", "node-b")),
                   "lpm-agent of node node-a may create pods bound to its own node only")
    await _refused(CoreV1Api(agents["node-b"]).create_namespaced_pod(NAMESPACE, _pod("elsewhere", "node-a")),
                   "lpm-agent of node node-b may create pods bound to its own node only")
    # Unbound: the scheduler would pick the node.
    await _refused(core.create_namespaced_pod(NAMESPACE, _pod("anywhere", None)), "its own node only")


@pytest.mark.asyncio
@pytest.mark.parametrize(("label", "annotation"), [(False, True), (True, False), (False, False)])
async def test_pods_without_lpms_markers_are_refused(agents: dict[str, ApiClient], label: bool,
                                                     annotation: bool) -> None:
    pod = _pod("unmarked", "node-a", label=label, annotation=annotation)
    await _refused(CoreV1Api(agents["node-a"]).create_namespaced_pod(NAMESPACE, pod),
                   "lpm-agent creates restored pods only")


@pytest.mark.asyncio
async def test_a_token_bound_to_no_node_writes_nothing(agents: dict[str, ApiClient]) -> None:
    client = agents[UNBOUND]
    await _refused(CoreV1Api(client).create_namespaced_pod(NAMESPACE, _pod("unbound", "node-a")),
                   "names no node")
    await _refused(create_object(CustomObjectsApi(client),
                                 _content("ContainerCheckpointContent", "lpm-lp-unbound", "node-a")),
                   "names no node")
    await _refused(CoordinationV1Api(client).create_namespaced_lease(AGENT_NAMESPACE, _lease("lpm-gc", "x"),
                                                                     dry_run="All"),
                   "names no node")


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["ContainerCheckpointContent", "PodCheckpointContent"])
async def test_contents_name_their_writers_node(agents: dict[str, ApiClient], kind: str) -> None:
    prefix = f"lpm-lp-{RESOURCES[kind][0]}"
    node_a = CustomObjectsApi(agents["node-a"])
    created = await create_object(node_a, _content(kind, f"{prefix}-own", "node-a"))
    assert created["spec"]["sourceNode"] == "node-a"
    await _refused(create_object(node_a, _content(kind, f"{prefix}-forged", "node-b")),
                   "may write only checkpoint contents whose spec.sourceNode is node-a")
    await _refused(create_object(node_a, _content(kind, f"{prefix}-nameless", None)),
                   "may write only checkpoint contents whose spec.sourceNode is node-a")


async def _replace(api: CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    plural = RESOURCES[body["kind"]][0]
    replaced: dict[str, Any] = await api.replace_cluster_custom_object(GROUP, VERSION, plural,
                                                                       body["metadata"]["name"], body)
    return replaced


def _to_shared(content: dict[str, Any]) -> dict[str, Any]:
    """What watcher/cluster/relocation.py writes once the local checkpoint is in the shared store."""
    spec = content["spec"]
    spec["artifactURI"] = "shared://" + spec["artifactURI"].removeprefix("file:///var/lib/lpm/local-store/")
    spec["storageType"] = "shared"
    return content


@pytest.mark.asyncio
async def test_another_nodes_content_cannot_be_changed(agents: dict[str, ApiClient],
                                                       control_plane: ControlPlane) -> None:
    node_a, node_b = CustomObjectsApi(agents["node-a"]), CustomObjectsApi(agents["node-b"])
    content = await create_object(node_a, _local_content("lpm-lp-local", "node-a"))
    # node-b repoints node-a's checkpoint, or claims it: both refused.
    await _refused(_replace(node_b, _to_shared(copy.deepcopy(content))), "whose spec.sourceNode is node-b")
    claimed = _to_shared(copy.deepcopy(content))
    claimed["spec"]["sourceNode"] = "node-b"
    # The CRD refuses this one before admission is asked (lpm-agent-checkpoint-contents would too: the old
    # object names node-a).
    await _refused(_replace(node_b, claimed), "sourceNode is immutable", status=422)
    # Its own node's agent moves it to the shared store, as relocation.py does.
    moved = await _replace(node_a, _to_shared(content))
    assert moved["spec"]["storageType"] == "shared" and moved["spec"]["sourceNode"] == "node-a"

    # A content written before lpm set sourceNode (here by a person) is no agent's to change.
    old = _local_content("lpm-lp-old", None)
    control_plane.admin.request("POST", f"/apis/{GROUP}/{VERSION}/containercheckpointcontents", old)
    stored = await node_a.get_cluster_custom_object(GROUP, VERSION, "containercheckpointcontents", "lpm-lp-old")
    await _refused(_replace(node_a, _to_shared(stored)), "whose spec.sourceNode is node-a")


@pytest.mark.asyncio
async def test_leases_are_the_collectors_and_its_own_nodes(agents: dict[str, ApiClient]) -> None:
    leases = CoordinationV1Api(agents["node-a"])
    own = await leases.create_namespaced_lease(AGENT_NAMESPACE, _lease("lpm-node-node-a", "node-a"))
    own.spec.lease_duration_seconds = 60
    await leases.replace_namespaced_lease("lpm-node-node-a", AGENT_NAMESPACE, own)
    # The collectors' Lease is shared with tests/gc: written here as a dry run only.
    await leases.create_namespaced_lease(AGENT_NAMESPACE, _lease("lpm-gc", "node-a"), dry_run="All")
    for name in ("lpm-node-node-b", "kube-scheduler"):
        await _refused(leases.create_namespaced_lease(AGENT_NAMESPACE, _lease(name, "node-a"), dry_run="All"),
                       "may write the Leases lpm-gc and lpm-node-node-a only")
    # Outside lpm's namespace RBAC refuses first: the kubelets' heartbeats, the control plane's elections.
    for namespace in ("kube-node-lease", NAMESPACE):
        await _refused(leases.create_namespaced_lease(namespace, _lease("lpm-node-node-a", "node-a", namespace),
                                                      dry_run="All"),
                       "cannot create resource \"leases\"")


@pytest.mark.asyncio
async def test_pods_are_changed_and_deleted_on_the_own_node_only_and_evicted_only_as_a_dry_run(
        agents: dict[str, ApiClient], control_plane: ControlPlane) -> None:
    """Rule 7: what the handover's turns need (watcher/cluster/handover.py), and not a pod more."""
    for name, node in (("source-on-a", "node-a"), ("source-on-b", "node-b")):
        control_plane.admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods",
                                    _pod(name, node, label=False, annotation=False))
    core = CoreV1Api(agents["node-a"])
    cost = {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-2147483648"}}}

    def evict(name: str, dry_run: str | None) -> Any:
        return core.create_namespaced_pod_eviction(
            name, NAMESPACE, V1Eviction(metadata=V1ObjectMeta(name=name, namespace=NAMESPACE)), dry_run=dry_run)

    # Another node's pod: not patched, not deleted, not evicted for real (a dry run asks only its budget).
    await _refused(core.patch_namespaced_pod("source-on-b", NAMESPACE, cost),
                   "lpm-agent of node node-a may change pods on its own node only")
    await _refused(core.delete_namespaced_pod("source-on-b", NAMESPACE),
                   "lpm-agent of node node-a may delete pods on its own node only")
    await _refused(evict("source-on-b", None), "lpm-agent of node node-a may evict pods as a dry run only")
    await evict("source-on-b", "All")
    # Its own node's pod: what the source's agent does in the handover.
    await evict("source-on-a", "All")
    await _refused(evict("source-on-a", None), "may evict pods as a dry run only")
    await core.patch_namespaced_pod("source-on-a", NAMESPACE, cost)
    # A token bound to no node touches no pod.
    await _refused(CoreV1Api(agents[UNBOUND]).delete_namespaced_pod("source-on-a", NAMESPACE), "names no node")
    await core.delete_namespaced_pod("source-on-a", NAMESPACE, grace_period_seconds=0)
    # node-b's agent may do to its pod what node-a's may not.
    await CoreV1Api(agents["node-b"]).delete_namespaced_pod("source-on-b", NAMESPACE, grace_period_seconds=0)


def _expand(rules: list[Any]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {(group, resource, verb, tuple(sorted(rule.resource_names or ())))
            for rule in rules for group in rule.api_groups or [""] for resource in rule.resources or []
            for verb in rule.verbs}


async def _rules(client: ApiClient, namespace: str) -> tuple[set[tuple[str, str, str, tuple[str, ...]]], set[Any]]:
    review = await AuthorizationV1Api(client).create_self_subject_rules_review(
        V1SelfSubjectRulesReview(spec=V1SelfSubjectRulesReviewSpec(namespace=namespace)))
    assert not review.status.incomplete, review.status.evaluation_error
    non_resource = {(url, verb) for rule in review.status.non_resource_rules
                    for url in rule.non_resource_urls for verb in rule.verbs}
    return _expand(review.status.resource_rules), non_resource


@pytest.mark.asyncio
async def test_the_permissions_are_the_ones_the_threat_model_lists(agents: dict[str, ApiClient],
                                                                   kubeconfigs: dict[str, Path]) -> None:
    """What the API reports for node-a's real token, less what any identity may do, is the page's table."""
    granted: dict[str, set[tuple[str, str, str, tuple[str, ...]]]] = {}
    async with kube_client(kubeconfigs["nobody"]) as nobody:
        for namespace in (AGENT_NAMESPACE, NAMESPACE):
            agent, agent_urls = await _rules(agents["node-a"], namespace)
            baseline, baseline_urls = await _rules(nobody, namespace)
            assert agent_urls == baseline_urls, "lpm grants no non-resource URL"
            granted[namespace] = agent - baseline
    assert not any(names for *_, names in granted[AGENT_NAMESPACE]), "no rule names objects"
    assert granted[NAMESPACE] <= granted[AGENT_NAMESPACE]
    reported: set[Grant] = {(g, r, v, CLUSTER) for g, r, v, _ in granted[NAMESPACE]}
    reported |= {(g, r, v, LPM) for g, r, v, _ in granted[AGENT_NAMESPACE] - granted[NAMESPACE]}
    listed = permissions()
    assert not any("*" in part for grant in reported for part in grant), "no wildcards"
    assert sorted(reported - listed) == [], f"granted but not in {THREAT_MODEL.name}"
    assert sorted(listed - reported) == [], f"in {THREAT_MODEL.name} but not granted"


def test_the_threat_model_table_is_parsed_as_written() -> None:
    """The parser the test above trusts: a row added to the page is a permission the test then expects."""
    text = THREAT_MODEL.read_text()
    table_end = text.index("\n\nNothing else:")
    extra = "\n| core | secrets | get, list | lpm | a new need |"
    assert permissions(text[:table_end] + extra + text[table_end:]) - permissions() == {
        ("", "secrets", "get", LPM), ("", "secrets", "list", LPM)}



def test_the_threat_model_names_tests_that_exist() -> None:
    """``::test_x`` is this module's; ``test_file.py::test_x`` another module's of tests/realstack."""
    module = sys.modules[__name__]
    named = set(re.findall(r"(test_\w+\.py)?::(test_\w+)", THREAT_MODEL.read_text()))
    here = Path(__file__).parent
    missing = {f"{file}::{name}" for file, name in named
               if not (f"def {name}(" in (here / file).read_text() if file else hasattr(module, name))}
    assert named and missing == set()
