"""The agent's RBAC, enforced by the real kube-apiserver against the agent's real ServiceAccount token."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from kubernetes_asyncio.client import (
    ApiClient,
    ApiextensionsV1Api,
    AuthenticationV1Api,
    AuthenticationV1TokenRequest,
    AuthorizationV1Api,
    CoordinationV1Api,
    CoreV1Api,
    CoreV1Event,
    CustomObjectsApi,
    RbacAuthorizationV1Api,
    V1ClusterRole,
    V1Container,
    V1EventSource,
    V1Lease,
    V1LeaseSpec,
    V1ObjectMeta,
    V1ObjectReference,
    V1Pod,
    V1PodSpec,
    V1PolicyRule,
    V1ResourceAttributes,
    V1SelfSubjectAccessReview,
    V1SelfSubjectAccessReviewSpec,
    V1SelfSubjectReview,
    V1TokenRequestSpec,
)
from kubernetes_asyncio.client.exceptions import ApiException

from lab.controlplane import ControlPlane
from lab.manifests import AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, RBAC_DIR
from tests.realstack import samples
from tests.realstack.clients import GROUP, RESOURCES, VERSION, create_object, kube_client, merge_patch
from tests.realstack.threat_model import CLUSTER, LPM, permissions

pytestmark = pytest.mark.realstack

NAMESPACE = "lpm-rbac-tests"
NODE = "node-a"
# Objects outside NAMESPACE are shared with the rest of the session (the collector's tests elect a leader
# in the agent's namespace): names of their own keep these tests from colliding with others.
LEASE = "lpm-rbac-tests"
CONTENT = "lpm-rbac-tests-web-0-app"

# What the agent needs, and why, is docs/threat-model.md's table (and the comments beside each rule in
# deploy/base/rbac/): (apiGroup, resource[/subresource], verb, where). The ClusterRole and the Role must grant
# exactly this: a new permission is a decision to make in both places, never a side effect.
GRANTS = permissions()
CLUSTER_SCOPED = {"nodes", "nodes/checkpoint", "persistentvolumes",
                  *(p for p, namespaced in RESOURCES.values() if not namespaced)}


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    grants: set[tuple[str, str, str]] = set()
    for rule in rules:
        # A rule that names objects or URLs would need its own row here; none does today.
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.update((group, resource, verb) for verb in rule["verbs"])
    return grants


@pytest.mark.parametrize(("file", "where"), [("agent-clusterrole.yaml", CLUSTER), ("agent-leases-role.yaml", LPM)])
def test_the_roles_grant_exactly_what_the_agent_needs(file: str, where: str) -> None:
    role = yaml.safe_load((RBAC_DIR / file).read_text())
    granted = _grants(role["rules"])
    assert not any("*" in grant for grant in granted), "no wildcards"
    assert granted == {(group, resource, verb) for group, resource, verb, w in GRANTS if w == where}


@pytest.fixture(scope="module")
def agent_kubeconfig(control_plane: ControlPlane) -> Path:
    control_plane.create_namespace(NAMESPACE)
    # A node for the agent to read, and for the forbidden nodes/proxy call to name.
    control_plane.create_node(NODE)
    return control_plane.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)


@pytest_asyncio.fixture
async def agent(agent_kubeconfig: Path) -> AsyncIterator[ApiClient]:
    async with kube_client(agent_kubeconfig) as client:
        yield client


@pytest.mark.asyncio
async def test_the_token_is_the_agents_service_account(agent: ApiClient) -> None:
    review = await AuthenticationV1Api(agent).create_self_subject_review(V1SelfSubjectReview())
    assert review.status.user_info.username == f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}"


async def _allowed(client: ApiClient, group: str, resource: str, verb: str, namespace: str = NAMESPACE) -> bool:
    scoped = resource not in CLUSTER_SCOPED
    resource, _, subresource = resource.partition("/")
    attributes = V1ResourceAttributes(
        group=group,
        resource=resource,
        subresource=subresource,
        verb=verb,
        namespace=namespace if scoped else None,
    )
    review = await AuthorizationV1Api(client).create_self_subject_access_review(
        V1SelfSubjectAccessReview(spec=V1SelfSubjectAccessReviewSpec(resource_attributes=attributes))
    )
    allowed: bool = review.status.allowed
    return allowed


@pytest.mark.asyncio
async def test_every_needed_verb_is_allowed(agent: ApiClient) -> None:
    denied = [
        grant for grant in sorted(GRANTS)
        if not await _allowed(agent, *grant[:3], namespace=AGENT_NAMESPACE if grant[3] == LPM else NAMESPACE)
    ]
    assert denied == []


@pytest.mark.asyncio
async def test_the_agents_own_calls_succeed(agent: ApiClient) -> None:
    core = CoreV1Api(agent)
    node = await core.read_node(NODE)
    assert node.metadata.name == NODE
    await core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}")

    # A restore creates the pod pinned to its node; the source pod is deleted afterwards.
    pod = await core.create_namespaced_pod(
        NAMESPACE,
        V1Pod(
            metadata=V1ObjectMeta(name="restored"),
            spec=V1PodSpec(node_name=NODE, containers=[V1Container(name="app", image="localhost/restored:1")]),
        ),
    )
    await core.patch_namespaced_pod("restored", NAMESPACE, {"metadata": {"annotations": {"lpm.my.domain/x": "y"}}})
    now = datetime.datetime.now(datetime.UTC)
    involved = V1ObjectReference(kind="Pod", namespace=NAMESPACE, name="restored", uid=pod.metadata.uid)
    await core.create_namespaced_event(
        NAMESPACE,
        CoreV1Event(
            # Not "restored.": v1.37 validates generateName itself, and a subdomain cannot end in a dot.
            metadata=V1ObjectMeta(generate_name="restored-"),
            involved_object=involved,
            reason="Checkpointed",
            message="checkpoint committed",
            type="Normal",
            source=V1EventSource(component="lpm-agent", host=NODE),
        ),
    )
    await core.delete_namespaced_pod("restored", NAMESPACE)

    # Requests are answered through status; contents are created by the agent that took the checkpoint.
    custom = CustomObjectsApi(agent)
    # Status is written whole, with the resourceVersion read (watcher/cluster/status.py): update, not patch.
    request = await create_object(custom, samples.container_checkpoint("web-0-app", NAMESPACE))
    request["status"] = {"phase": "Succeeded", "ready": True, "boundContentName": CONTENT}
    await custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, "containercheckpoints", "web-0-app", request
    )
    await create_object(custom, samples.container_checkpoint_content(CONTENT, NAMESPACE))
    await create_object(custom, samples.pod_migration("web-0", NAMESPACE))

    # The collector's election.
    leases = CoordinationV1Api(agent)
    await leases.create_namespaced_lease(
        AGENT_NAMESPACE,
        V1Lease(
            metadata=V1ObjectMeta(name=LEASE),
            spec=V1LeaseSpec(holder_identity=NODE, lease_duration_seconds=15),
        ),
    )
    lease = await leases.read_namespaced_lease(LEASE, AGENT_NAMESPACE)
    lease.spec.renew_time = now
    await leases.replace_namespaced_lease(LEASE, AGENT_NAMESPACE, lease)


FORBIDDEN: dict[str, Callable[[ApiClient], Awaitable[Any]]] = {
    "get secret": lambda c: CoreV1Api(c).read_namespaced_secret("any", AGENT_NAMESPACE),
    "list secrets": lambda c: CoreV1Api(c).list_namespaced_secret(AGENT_NAMESPACE),
    "list secrets everywhere": lambda c: CoreV1Api(c).list_secret_for_all_namespaces(),
    "nodes/proxy": lambda c: CoreV1Api(c).connect_get_node_proxy_with_path(NODE, "pods"),
    "pods/exec": lambda c: CoreV1Api(c).connect_post_namespaced_pod_exec("web-0", NAMESPACE, command="id"),
    "pods/status": lambda c: CoreV1Api(c).patch_namespaced_pod_status("web-0", NAMESPACE, {"status": {}}),
    "patch node": lambda c: CoreV1Api(c).patch_node(NODE, {"metadata": {"labels": {"x": "y"}}}),
    "mint tokens": lambda c: CoreV1Api(c).create_namespaced_service_account_token(
        AGENT_SERVICE_ACCOUNT, AGENT_NAMESPACE, AuthenticationV1TokenRequest(spec=V1TokenRequestSpec(audiences=["x"]))
    ),
    "delete CRD": lambda c: ApiextensionsV1Api(c).delete_custom_resource_definition(f"podmigrations.{GROUP}"),
    "create clusterrole": lambda c: RbacAuthorizationV1Api(c).create_cluster_role(
        V1ClusterRole(
            metadata=V1ObjectMeta(name="escalate"),
            rules=[V1PolicyRule(api_groups=["*"], resources=["*"], verbs=["*"])],
        )
    ),
    "delete podmigration": lambda c: CustomObjectsApi(c).delete_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "podmigrations", "web-0"
    ),
    "delete lease": lambda c: CoordinationV1Api(c).delete_namespaced_lease(LEASE, AGENT_NAMESPACE),
    # Leases outside lpm's namespace: the kubelets' heartbeats, the control plane's leader elections.
    "read node lease": lambda c: CoordinationV1Api(c).read_namespaced_lease(NODE, "kube-node-lease"),
    "patch request status": lambda c: merge_patch(
        CustomObjectsApi(c), samples.container_checkpoint("web-0-app", NAMESPACE), {"status": {}}, status=True
    ),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("call", sorted(FORBIDDEN))
async def test_other_calls_are_forbidden(agent: ApiClient, call: str) -> None:
    with pytest.raises(ApiException) as refused:
        await FORBIDDEN[call](agent)
    # 403 from the authorizer, before the apiserver looks for the object: not a 404 in disguise.
    assert refused.value.status == 403, str(refused.value.body)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("group", "resource", "verb"),
    [
        ("", "secrets", "get"),
        ("", "nodes/proxy", "get"),
        ("", "nodes/proxy", "create"),
        ("", "pods/exec", "create"),
        ("", "pods/attach", "create"),
        ("", "pods/ephemeralcontainers", "patch"),
        ("", "configmaps", "get"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "delete"),
        ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("coordination.k8s.io", "leases", "create"),  # in NAMESPACE: leases only in lpm's own
        ("events.k8s.io", "events", "create"),
        ("", "events", "patch"),
        ("", "nodes", "list"),
        ("", "pods", "update"),
        (GROUP, "containercheckpointcontents/status", "update"),
        (GROUP, "podmigrations", "update"),
    ],
)
async def test_the_authorizer_denies_what_was_not_granted(
    agent: ApiClient, group: str, resource: str, verb: str
) -> None:
    assert not await _allowed(agent, group, resource, verb)
