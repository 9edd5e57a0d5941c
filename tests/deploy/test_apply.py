"""Every object deploy/ renders, applied to the real kube-apiserver: validated, defaulted, admitted.

Server-side dry-run (``dryRun=All``): the apiserver runs validation, defaulting and admission and
stores nothing, so the session's other tests keep the CRDs and RBAC exactly as the fixture applied
them. The Prometheus Operator's CRDs are not kube-apiserver's own: the alerting overlay is applied
after the cut-down copies in tests/deploy/crds/ are installed for real (test-only CRDs nobody else
uses).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.apiclient import ApiError
from lab.apply import Applier, in_apply_order
from lab.controlplane import ControlPlane
from lab.kustomize import render
from lab.manifests import AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, wait_established
from tests.deploy.kustomize import OVERLAYS, find

pytestmark = pytest.mark.realstack

MONITORING_CRDS = Path(__file__).parent / "crds" / "monitoring.coreos.com.yaml"


@pytest.fixture(scope="module")
def applier(control_plane: ControlPlane) -> Applier:
    applier = Applier(control_plane.admin)
    crds = list(yaml.safe_load_all(MONITORING_CRDS.read_text()))
    for crd in crds:
        applier.apply(crd, dry_run=False)
    wait_established(control_plane.admin, [crd["metadata"]["name"] for crd in crds])
    return applier


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_rendered_object_is_accepted(applier: Applier, kustomize: Path, overlay: str) -> None:
    objects = in_apply_order(render(kustomize, OVERLAYS[overlay]))
    # Namespaces and CRDs before anything that lives in one or is of one.
    first = [o["kind"] in ("Namespace", "CustomResourceDefinition") for o in objects]
    assert first == sorted(first, reverse=True)
    for obj in objects:
        try:
            stored = applier.apply(obj, dry_run=True)
        except ApiError as err:
            raise AssertionError(f"{overlay}: {obj['kind']} {obj['metadata']['name']} refused: {err}") from None
        assert (stored["kind"], stored["metadata"]["name"]) == (obj["kind"], obj["metadata"]["name"])


def _pod_from(workload: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The pod its controller would create (there is no controller here: we ask as it would)."""
    spec = workload["spec"]
    template = spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" else spec["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{workload['metadata']['name']}-probe", "namespace": namespace,
                         "labels": template["metadata"].get("labels", {})},
            "spec": template["spec"]}


def _violations(cp: ControlPlane, pod: dict[str, Any]) -> set[str]:
    """What Pod Security admission objects to in ``pod`` at its namespace's enforced level."""
    namespace = pod["metadata"]["namespace"]
    try:
        cp.admin.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod)
    except ApiError as err:
        assert err.status == 403, err
        # ... violates PodSecurity "restricted:latest": hostPath volumes (volume "x"), runAsUser=0 (...)
        message = json.loads(err.body)["message"]
        found = re.search(r'violates PodSecurity "[a-z]+:latest": (.*)$', message)
        assert found, message
        return set(re.findall(r"(?:^|\), )([^()]+?) \(", found.group(1)))
    return set()


@pytest.fixture(scope="module")
def pod_security_namespaces(control_plane: ControlPlane) -> dict[str, str]:
    namespaces = {}
    for level in ("baseline", "restricted"):
        name = f"lpm-deploy-psa-{level}"
        control_plane.admin.request("PATCH", f"/api/v1/namespaces/{name}?fieldManager=lpm-deploy-tests", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": level}}},
            content_type="application/apply-patch+yaml")
        # The ServiceAccount admission plugin wants the pod's ServiceAccount to exist first.
        control_plane.create_service_account(name, AGENT_SERVICE_ACCOUNT)
        control_plane.create_service_account(name, "nfs-subdir-external-provisioner")
        namespaces[level] = name
    return namespaces


# What each workload needs beyond Pod Security's `restricted` level, and nothing else: the apiserver
# lists every violation, so a capability, privilege escalation or a missing seccomp profile would show.
BEYOND_RESTRICTED = {
    # The hostPath, reported at this level as a volume type outside restricted's list.
    ("DaemonSet", "lpm-agent"): {"restricted volume types", "runAsNonRoot != true", "runAsUser=0"},
    ("CronJob", "lpm-gc"): {"runAsNonRoot != true", "runAsUser=0"},
    # Its inline nfs volume.
    ("Deployment", "nfs-subdir-external-provisioner"): {"restricted volume types", "runAsNonRoot != true",
                                                        "runAsUser=0"},
}
BEYOND_BASELINE = {
    ("DaemonSet", "lpm-agent"): {"hostPath volumes"},
    ("CronJob", "lpm-gc"): set(),
    ("Deployment", "nfs-subdir-external-provisioner"): set(),
}


@pytest.mark.parametrize(("kind", "name"), sorted(BEYOND_RESTRICTED))
def test_pods_need_no_privilege_beyond_the_hostpath_and_uid_0(
    control_plane: ControlPlane, kustomize: Path, pod_security_namespaces: dict[str, str], kind: str, name: str
) -> None:
    workload = find(render(kustomize, OVERLAYS["nfs"]), kind, name)
    assert _violations(control_plane, _pod_from(workload, pod_security_namespaces["restricted"])) == \
        BEYOND_RESTRICTED[(kind, name)]
    assert _violations(control_plane, _pod_from(workload, pod_security_namespaces["baseline"])) == \
        BEYOND_BASELINE[(kind, name)]
    # lpm's own namespace admits it (its label asks for `privileged`). The provisioner's ServiceAccount is
    # only dry-run applied elsewhere, and admission wants it to exist (creation is idempotent).
    pod = _pod_from(workload, AGENT_NAMESPACE)
    control_plane.create_service_account(AGENT_NAMESPACE, pod["spec"]["serviceAccountName"])
    assert _violations(control_plane, pod) == set()
