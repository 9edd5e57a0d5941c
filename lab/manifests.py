"""Apply lpm's deploy/ manifests (CRDs, RBAC) to a control plane, the way `kubectl apply --server-side` does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from lab.apiclient import ApiClient, ApiError
from lab.controlplane import REPO

FIELD_MANAGER = "lpm-tests"
# What deploy/base installs that the agent needs on any cluster: its CRDs, and its RBAC.
CRD_DIR = REPO / "deploy" / "base" / "crds"
RBAC_DIR = REPO / "deploy" / "base" / "rbac"
# What cuts the agent's RBAC down by node in the API server. Not part of install_lpm: its policies refuse
# tokens bound to no node, which the tests' and the lab's host agents use; install_admission applies them.
ADMISSION_DIR = REPO / "deploy" / "base" / "admission"
# Checkpoints through the kubelet's API: a ClusterRole with nodes/checkpoint and its binding to the agent.
# Not in the base (agents ask their own node's runtime); install_lpm applies the role, bound to nobody, and
# grant_kubelet_checkpoints binds it where a test runs agents with --checkpoint-via kubelet.
KUBELET_CHECKPOINT_DIR = REPO / "deploy" / "components" / "checkpoint-kubelet"
AGENT_NAMESPACE = "live-pod-migration-controller-system"
AGENT_SERVICE_ACCOUNT = "lpm-agent"

# The kinds deploy/ holds: (apiVersion, kind) -> (plural, namespaced). A static table rather than API
# discovery: a manifest of any other kind is a mistake in deploy/ that should fail loudly here.
_RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ("customresourcedefinitions", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): ("validatingadmissionpolicies", False),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"):
        ("validatingadmissionpolicybindings", False),
}
# Namespaces before what lives in them; CRDs before anything that might name their resources.
_ORDER = {"Namespace": 0, "CustomResourceDefinition": 1}


def load_manifests(*directories: Path) -> list[dict[str, Any]]:
    """Every YAML document in ``*.yaml`` files of ``directories``, in apply order."""
    documents: list[dict[str, Any]] = []
    for directory in directories:
        files = sorted(directory.glob("*.yaml"))
        if not files:
            raise FileNotFoundError(f"no *.yaml manifests in {directory}")
        for file in files:
            with file.open() as f:
                documents.extend(doc for doc in yaml.safe_load_all(f) if doc)
    return sorted(documents, key=lambda doc: _ORDER.get(doc["kind"], len(_ORDER)))


def _object_path(manifest: dict[str, Any]) -> str:
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    try:
        plural, namespaced = _RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"deploy/ manifest of unexpected kind {api_version} {kind}") from None
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    metadata = manifest["metadata"]
    if namespaced:
        prefix += f"/namespaces/{metadata['namespace']}"
    return f"{prefix}/{plural}/{metadata['name']}"


def apply(client: ApiClient, manifests: list[dict[str, Any]]) -> None:
    """Server-side apply: creates what is missing, updates what differs, idempotent across runs."""
    for manifest in manifests:
        client.request(
            "PATCH",
            f"{_object_path(manifest)}?fieldManager={FIELD_MANAGER}&force=true",
            manifest,
            content_type="application/apply-patch+yaml",
        )


def wait_established(client: ApiClient, crd_names: list[str], timeout: float = 30.0) -> None:
    """Block until every named CRD reports Established=True, i.e. its resource is being served."""
    deadline = time.monotonic() + timeout
    pending = set(crd_names)
    while pending:
        for name in sorted(pending):
            crd = client.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = crd.get("status", {}).get("conditions") or []  # null until the first condition
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not Established after {timeout} s: {sorted(pending)}")
        if pending:
            time.sleep(0.1)


def install_lpm(client: ApiClient) -> None:
    """lpm's CRDs and the agent's RBAC from deploy/base, applied and served (CRDs Established)."""
    manifests = load_manifests(CRD_DIR, RBAC_DIR)
    apply(client, [*manifests, _component("clusterrole.yaml")])
    wait_established(client, [m["metadata"]["name"] for m in manifests if m["kind"] == "CustomResourceDefinition"])


def install_admission(client: ApiClient) -> list[dict[str, Any]]:
    """deploy/base/admission's policies and bindings, applied; returns them (for ``remove``).

    The API server takes a moment to start enforcing a new policy: callers wait for a refusal they expect.
    """
    manifests = load_manifests(ADMISSION_DIR)
    apply(client, manifests)
    return manifests


def _component(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((KUBELET_CHECKPOINT_DIR / name).read_text())
    return manifest


def grant_kubelet_checkpoints(client: ApiClient, account: str = AGENT_SERVICE_ACCOUNT) -> dict[str, Any]:
    """deploy/components/checkpoint-kubelet's binding, for ``account`` of lpm's namespace; returns it for
    ``revoke_kubelet_checkpoints``. Returns once the API server authorises the account's checkpoints (RBAC
    reaches the authorizer through a watch: a kubelet asking right after the apply could still be refused)."""
    binding = _component("clusterrolebinding.yaml")
    if account != AGENT_SERVICE_ACCOUNT:
        binding["metadata"]["name"] += f"-{account}"
        binding["subjects"][0]["name"] = account
    apply(client, [binding])
    _wait_checkpoint_allowed(client, account, True)
    return binding


def revoke_kubelet_checkpoints(client: ApiClient, binding: dict[str, Any]) -> None:
    """Undo ``grant_kubelet_checkpoints``; returns once the API server no longer authorises them."""
    remove(client, [binding])
    _wait_checkpoint_allowed(client, binding["subjects"][0]["name"], False)


def _wait_checkpoint_allowed(client: ApiClient, account: str, allowed: bool, timeout: float = 30.0) -> None:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": f"system:serviceaccount:{AGENT_NAMESPACE}:{account}",
                       "groups": ["system:serviceaccounts", f"system:serviceaccounts:{AGENT_NAMESPACE}",
                                  "system:authenticated"],
                       "resourceAttributes": {"verb": "create", "resource": "nodes", "subresource": "checkpoint"}}}
    deadline = time.monotonic() + timeout
    path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    while client.request("POST", path, review)["status"].get("allowed", False) != allowed:
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes/checkpoint for {account} still {'denied' if allowed else 'allowed'} "
                               f"{timeout:.0f} s after the binding changed")
        time.sleep(0.1)


def remove(client: ApiClient, manifests: list[dict[str, Any]]) -> None:
    """Delete what ``apply`` made from ``manifests`` (already gone is fine)."""
    for manifest in reversed(manifests):
        try:
            client.request("DELETE", _object_path(manifest))
        except ApiError as e:
            if e.status != 404:
                raise


def grant_leases(client: ApiClient, namespace: str) -> None:
    """The agent's Lease Role and RoleBinding (lpm's namespace only, in deploy/) also in ``namespace``.

    For tests that keep each test's node Leases in a namespace of its own (``lpm agent --namespace``).
    """
    for name in ("agent-leases-role.yaml", "agent-leases-rolebinding.yaml"):
        manifest = yaml.safe_load((RBAC_DIR / name).read_text())
        manifest["metadata"]["namespace"] = namespace
        apply(client, [manifest])
