"""``kubectl lpm``: the installed ``kubectl-lpm`` executable, run as a subprocess against the real
kube-apiserver with a kubeconfig, as kubectl runs a plugin.

No agent runs here: where a migration must move on, the test writes its status as the agents would (the
source's agent up to CheckpointComplete, the destination's from Restoring on).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.apiclient import ApiError
from lab.archives import ArchiveSpec, Pod, make_archive
from lab.controlplane import ControlPlane
from lpm_gc.scanner import scan
from tests.realstack import samples
from tests.realstack.clients import kube_client
from tests.support import lpm, run_in_pty
from watcher.cluster.migration import reconcile_annotated_pod
from watcher.cluster.objects import MIGRATE_ANNOTATION, MIGRATION_LABEL, lpm_path, migration_name, pod_path
from watcher.kube.client import Kube

pytestmark = pytest.mark.realstack

PLUGIN = str(Path(sys.executable).parent / "kubectl-lpm")
MERGE_PATCH = "application/merge-patch+json"
Object = dict[str, Any]


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    name = f"lpm-kubectl-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(name)
    control_plane.create_node("node-a")
    control_plane.create_node("node-b")
    return name


def make_pod(control_plane: ControlPlane, namespace: str, name: str = "web") -> Object:
    return control_plane.admin.request("POST", pod_path(namespace), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}})


def plugin(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PLUGIN, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def set_status(control_plane: ControlPlane, namespace: str, name: str, status: Object) -> None:
    control_plane.admin.request("PATCH", lpm_path("PodMigration", namespace, name, status=True),
                                {"status": status}, content_type=MERGE_PATCH)


def wait_for(control_plane: ControlPlane, path: str, timeout: float = 30) -> Object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return control_plane.admin.request("GET", path)
        except ApiError:  # 404 until the plugin has created it
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# The statuses the agents write on the way to Succeeded, in order (what watcher/cluster/migration.py and
# watcher/restore/destination.py write: phase, message, sourceNode and startTime, handover, the restored pod).
TO_SUCCESS: list[Object] = [
    {"phase": "Checkpointing", "sourceNode": "node-a", "startTime": "2026-12-02T10:00:00Z",
     "message": "checkpointing 1 container"},
    {"phase": "CheckpointComplete", "message": "checkpoint stored; node-b restores it"},
    {"phase": "Restoring", "message": "restoring on node-b"},
    {"phase": "Restoring", "handover": "RestoredReady", "message": "restored pod runs"},
    {"phase": "Succeeded", "handover": None, "restoredPodName": "web-restored",
     "completionTime": "2026-12-02T10:00:07Z", "message": "running on node-b as web-restored"},
]


def act_as_agents(control_plane: ControlPlane, namespace: str, name: str, statuses: list[Object]) -> threading.Thread:
    """Once the plugin has created the migration, write ``statuses`` one by one, a moment apart."""
    def run() -> None:
        wait_for(control_plane, lpm_path("PodMigration", namespace, name))
        for status in statuses:
            time.sleep(0.7)
            set_status(control_plane, namespace, name, status)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- migrate -----------------------------------------------------------------------------------------------

def test_migrate_no_wait_creates_the_migration_the_agent_would(control_plane: ControlPlane, namespace: str) -> None:
    pod = make_pod(control_plane, namespace)
    uid = pod["metadata"]["uid"]
    name = migration_name("web", uid)

    done = plugin(control_plane.admin_kubeconfig, "migrate", "web", "--to", "node-b", "-n", namespace, "--no-wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"podmigration.lpm.my.domain/{name} created\n"
    made = control_plane.admin.request("GET", lpm_path("PodMigration", namespace, name))
    assert made["spec"] == {"podName": "web", "targetNode": "node-b", "retainOriginalPod": False}
    assert made["metadata"]["labels"] == {f"{MIGRATION_LABEL}-pod-uid": uid}

    # Again: the pod's one migration is found, not a second one made; another target is refused.
    again = plugin(control_plane.admin_kubeconfig, "migrate", "web", "--to", "node-b", "-n", namespace, "--no-wait")
    assert (again.returncode, again.stdout) == (0, f"podmigration.lpm.my.domain/{name} exists already\n")
    other = plugin(control_plane.admin_kubeconfig, "migrate", "web", "--to", "node-c", "-n", namespace, "--no-wait")
    assert other.returncode == 1
    assert f"has a migration already, {name}, to node-b" in other.stderr
    listed = control_plane.admin.request("GET", lpm_path("PodMigration", namespace))
    assert [m["metadata"]["name"] for m in listed["items"]] == [name]


@pytest.mark.asyncio
async def test_the_plugin_and_the_agent_make_the_same_migration(control_plane: ControlPlane, namespace: str) -> None:
    """The agent's own code, on an annotated pod, against the plugin's on another: one shape of object."""
    by_agent = make_pod(control_plane, namespace, "by-agent")
    by_agent["metadata"]["annotations"] = {MIGRATE_ANNOTATION: "node-b"}
    async with kube_client(control_plane.admin_kubeconfig) as client:
        await reconcile_annotated_pod(Kube(client), "node-a", "ADDED", by_agent)
    by_plugin = make_pod(control_plane, namespace, "by-plugin")
    done = plugin(control_plane.admin_kubeconfig, "migrate", "by-plugin", "--to", "node-b", "-n", namespace,
                  "--no-wait")
    assert done.returncode == 0, done.stderr

    def made(pod: Object) -> Object:
        uid = pod["metadata"]["uid"]
        obj = control_plane.admin.request(
            "GET", lpm_path("PodMigration", namespace, migration_name(pod["metadata"]["name"], uid)))
        return {"labels": {k: v.replace(uid, "UID") for k, v in obj["metadata"]["labels"].items()},
                "spec": obj["spec"] | {"podName": "POD"}}
    assert made(by_plugin) == made(by_agent)


def test_the_namespace_defaults_to_the_contexts(control_plane: ControlPlane, namespace: str,
                                                tmp_path: Path) -> None:
    pod = make_pod(control_plane, namespace, "api")
    config = yaml.safe_load(control_plane.admin_kubeconfig.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))

    done = plugin(kubeconfig, "migrate", "api", "--to", "node-b", "--retain-original", "--no-wait")
    assert done.returncode == 0, done.stderr
    made = control_plane.admin.request(
        "GET", lpm_path("PodMigration", namespace, migration_name("api", pod["metadata"]["uid"])))
    assert made["spec"]["retainOriginalPod"] is True
    missing = plugin(kubeconfig, "--context", "no-such-context", "ls")
    assert missing.returncode == 1 and "no-such-context" in missing.stderr


def test_a_user_rbac_forbids_to_migrate_gets_a_clear_error(control_plane: ControlPlane, namespace: str) -> None:
    make_pod(control_plane, namespace)
    control_plane.create_service_account(namespace, "viewer")
    # May read pods and migrations, may not create migrations.
    control_plane.admin.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "viewer"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                  {"apiGroups": ["lpm.my.domain"], "resources": ["podmigrations"], "verbs": ["get", "list"]}]})
    control_plane.admin.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": namespace}]})
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "viewer")

    denied = plugin(kubeconfig, "migrate", "web", "--to", "node-b", "-n", namespace, "--no-wait")
    assert denied.returncode == 1
    [line] = denied.stderr.splitlines()
    assert line.startswith("kubectl-lpm: POST ") and "403" in line
    assert f'system:serviceaccount:{namespace}:viewer" cannot create resource "podmigrations"' in line
    assert denied.stdout == ""
    # What it may do, it does.
    assert plugin(kubeconfig, "status", "-n", namespace).returncode == 0


# -- status and ls -----------------------------------------------------------------------------------------

def test_status_in_every_output_format(control_plane: ControlPlane, namespace: str) -> None:
    for pod, phase in (("web-0", "Restoring"), ("web-1", "Failed")):
        control_plane.admin.request("POST", lpm_path("PodMigration", namespace),
                                    samples.pod_migration(f"{pod}-migration", namespace, pod=pod))
        set_status(control_plane, namespace, f"{pod}-migration",
                   {"phase": phase, "sourceNode": "node-a", "message": f"{pod} is {phase.lower()}"})
    kubeconfig = control_plane.admin_kubeconfig

    table = plugin(kubeconfig, "status", "-n", namespace)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "POD", "SOURCE", "TARGET", "PHASE", "AGE"]
    assert [line.split()[:5] for line in lines[1:]] == [
        ["web-0-migration", "web-0", "node-a", "node-b", "Restoring"],
        ["web-1-migration", "web-1", "node-a", "node-b", "Failed"]]
    wide = plugin(kubeconfig, "status", "-n", namespace, "-o", "wide").stdout
    assert "MESSAGE" in wide.splitlines()[0] and "web-1 is failed" in wide
    assert plugin(kubeconfig, "status", "-n", namespace, "-o", "name").stdout == (
        "podmigration.lpm.my.domain/web-0-migration\npodmigration.lpm.my.domain/web-1-migration\n")

    one = json.loads(plugin(kubeconfig, "status", "web-1-migration", "-n", namespace, "-o", "json").stdout)
    assert one == control_plane.admin.request("GET", lpm_path("PodMigration", namespace, "web-1-migration"))
    listed = json.loads(plugin(kubeconfig, "status", "-n", namespace, "-o", "json").stdout)
    assert [m["status"]["phase"] for m in listed["items"]] == ["Restoring", "Failed"]
    assert yaml.safe_load(plugin(kubeconfig, "status", "-n", namespace, "-o", "yaml").stdout) == listed

    everywhere = plugin(kubeconfig, "status", "-A").stdout.splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == [namespace, "web-0-migration"] for line in everywhere)
    missing = plugin(kubeconfig, "status", "nope", "-n", namespace)
    assert missing.returncode == 1 and "404" in missing.stderr
    usage = plugin(kubeconfig, "status", "--wait", "-n", namespace)
    assert usage.returncode == 2 and "name it" in usage.stderr


def _contents(control_plane: ControlPlane, namespace: str) -> tuple[str, str]:
    pod_content = samples.pod_checkpoint_content(f"pcc-{uuid.uuid4().hex[:6]}", namespace)
    pod_content["spec"]["podNamespace"] = namespace
    container_content = samples.container_checkpoint_content(f"ccc-{uuid.uuid4().hex[:6]}", namespace)
    container_content["spec"]["podNamespace"] = namespace
    for body in (pod_content, container_content):
        control_plane.admin.request("POST", lpm_path(body["kind"]), body)
    return pod_content["metadata"]["name"], container_content["metadata"]["name"]


def _pinned(store: Path) -> bool:
    fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        [entry] = [e for e in scan(fd).entries if e.name == samples.CHECKPOINT_ID]
    finally:
        os.close(fd)
    return entry.pinned


def test_ls_in_every_output_format_and_pins_as_the_collector_reads_them(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    pod_content, container_content = _contents(control_plane, namespace)
    store = tmp_path / "store"
    (store / samples.POD_UID / samples.CHECKPOINT_ID / "app").mkdir(parents=True)
    kubeconfig = control_plane.admin_kubeconfig

    table = plugin(kubeconfig, "ls", "-n", namespace)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "POD", "NODE", "CONTAINERS", "SIZE", "AGE", "STORAGE", "PINNED"]
    cells = {row.split()[0]: row.split() for row in rows}
    assert cells[pod_content][1:5] == ["web-0", "node-a", "app,sidecar", "8.0KiB"]
    assert cells[pod_content][6:] == ["shared", "<unknown>"]  # no --store: nobody read the pin
    assert cells[container_content][1:5] == ["web-0", "node-a", "app", "4.0KiB"]
    assert plugin(kubeconfig, "ls", "-n", "elsewhere").stderr == "No checkpoints found in elsewhere namespace.\n"

    assert set(plugin(kubeconfig, "ls", "-n", namespace, "-o", "name").stdout.splitlines()) == {
        f"podcheckpointcontent.lpm.my.domain/{pod_content}",
        f"containercheckpointcontent.lpm.my.domain/{container_content}"}
    wide = plugin(kubeconfig, "ls", "-n", namespace, "-o", "wide").stdout
    assert f"{samples.POD_UID}/{samples.CHECKPOINT_ID}" in wide and "node-b" in wide

    as_json = json.loads(plugin(kubeconfig, "ls", "-n", namespace, "--store", str(store), "-o", "json").stdout)
    by_name = {item["name"]: item for item in as_json["items"]}
    assert by_name[pod_content] | {"creationTimestamp": None} == {
        "name": pod_content, "kind": "PodCheckpointContent", "podNamespace": namespace, "podName": "web-0",
        "sourceNode": "node-a", "targetNode": "node-b", "containers": ["app", "sidecar"], "compressedSize": 8192,
        "storageType": "shared", "creationTimestamp": None, "pinned": False}
    assert yaml.safe_load(plugin(kubeconfig, "ls", "-n", namespace, "--store", str(store), "-o", "yaml").stdout) \
        == as_json

    # pin: the collector's scanner now sees the checkpoint pinned, and ls says so; unpin undoes it.
    assert not _pinned(store)
    pinned = plugin(kubeconfig, "pin", pod_content, "--store", str(store))
    assert (pinned.returncode, pinned.stdout) == (0, f"{pod_content} pinned\n"), pinned.stderr
    assert _pinned(store)
    assert (store / samples.POD_UID / samples.CHECKPOINT_ID / ".keep").is_file()
    assert plugin(kubeconfig, "pin", container_content, "--store", str(store)).stdout == \
        f"{container_content} was pinned already\n"  # the same checkpoint directory
    listed = json.loads(plugin(kubeconfig, "ls", "-n", namespace, "--store", str(store), "-o", "json").stdout)
    assert {item["pinned"] for item in listed["items"]} == {True}
    unpinned = plugin(kubeconfig, "unpin", container_content, "--store", str(store))
    assert (unpinned.returncode, unpinned.stdout) == (0, f"{container_content} unpinned\n")
    assert not _pinned(store)

    no_store = plugin(kubeconfig, "pin", pod_content)
    assert no_store.returncode == 2 and "--store" in no_store.stderr
    unknown = plugin(kubeconfig, "pin", "no-such-checkpoint", "--store", str(store))
    assert unknown.returncode == 1 and "not found" in unknown.stderr


def _ingested(store: Path, kube_dir: Path, containers: tuple[str, ...]) -> tuple[dict[str, Path], list[Object]]:
    """Real archives ingested into a real store by ``lpm ingest``, one per container of one checkpoint, and the
    content artifacts an agent would announce for them (URI, SHA-256, size from their manifests)."""
    archives, artifacts = {}, []
    for container in containers:
        pod = Pod(container=container)
        archives[container] = make_archive(kube_dir, ArchiveSpec(pod=pod, memory=1 << 20))
        uri = lpm("ingest", str(archives[container]), "--store", str(store), "--node", "node-a",
                  check=True).stdout.strip()
        manifest = json.loads((store / Path(*uri.removeprefix("shared://").split("/")[:-1]) / "manifest.json")
                              .read_text())
        artifacts.append({"containerName": container, "artifactURI": uri, "checksumSHA256": manifest[
            "checksumSHA256"], "compressedSize": manifest["compressedSize"], "storageType": "shared"})
    return archives, artifacts


def test_get_writes_a_containers_archive_verified_against_what_the_api_recorded(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    store, kube_dir = tmp_path / "store", tmp_path / "kubelet"
    store.mkdir(mode=0o700)
    kube_dir.mkdir()
    archives, artifacts = _ingested(store, kube_dir, ("app", "sidecar"))
    # Each archive is ingested on its own, so each has its own checkpoint ID: the content names the first's,
    # and both artifacts are read by their own URIs, as the plugin does.
    body = samples.pod_checkpoint_content(f"pcc-{uuid.uuid4().hex[:6]}", namespace)
    body["spec"].update(podNamespace=namespace, podUID=Pod().uid, containers=artifacts)
    control_plane.admin.request("POST", lpm_path("PodCheckpointContent"), body)
    name, kubeconfig = body["metadata"]["name"], control_plane.admin_kubeconfig

    out = tmp_path / "sidecar.tar"
    done = plugin(kubeconfig, "get", name, "-c", "sidecar", "-o", str(out), "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == archives["sidecar"].read_bytes()
    assert done.stdout == f"{out}: container sidecar of {name}, {out.stat().st_size} bytes, SHA-256 verified\n"

    which = plugin(kubeconfig, "get", name, "-o", str(tmp_path / "x.tar"), "--store", str(store))
    assert which.returncode == 2 and "holds containers app, sidecar: name one with -c" in which.stderr
    assert not (tmp_path / "x.tar").exists()
    none = plugin(kubeconfig, "get", name, "-c", "db", "-o", str(tmp_path / "x.tar"), "--store", str(store))
    assert none.returncode == 1 and "has no container db" in none.stderr

    # A content whose SHA-256 is not the stored dump's (the store rewritten behind the API's back, or a forged
    # content): refused before a byte is written.
    forged = samples.container_checkpoint_content(f"ccc-{uuid.uuid4().hex[:6]}", namespace)
    forged["spec"].update({k: v for k, v in artifacts[0].items() if k != "containerName"},
                          podNamespace=namespace, checksumSHA256="0" * 64)
    control_plane.admin.request("POST", lpm_path("ContainerCheckpointContent"), forged)
    refused = plugin(kubeconfig, "get", forged["metadata"]["name"], "-o", str(tmp_path / "x.tar"), "--store",
                     str(store))
    assert refused.returncode == 1 and "the API recorded " + "0" * 64 in refused.stderr, refused.stderr
    assert not (tmp_path / "x.tar").exists() and list(tmp_path.glob(".x.tar*")) == []
    no_store = plugin(kubeconfig, "get", name, "-c", "app", "-o", str(tmp_path / "x.tar"))
    assert no_store.returncode == 2 and "--store" in no_store.stderr


# -- following a migration ---------------------------------------------------------------------------------

def _migrate_argv(control_plane: ControlPlane, namespace: str, *extra: str) -> list[str]:
    return [PLUGIN, "--kubeconfig", str(control_plane.admin_kubeconfig), "migrate", "web", "--to", "node-b",
            "-n", namespace, *extra]


def test_migrate_on_a_terminal_shows_a_progress_bar_until_it_succeeds(control_plane: ControlPlane,
                                                                      namespace: str) -> None:
    pod = make_pod(control_plane, namespace)
    name = migration_name("web", pod["metadata"]["uid"])
    agents = act_as_agents(control_plane, namespace, name, TO_SUCCESS)
    code, output = run_in_pty(_migrate_argv(control_plane, namespace))  # no --wait: a terminal waits
    agents.join()
    assert code == 0, output
    assert "\r[####" in output and "] 2/5 Checkpointing" in output and "] 4/5 Restoring (RestoredReady)" in output
    assert "s  Succeeded: running on node-b as web-restored" in output
    assert "pod runs on node-b as web-restored (moved from node-a)" in output
    assert "checkpoint to restored pod running: 7s" in output


def test_migrate_piped_prints_plain_lines(control_plane: ControlPlane, namespace: str) -> None:
    pod = make_pod(control_plane, namespace)
    name = migration_name("web", pod["metadata"]["uid"])
    agents = act_as_agents(control_plane, namespace, name, TO_SUCCESS)
    done = subprocess.run(_migrate_argv(control_plane, namespace, "--wait"), capture_output=True, text=True,
                          timeout=60, check=False)
    agents.join()
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout and "\x1b" not in done.stdout and "[#" not in done.stdout
    stages = [line.split(None, 1)[1].split(":")[0] for line in done.stdout.splitlines() if line[:1] == " "]
    assert stages[0] in ("Pending", "Checkpointing") and stages[-1] == "Succeeded"
    assert "Restoring (RestoredReady)" in stages
    assert done.stdout.splitlines()[-2] == "pod runs on node-b as web-restored (moved from node-a)"


def test_a_failed_migration_exits_1_with_the_reason(control_plane: ControlPlane, namespace: str) -> None:
    pod = make_pod(control_plane, namespace)
    name = migration_name("web", pod["metadata"]["uid"])
    reason = "node node-b cannot take the pod: untolerated taint dedicated=gpu:NoSchedule"
    agents = act_as_agents(control_plane, namespace, name, [{"phase": "Failed", "message": reason}])
    done = subprocess.run(_migrate_argv(control_plane, namespace, "--wait"), capture_output=True, text=True,
                          timeout=60, check=False)
    agents.join()
    assert done.returncode == 1
    assert done.stderr == f"kubectl-lpm: migration {namespace}/{name} failed: {reason}\n"


def test_timeout_exits_2_and_the_migration_goes_on(control_plane: ControlPlane, namespace: str) -> None:
    pod = make_pod(control_plane, namespace)
    name = migration_name("web", pod["metadata"]["uid"])
    started = time.monotonic()
    done = subprocess.run(_migrate_argv(control_plane, namespace, "--wait", "--timeout", "2s"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert 2 <= time.monotonic() - started < 20
    assert done.stderr == (f"kubectl-lpm: migration {namespace}/{name} did not end within 2s; it goes on: follow "
                           f"it with `kubectl lpm status {name} -n {namespace} --wait`\n")
    control_plane.admin.request("GET", lpm_path("PodMigration", namespace, name))  # still there


def test_ctrl_c_leaves_the_migration_running_and_says_how_to_follow_it(control_plane: ControlPlane,
                                                                       namespace: str) -> None:
    pod = make_pod(control_plane, namespace)
    name = migration_name("web", pod["metadata"]["uid"])
    # SIGINT as a terminal's Ctrl-C delivers it: a suite started in the background (``cmd &`` in a shell
    # without job control, as CI may be) has it ignored, and a child inherits that, so the plugin never saw it.
    process = subprocess.Popen(_migrate_argv(control_plane, namespace, "--wait"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Whenever the interrupt lands once the migration exists (in the create's answer, or while following),
        # the plugin says how to follow it again: no wait for it to be "following by now".
        wait_for(control_plane, lpm_path("PodMigration", namespace, name))
        process.send_signal(2)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert f"follow it with `kubectl lpm status {name} -n {namespace} --wait`" in err
    assert control_plane.admin.request("GET", lpm_path("PodMigration", namespace, name))["metadata"]["name"] == name



def test_following_survives_an_api_server_restart(control_plane: ControlPlane, namespace: str) -> None:
    """A broken watch, refused connections meanwhile, then a fresh watch cache: it follows on to the end."""
    pod = make_pod(control_plane, namespace)
    name = migration_name("web", pod["metadata"]["uid"])
    process = subprocess.Popen(_migrate_argv(control_plane, namespace, "--wait", "--timeout", "90s"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(control_plane, lpm_path("PodMigration", namespace, name))
        time.sleep(1.0)  # watching by now
        control_plane.restart_apiserver(down=3.0)  # from the main thread: see its docstring
        for status in TO_SUCCESS:
            set_status(control_plane, namespace, name, status)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "pod runs on node-b as web-restored (moved from node-a)" in out
