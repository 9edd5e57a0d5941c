"""Cluster mode against the real kube-apiserver: references keep checkpoints, the Lease keeps order.

"Unknown is not absent": only a complete answer from the API clears a checkpoint; an API that
refuses, fails or cannot be reached keeps every checkpoint, and the pass still exits 0.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from lab.apiclient import ApiError
from lab.controlplane import ControlPlane
from lab.manifests import AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT
from tests.gc import synthetic
from tests.gc.support import FrozenCollector
from tests.realstack import samples
from tests.support import lpm

pytestmark = pytest.mark.realstack

API = "/apis/lpm.my.domain/v1"
NAMESPACE = "ns-0"  # where tests.gc.synthetic puts every pod when namespaces=1


@pytest.fixture(scope="module")
def agent_kubeconfig(control_plane: ControlPlane) -> Path:
    """The agent's real ServiceAccount token: the collector runs with exactly the agent's RBAC."""
    control_plane.create_namespace(NAMESPACE)
    return control_plane.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)


def expired_store(store: Path, count: int) -> list[tuple[str, str]]:
    """``count`` complete checkpoints, one pod each, 2 to 30 days old: (pod UID, checkpoint ID)."""
    synthetic.build(store, count, time.time(), per_pod=1, namespaces=1, max_age=30 * 86400, min_age=2 * 86400)
    return sorted((uid.name, cid.name) for uid in store.iterdir() for cid in uid.iterdir())


def cluster_gc(store: Path, kubeconfig: Path, *args: str) -> tuple[int, list[dict], str]:
    result = lpm("gc", "--store", str(store), "--kubeconfig", str(kubeconfig), "--once", "--retention", "1d", *args)
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def deleted(lines: list[dict]) -> set[tuple[str, str]]:
    return {(line["podUID"], line["checkpointID"]) for line in lines if line["event"] == "deletion"}


def summary(lines: list[dict]) -> dict:
    [line] = [line for line in lines if line["event"] == "summary"]
    return line


def test_referenced_checkpoints_are_kept_and_only_unreferenced_ones_go(control_plane, agent_kubeconfig, store):
    (c0, c1, c2, c3, c4) = expired_store(store, 5)
    admin = control_plane.admin
    tag = uuid.uuid4().hex[:6]
    content = samples.container_checkpoint_content(f"ccc-{tag}", NAMESPACE)
    content["spec"]["artifactURI"] = f"shared://{c0[0]}/{c0[1]}/app/dump.tar.zst"
    pod_content = samples.pod_checkpoint_content(f"pcc-{tag}", NAMESPACE)
    pod_content["spec"].update(podUID=c1[0], checkpointID=c1[1])
    migrations = f"{API}/namespaces/{NAMESPACE}/podmigrations"
    created = [f"{API}/containercheckpointcontents/ccc-{tag}", f"{API}/podcheckpointcontents/pcc-{tag}",
               f"{migrations}/mig-{tag}-2", f"{migrations}/mig-{tag}-3"]
    try:
        admin.request("POST", f"{API}/containercheckpointcontents", content)
        admin.request("POST", f"{API}/podcheckpointcontents", pod_content)
        # pod-2 is being migrated (no phase yet: just created); pod-3's migration is over.
        admin.request("POST", migrations, samples.pod_migration(f"mig-{tag}-2", NAMESPACE, pod="pod-2"))
        admin.request("POST", migrations, samples.pod_migration(f"mig-{tag}-3", NAMESPACE, pod="pod-3"))
        admin.request("PATCH", f"{migrations}/mig-{tag}-3/status", {"status": {"phase": "Succeeded"}},
                      content_type="application/merge-patch+json")

        code, lines, stderr = cluster_gc(store, agent_kubeconfig)
    finally:
        for path in created:  # the control plane lives for the session: leave no references behind
            with contextlib.suppress(ApiError):  # 404: its creation is what failed
                admin.request("DELETE", path)
    assert code == 0, stderr
    assert deleted(lines) == {c3, c4}
    assert summary(lines)["keptReferenced"] == 3 and summary(lines)["lock"] == "held"
    assert all((store / uid / cid / ".checkpoint-complete").exists() for uid, cid in (c0, c1, c2))


def test_an_api_that_refuses_to_answer_keeps_every_checkpoint(control_plane, store):
    # A collector allowed its Lease but not to list lpm's objects: every answer is 403.
    name = f"gc-no-list-{uuid.uuid4().hex[:6]}"
    control_plane.create_service_account(AGENT_NAMESPACE, name)
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/" + AGENT_NAMESPACE
    control_plane.admin.request("POST", f"{rbac}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "verbs": ["get", "create", "update"]}]})
    control_plane.admin.request("POST", f"{rbac}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": AGENT_NAMESPACE}]})
    checkpoints = expired_store(store, 3)
    code, lines, stderr = cluster_gc(store, control_plane.service_account_kubeconfig(AGENT_NAMESPACE, name))
    assert code == 0, stderr
    assert deleted(lines) == set() and summary(lines)["keptUnknown"] == 3 and summary(lines)["lock"] == "held"
    assert "403" in stderr
    assert all((store / uid / cid / ".checkpoint-complete").exists() for uid, cid in checkpoints)


def test_an_unreachable_api_server_means_no_lease_and_no_deletions(control_plane, agent_kubeconfig, store, tmp_path):
    checkpoints = expired_store(store, 2)
    config = yaml.safe_load(agent_kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"  # nothing listens on port 1
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(yaml.safe_dump(config))
    code, lines, stderr = cluster_gc(store, dead)
    assert code == 0, stderr
    assert deleted(lines) == set() and summary(lines)["lock"] == "busy"
    assert "lease unavailable" in stderr
    assert all((store / uid / cid).exists() for uid, cid in checkpoints)


def test_two_collectors_share_one_lease_and_never_delete_at_the_same_time(agent_kubeconfig, store, tmp_path):
    checkpoints = expired_store(store, 400)
    first = FrozenCollector(store, tmp_path, "--kubeconfig", str(agent_kubeconfig), "--once", "--retention", "1d")
    try:
        code, lines, stderr = cluster_gc(store, agent_kubeconfig)
    finally:
        first_code, mine, err = first.finish()
    assert code == 0 and summary(lines)["lock"] == "busy" and deleted(lines) == set(), stderr
    assert "another collector holds the lease" in stderr
    assert first_code == 0, err
    left = sorted(set(checkpoints) - deleted(mine))
    assert not left and summary(mine)["errors"] == 0, (left, summary(mine), err[-2000:])
    # Released at the end of the pass: the next collector need not wait for it to expire.
    code, lines, stderr = cluster_gc(store, agent_kubeconfig)
    assert code == 0 and summary(lines)["lock"] == "held", stderr


@pytest.mark.parametrize("renewed_ago, expected", [(600, "held"), (0, "busy")], ids=["expired", "live"])
def test_a_lease_left_by_a_dead_collector_is_taken_once_expired(control_plane, agent_kubeconfig, store,
                                                                 renewed_ago, expected):
    expired_store(store, 1)
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NAMESPACE}/leases"
    renewed = datetime.now(UTC) - timedelta(seconds=renewed_ago)
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with contextlib.suppress(ApiError):
        control_plane.admin.request("DELETE", f"{leases}/lpm-gc")
    control_plane.admin.request("POST", leases, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "lpm-gc"},
        "spec": {"holderIdentity": "crashed-collector", "leaseDurationSeconds": 60, "acquireTime": stamp,
                 "renewTime": stamp}})
    try:
        code, lines, stderr = cluster_gc(store, agent_kubeconfig)
        lease = control_plane.admin.request("GET", f"{leases}/lpm-gc")
    finally:
        control_plane.admin.request("DELETE", f"{leases}/lpm-gc")  # no other test may inherit it
    assert code == 0, stderr
    assert summary(lines)["lock"] == expected and summary(lines)["deleted"] == (1 if expected == "held" else 0)
    if expected == "held":  # taken over, then released at the end of the pass
        assert lease["spec"].get("holderIdentity") is None and lease["spec"]["leaseTransitions"] == 1
    else:
        assert lease["spec"]["holderIdentity"] == "crashed-collector"
