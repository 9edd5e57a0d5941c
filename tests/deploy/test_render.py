"""deploy/ as kustomize renders it: what each object promises, checked without a cluster.

What the apiserver thinks of the same objects is tests/deploy/test_apply.py's business.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from lab.kustomize import render
from lab.manifests import AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, CRD_DIR, RBAC_DIR
from lpm_gc.metrics import Metrics
from tests.deploy.kustomize import DEPLOY, OVERLAYS, find
from watcher.cli import build_parser
from watcher.observe import AgentMetrics, Operation
from watcher.s3.location import S3Location

CHECKPOINT_DIR = "/var/lib/kubelet/checkpoints"
STORE = "/mnt/checkpoints"
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "StorageClass",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


@pytest.fixture(scope="module")
def rendered(kustomize: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: render(kustomize, directory) for name, directory in OVERLAYS.items()}


def _containers(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = workload["spec"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"] if workload["kind"] == "CronJob" else spec["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_overlay_renders_complete_objects(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    assert objects
    for obj in objects:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == AGENT_NAMESPACE, obj["metadata"]
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names))


def test_the_base_holds_the_existing_crds_and_rbac_unchanged(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The files tests/realstack applies are the ones the base installs, plus only labels."""
    files = sorted([*CRD_DIR.glob("*.yaml"), *RBAC_DIR.glob("*.yaml")])
    assert len(files) == 11
    for file in files:
        source = yaml.safe_load(file.read_text())
        out = find(rendered["base"], source["kind"], source["metadata"]["name"])
        labels = {**source["metadata"].get("labels", {}), "app.kubernetes.io/part-of": "lpm"}
        assert out == {**source, "metadata": {**source["metadata"], "labels": labels}}


@pytest.mark.parametrize("overlay", ["base", "nfs"])
def test_workloads_run_as_the_service_account_the_rbac_test_proves(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    for kind, name in (("DaemonSet", "lpm-agent"), ("CronJob", "lpm-gc")):
        workload = find(objects, kind, name)
        assert workload["metadata"]["namespace"] == AGENT_NAMESPACE
        assert _pod_spec(workload)["serviceAccountName"] == AGENT_SERVICE_ACCOUNT
    # ...whose role is exactly the file tests/realstack/test_rbac.py holds to its NEEDS table,
    role = yaml.safe_load((RBAC_DIR / "agent-clusterrole.yaml").read_text())
    assert find(objects, "ClusterRole", "lpm-agent")["rules"] == role["rules"]
    # ...and which nothing else binds: no more permissions than those.
    subject = {"kind": "ServiceAccount", "name": AGENT_SERVICE_ACCOUNT, "namespace": AGENT_NAMESPACE}
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding") and subject in o["subjects"]]
    assert sorted((b["kind"], b["metadata"]["name"], b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings) == [
        ("ClusterRoleBinding", "lpm-agent", "ClusterRole", "lpm-agent"),
        ("RoleBinding", "lpm-agent-leases", "Role", "lpm-agent-leases")]
    assert find(objects, "RoleBinding", "lpm-agent-leases")["metadata"]["namespace"] == AGENT_NAMESPACE


@pytest.mark.parametrize("overlay", sorted(set(OVERLAYS) - {"alerting"}))  # alerting goes beside an install
def test_the_admission_policies_bind_to_the_agents_service_account(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """The policies name the ServiceAccount in CEL, where kustomize's namespace does not reach: an overlay that
    moved lpm would leave them matching nobody, and the agent's writes unchecked."""
    objects = rendered[overlay]
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"}
    bindings = {o["spec"]["policyName"]: o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert sorted(policies) == sorted(bindings) == ["lpm-agent-checkpoint-contents", "lpm-agent-leases",
                                                    "lpm-agent-pods"]
    user = f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}"
    for name, policy in policies.items():
        assert policy["spec"]["failurePolicy"] == "Fail"
        assert [c["expression"] for c in policy["spec"]["matchConditions"]] == [
            f"request.userInfo.username == '{user}'"], name
        assert bindings[name]["spec"]["validationActions"] == ["Deny"]
        assert "matchResources" not in bindings[name]["spec"], "every namespace"


def test_images_are_short_names_set_by_kustomize(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """No registry host in deploy/: operators point `images:` at theirs."""
    images = {c["image"] for o in rendered["nfs"] if o["kind"] in ("DaemonSet", "CronJob", "Deployment")
              for c in _containers(o).values()}
    assert images == {"lpm:dev", "nfs-subdir-external-provisioner:v4.0.2"}


def test_the_daemonset_is_what_issue_6_asks(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ds = find(rendered["base"], "DaemonSet", "lpm-agent")
    pod = _pod_spec(ds)
    agent, collector = _containers(ds)["agent"], _containers(ds)["collector"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {c["name"]: {m["name"]: m for m in c["volumeMounts"]} for c in (agent, collector)}

    assert volumes["kubelet-checkpoints"]["hostPath"] == {"path": CHECKPOINT_DIR, "type": "Directory"}
    assert mounts["agent"]["kubelet-checkpoints"] == {"name": "kubelet-checkpoints", "mountPath": CHECKPOINT_DIR,
                                                      "readOnly": True}
    assert mounts["collector"]["kubelet-checkpoints"].get("readOnly") is not True  # it removes verified archives
    assert volumes["checkpoint-repo"]["persistentVolumeClaim"] == {"claimName": "checkpoint-repo"}
    for name in ("agent", "collector"):
        assert mounts[name]["checkpoint-repo"]["mountPath"] == STORE
    # The fallback while the shared store is unavailable: on the node's disk, surviving the pod, writable.
    local = _env(agent)["LPM_LOCAL_STORE"]
    assert volumes["local-store"]["hostPath"] == {"path": local, "type": "DirectoryOrCreate"}
    assert mounts["agent"]["local-store"]["mountPath"] == local and not mounts["agent"]["local-store"].get("readOnly")
    assert _env(agent)["LPM_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    ca = Path(_env(agent)["LPM_KUBELET_CA"])
    assert ca.parent == Path(mounts["agent"]["kubelet-ca"]["mountPath"])
    assert [i["path"] for i in volumes["kubelet-ca"]["configMap"]["items"]] == [ca.name]

    port = int(_env(agent)["LPM_HEALTH_PORT"])
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert ports[agent[probe]["httpGet"]["port"]] == port
    for container in (agent, collector):
        assert set(container["resources"]) == {"requests", "limits"}
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize(("kind", "name"), [("DaemonSet", "lpm-agent"), ("CronJob", "lpm-gc"),
                                            ("Deployment", "nfs-subdir-external-provisioner")])
def test_every_container_drops_every_privilege(rendered: dict[str, list[dict[str, Any]]], kind: str,
                                               name: str) -> None:
    workload = find(rendered["nfs"], kind, name)
    pod = _pod_spec(workload)
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    # uid 0 owns the kubelet's 0700 directory (and the store's entries): see agent-daemonset.yaml.
    assert pod["securityContext"] == {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    for container in _containers(workload).values():
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def test_the_containers_arguments_are_lpms_own_flags(rendered: dict[str, list[dict[str, Any]]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed by the real command line, with the container's environment: what the pod would run."""
    ds = find(rendered["base"], "DaemonSet", "lpm-agent")
    cronjob = find(rendered["base"], "CronJob", "lpm-gc")

    def parse(container: dict[str, Any]) -> Any:
        for key in ("LPM_NODE_NAME", "LPM_CHECKPOINT_DIR", "LPM_STORE", "LPM_KUBELET_CA", "LPM_HEALTH_PORT",
                    "LPM_GC_METRICS_PORT", "RETENTION_HOURS", "POD_NAMESPACE"):
            monkeypatch.delenv(key, raising=False)
        for key, value in _env(container).items():
            # The downward API fills these in on the node.
            monkeypatch.setenv(key, value if isinstance(value, str) else "node-a")
        return build_parser().parse_args(container["args"])  # defaults read the environment

    agent = parse(_containers(ds)["agent"])
    assert (agent.command, agent.standalone, agent.node) == ("agent", False, "node-a")
    assert (agent.store, agent.checkpoint_dir) == (Path(STORE), Path(CHECKPOINT_DIR))
    assert agent.kubelet_ca == Path("/etc/lpm/kubelet-ca/ca.crt") and agent.kubeconfig is None  # in-cluster
    assert agent.health_port == 8080

    collector = parse(_containers(ds)["collector"])
    assert (collector.command, collector.once, collector.interval) == ("gc", False, 600)
    assert (collector.store, collector.checkpoint_dir, collector.node) == (Path(STORE), Path(CHECKPOINT_DIR), "node-a")
    assert collector.metrics_port == 8081 == {p["name"]: p["containerPort"] for p in
                                              _containers(ds)["collector"]["ports"]}["http-gc-metrics"]
    assert not collector.standalone  # cluster mode: the Lease, and references checked before deleting

    nightly = parse(_containers(cronjob)["gc"])
    assert (nightly.command, nightly.once, nightly.store) == ("gc", True, Path(STORE))
    assert cronjob["spec"]["schedule"] == "0 2 * * *"
    assert _env(_containers(cronjob)["gc"])["RETENTION_HOURS"] == "24"


def test_the_nfs_overlay_provisions_the_shared_store(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["nfs"]
    pvc = find(objects, "PersistentVolumeClaim", "checkpoint-repo")
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs-rwx",
                           "resources": {"requests": {"storage": "20Gi"}}}
    storage_class = find(objects, "StorageClass", "nfs-rwx")
    assert {"rsize=1048576", "wsize=1048576"} <= set(storage_class["mountOptions"])
    provisioner = find(objects, "Deployment", "nfs-subdir-external-provisioner")
    assert _env(_containers(provisioner)["nfs-subdir-external-provisioner"])["PROVISIONER_NAME"] == \
        storage_class["provisioner"]
    assert _pod_spec(provisioner)["serviceAccountName"] == "nfs-subdir-external-provisioner"
    # The parameters' holder is kustomize's alone: it is not applied.
    assert not [o for o in objects if o["kind"] == "ConfigMap"]


def test_the_nfs_parameters_reach_every_place_that_needs_them(kustomize: Path, tmp_path: Path) -> None:
    """An operator's edit of nfs.env, rendered: the server and path land in the volume and the env."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    # A name under .test, reserved for testing: it never resolves, and nothing here connects to it.
    (copy / "overlays" / "nfs" / "nfs.env").write_text("NFS_SERVER=nfs.lpm.test\nNFS_PATH=/exports/lpm\n")
    provisioner = find(render(kustomize, copy / "overlays" / "nfs"), "Deployment", "nfs-subdir-external-provisioner")
    [volume] = [v for v in _pod_spec(provisioner)["volumes"] if "nfs" in v]
    assert volume["nfs"] == {"server": "nfs.lpm.test", "path": "/exports/lpm"}
    env = _env(_containers(provisioner)["nfs-subdir-external-provisioner"])
    assert (env["NFS_SERVER"], env["NFS_PATH"]) == ("nfs.lpm.test", "/exports/lpm")


def _exported_names(registry: CollectorRegistry) -> set[str]:
    return {sample.name for family in registry.collect() for sample in family.samples}


def test_alerts_use_only_metrics_that_lpm_exports(rendered: dict[str, list[dict[str, Any]]],
                                                  tmp_path: Path) -> None:
    rule = find(rendered["alerting"], "PrometheusRule", "lpm")
    rules = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"LpmCheckpointStoreAlmostFull", "LpmCheckpointFailures", "LpmRestoreFailures",
            "LpmCollectorErrors"} <= set(rules)
    exported = _exported_names(AgentMetrics(tmp_path).registry) | _exported_names(Metrics().registry)
    for alert, body in rules.items():
        used = set(re.findall(r"\blpm_[a-z0-9_]+", body["expr"]))
        assert used and used <= exported, (alert, used - exported)
        for values in re.findall(r'operation=~?"([^"]+)"', body["expr"]):
            assert set(values.split("|")) <= {op.value for op in Operation}, (alert, values)
    assert "> 0.8" in rules["LpmCheckpointStoreAlmostFull"]["expr"]
    # It scrapes the ports the DaemonSet names.
    monitor = find(rendered["alerting"], "PodMonitor", "lpm-agent")
    ds = find(rendered["base"], "DaemonSet", "lpm-agent")
    ports = {p["name"] for c in _containers(ds).values() for p in c.get("ports", [])}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == ports
    assert monitor["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def _checkpoint_rules(objects: list[dict[str, Any]]) -> list[str]:
    """The ClusterRoles that grant nodes/checkpoint, by name."""
    return [o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"
            and any("nodes/checkpoint" in rule.get("resources", []) for rule in o["rules"])]


@pytest.mark.parametrize(("overlay", "via", "granted"), [
    # The agent reaches the node's runtime socket: checkpoints from it, and no nodes/checkpoint at all.
    ("containerd", "runtime", []),
    ("cri-o", "runtime", []),
    # No access to the node: the kubelet's API, and the ClusterRole that lets every agent call every kubelet.
    ("registry", "kubelet", ["lpm-agent-kubelet-checkpoint"]),
])
def test_checkpoints_come_from_the_runtime_unless_the_agent_cannot_reach_it(
        rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, overlay: str, via: str,
        granted: list[str]) -> None:
    objects = rendered[overlay]
    assert _checkpoint_rules(objects) == granted
    agent = _containers(find(objects, "DaemonSet", "lpm-agent"))["agent"]
    for key in [k for k in os.environ if k.startswith("LPM_")]:
        monkeypatch.delenv(key)
    for key, value in _env(agent).items():
        monkeypatch.setenv(key, value if isinstance(value, str) else "node-a")
    assert build_parser().parse_args(agent["args"]).checkpoint_via == via
    if via == "kubelet":
        [binding] = [o for o in objects if o["kind"] == "ClusterRoleBinding"
                     and o["roleRef"]["name"] == "lpm-agent-kubelet-checkpoint"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": AGENT_SERVICE_ACCOUNT,
                                        "namespace": AGENT_NAMESPACE}]


KEYS_DIR = "/etc/lpm/encryption-keys"


def test_encryption_at_rest_is_off_by_default_and_on_with_its_component(
        rendered: dict[str, list[dict[str, Any]]], kustomize: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys Secret is mounted (optional, 0400) in the agent and its collector; only the component sets
    LPM_ENCRYPTION_KEYS, which both commands then read as --encryption-keys."""
    ds = find(rendered["base"], "DaemonSet", "lpm-agent")
    volumes = {v["name"]: v for v in _pod_spec(ds)["volumes"]}
    assert volumes["encryption-keys"]["secret"] == {"secretName": "lpm-encryption-keys", "optional": True,
                                                     "defaultMode": 0o400}
    for container in _containers(ds).values():
        assert "LPM_ENCRYPTION_KEYS" not in _env(container)
        assert {m["name"]: m for m in container["volumeMounts"]}["encryption-keys"] == {
            "name": "encryption-keys", "mountPath": KEYS_DIR, "readOnly": True}

    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    overlay = copy / "overlays" / "encrypted"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../../base"], "components": ["../../components/encryption-at-rest"]}))
    ds = find(render(kustomize, overlay), "DaemonSet", "lpm-agent")
    for name, container in _containers(ds).items():
        assert _env(container)["LPM_ENCRYPTION_KEYS"] == KEYS_DIR, name
        for key in [k for k in os.environ if k.startswith("LPM_")]:
            monkeypatch.delenv(key)
        for key, value in _env(container).items():
            monkeypatch.setenv(key, value if isinstance(value, str) else "node-a")
        assert build_parser().parse_args(container["args"]).encryption_keys == Path(KEYS_DIR), name


def test_the_s3_overlay_keeps_checkpoints_in_the_bucket_with_no_volume_and_the_credentials_as_files(
        rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    """No PVC and no shared volume anywhere; every container reads the bucket's parameters from the overlay's
    ConfigMap and the credentials from the Secret's files (never env from it); the commands, parsed by the
    real command line with that environment, are the cluster agent (the containerd restore component's importer,
    the local store for its ledger) and the collectors over s3://."""
    objects = rendered["s3"]
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("lpm-s3")]
    ds = find(objects, "DaemonSet", "lpm-agent")
    cronjob = find(objects, "CronJob", "lpm-gc")
    for workload in (ds, cronjob):
        volumes = {v["name"]: v for v in _pod_spec(workload)["volumes"]}
        assert "checkpoint-repo" not in volumes, sorted(volumes)
        assert volumes["s3"] == {"name": "s3", "secret": {"secretName": "lpm-s3", "defaultMode": 0o400}}

    def parse(container: dict[str, Any]) -> Any:
        for key in [k for k in os.environ if k.startswith(("LPM_", "AWS_"))] + ["RETENTION_HOURS", "POD_NAMESPACE"]:
            monkeypatch.delenv(key, raising=False)
        assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [config["metadata"]["name"]]
        environment = {**config["data"], **_env(container)}
        assert not any("secretKeyRef" in str(value) for value in environment.values())
        for key, value in environment.items():
            monkeypatch.setenv(key, value if isinstance(value, str) else "node-a")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert STORE not in mounts and mounts["/etc/lpm/s3"] == {"name": "s3", "mountPath": "/etc/lpm/s3",
                                                                  "readOnly": True}
        assert environment["AWS_SHARED_CREDENTIALS_FILE"] == "/etc/lpm/s3/credentials"
        assert environment["AWS_ENDPOINT_URL_S3"].startswith("https://")
        return build_parser().parse_args(container["args"]), mounts

    agent, mounts = parse(_containers(ds)["agent"])
    assert (agent.command, agent.standalone, agent.delete_ingested) == ("agent", False, True)
    assert isinstance(agent.store, S3Location) and agent.checkpoint_dir == Path(CHECKPOINT_DIR)
    assert (agent.importer, agent.local_store) == ("containerd", Path("/var/lib/lpm/local-store"))
    assert mounts["/var/lib/lpm/local-store"]["name"] == "local-store"  # the ingest ledger
    assert mounts[CHECKPOINT_DIR]["readOnly"] is False  # --delete-ingested removes the kubelet's archives
    collector, mounts = parse(_containers(ds)["collector"])
    assert (collector.command, collector.checkpoint_dir) == ("gc", None) and CHECKPOINT_DIR not in mounts
    assert isinstance(collector.store, S3Location) and collector.store == agent.store
    nightly, _ = parse(_containers(cronjob)["gc"])
    assert (nightly.command, nightly.once, nightly.store) == ("gc", True, agent.store)
