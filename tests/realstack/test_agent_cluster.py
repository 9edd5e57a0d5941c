"""The agent's cluster mode against the real apiserver, with a kubelet stand-in per node.

The agent is the real ``lpm agent`` process, authenticated with the lpm-agent ServiceAccount's
real token (so RBAC is enforced), calling the stand-in kubelet over TLS verified against the
test CA: checkpoints through the kubelet's API (``--checkpoint-via kubelet``), with
deploy/components/checkpoint-kubelet's binding granted for this module only. Each test gets its own
namespace, checkpoint directory and store.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from lab.controlplane import ControlPlane
from lab.kubelet import KubeletStandIn, pod_body
from lab.manifests import (
    AGENT_NAMESPACE,
    AGENT_SERVICE_ACCOUNT,
    grant_kubelet_checkpoints,
    grant_leases,
    revoke_kubelet_checkpoints,
)
from tests.support import lpm
from watcher.cluster.presence import lease_body
from watcher.runtime.capability import Capability, Verdict

GROUP = "/apis/lpm.my.domain/v1"
_namespaces = itertools.count()


@dataclass
class Node:
    name: str
    kubelet: KubeletStandIn
    checkpoint_dir: Path
    store: Path
    agent: AgentProcess | None = None


@dataclass
class Cluster:
    cp: ControlPlane
    namespace: str
    nodes: dict[str, Node]
    tmp: Path

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.cp.admin.request(method, path, body)

    def create_pod(self, name: str, node: str, containers: tuple[str, ...] = ("app",),
                   annotations: dict[str, str] | None = None) -> dict[str, Any]:
        return self.api("POST", f"/api/v1/namespaces/{self.namespace}/pods",
                        pod_body(self.namespace, name, node, containers, annotations))

    def create(self, plural: str, name: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.api("POST", f"{GROUP}/namespaces/{self.namespace}/{plural}", {
            "apiVersion": "lpm.my.domain/v1", "kind": kind,
            "metadata": {"name": name, "namespace": self.namespace}, "spec": spec})

    def get(self, plural: str, name: str, namespaced: bool = True) -> dict[str, Any]:
        path = f"{GROUP}/namespaces/{self.namespace}/{plural}/{name}" if namespaced else f"{GROUP}/{plural}/{name}"
        return self.api("GET", path)

    def items(self, plural: str, namespaced: bool = True) -> list[dict[str, Any]]:
        path = f"{GROUP}/namespaces/{self.namespace}/{plural}" if namespaced else f"{GROUP}/{plural}"
        return self.api("GET", path)["items"]

    def events(self, involved: str) -> list[dict[str, Any]]:
        return [e for e in self.api("GET", f"/api/v1/namespaces/{self.namespace}/events")["items"]
                if e["involvedObject"]["name"] == involved]

    def start_agent(self, node: str, *extra: str) -> AgentProcess:
        token = self.tmp / "agent.token"
        token.write_text(self.cp.service_account_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT))
        os.chmod(token, 0o600)
        kubeconfig = self.cp.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)
        n = self.nodes[node]
        n.agent = AgentProcess.cluster(
            "--node", node, "--kubeconfig", str(kubeconfig), "--checkpoint-via", "kubelet",
            "--kubelet-ca", str(self.cp.ca_file),
            "--kubelet-token-file", str(token), "--checkpoint-dir", str(n.checkpoint_dir),
            "--store", str(n.store), "--debounce", "0.5", "--namespace", self.namespace, *extra)
        n.agent.wait_logged("cluster mode watching")  # its node Lease is written by then
        return n.agent

    def announce(self, node: str) -> None:
        """What ``node``'s agent writes when it starts: its Lease, here saying its runtime is unknown.

        For tests whose node-b agent starts after the source (or only after the checkpoint, to tamper
        with it or stop it mid-restore): a source refuses a target without a live agent.
        The body is the agent's own (``lease_body``); the agent, once started, renews it.
        """
        capability = Capability(Verdict.UNKNOWN, "", "", f"{node}'s agent not started yet (test)")
        body = lease_body(self.namespace, node, capability, datetime.now(UTC))
        self.api("POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body)


async def eventually(check: Callable[[], Any], timeout: float = 60, what: str = "condition",
                     state: Callable[[], Any] | None = None) -> Any:
    """``check()`` once truthy; on timeout the failure says what was awaited and ``state()``: what explains it."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; state: {await asyncio.to_thread(state)}" if state is not None else ""
            raise AssertionError(f"timed out waiting for {what}{seen}")
        await asyncio.sleep(0.2)


@pytest_asyncio.fixture
async def cluster(control_plane: ControlPlane, tmp_path: Path) -> AsyncIterator[Cluster]:
    # The agents here checkpoint through the (stand-in) kubelet, so they need nodes/checkpoint: granted for
    # each test that uses this fixture (other modules import it too), revoked after it.
    binding = await asyncio.to_thread(grant_kubelet_checkpoints, control_plane.admin)
    namespace = f"lpm-e2e-{os.getpid()}-{next(_namespaces)}"
    control_plane.create_namespace(namespace)
    grant_leases(control_plane.admin, namespace)  # the agents keep their Leases here (--namespace)
    store = tmp_path / "shared-store"
    nodes = {}
    for name in ("node-a", "node-b"):
        directory = tmp_path / name / "checkpoints"
        directory.mkdir(parents=True, mode=0o700)
        kubelet = KubeletStandIn(control_plane, name, directory)
        await kubelet.start()
        nodes[name] = Node(name, kubelet, directory, store)
    yield Cluster(control_plane, namespace, nodes, tmp_path)
    for node in nodes.values():
        if node.agent is not None and node.agent.proc.poll() is None:
            node.agent.kill()
        await node.kubelet.stop()
    await asyncio.to_thread(revoke_kubelet_checkpoints, control_plane.admin, binding)


def _phase(obj: dict[str, Any]) -> str | None:
    return obj.get("status", {}).get("phase")


@pytest.mark.asyncio
async def test_container_checkpoint_is_taken_stored_and_announced(cluster: Cluster, tmp_path: Path) -> None:
    pod = cluster.create_pod("web-0", "node-a")
    cluster.start_agent("node-a")
    cluster.create("containercheckpoints", "web-0-app", "ContainerCheckpoint",
                   {"podName": "web-0", "containerName": "app"})
    done = await eventually(lambda: _phase(c := cluster.get("containercheckpoints", "web-0-app")) in
                            ("Succeeded", "Failed") and c, what="ContainerCheckpoint to finish")
    assert _phase(done) == "Succeeded", done["status"]
    assert done["status"]["ready"] is True and done["status"]["completionTime"]
    content = cluster.get("containercheckpointcontents", done["status"]["boundContentName"], namespaced=False)
    spec = content["spec"]
    assert spec["storageType"] == "shared" and spec["artifactURI"].startswith(f"shared://{pod['metadata']['uid']}/")
    assert spec["containerCheckpointRef"] == {"name": "web-0-app", "namespace": cluster.namespace}
    # The announced artifact is in the store, verified byte for byte against the kubelet's archive.
    out = tmp_path / "got.tar"
    lpm("store", "get", spec["artifactURI"], "--store", str(cluster.nodes["node-a"].store), "-o", str(out), check=True)
    [archive] = cluster.nodes["node-a"].checkpoint_dir.glob("checkpoint-web-0_*.tar")
    assert out.read_bytes() == archive.read_bytes()
    [listed] = [json.loads(row) for row in lpm("store", "ls", "--store", str(cluster.nodes["node-a"].store),
                                               "--json", check=True).stdout.splitlines()]
    assert listed["checkpointID"] in spec["artifactURI"] and listed["podName"] == "web-0"
    manifest_sha = spec["checksumSHA256"]
    assert len(manifest_sha) == 64 and spec["compressedSize"] > 0
    assert [e["reason"] for e in cluster.events("web-0")] == ["Checkpointed"]
    # Stopped (a clean exit: nothing more can come), the agent made exactly one kubelet call and announced
    # the archive once: one content for this request among the cluster's (contents are cluster-scoped,
    # other tests' are there too), and no request of its own for the archive it took.
    assert cluster.nodes["node-a"].agent.stop()[0] == 0  # type: ignore[union-attr]
    assert [status for _, status in cluster.nodes["node-a"].kubelet.requests] == [200]
    ours = [c["metadata"]["name"] for c in cluster.items("containercheckpointcontents", namespaced=False)
            if c["spec"]["containerCheckpointRef"]["namespace"] == cluster.namespace]
    assert ours == [done["status"]["boundContentName"]]
    assert [c["metadata"]["name"] for c in cluster.items("containercheckpoints")] == ["web-0-app"]


@pytest.mark.asyncio
async def test_a_symlink_planted_for_the_pods_checkpoints_holds_the_checkpoint_locally_with_an_event(
        cluster: Cluster) -> None:
    """Any node writes the shared store, so another node can plant a symlink where this pod's checkpoints
    go. The store still takes writes: the request succeeds held locally, the pod's Event says why (a
    Warning), nothing goes through the link, and the kubelet is asked once."""
    pod = cluster.create_pod("planted-0", "node-a")
    store, local = cluster.nodes["node-a"].store, cluster.tmp / "node-a" / "local-store"
    elsewhere = cluster.tmp / "elsewhere"
    elsewhere.mkdir()
    store.mkdir(mode=0o700)
    (store / pod["metadata"]["uid"]).symlink_to(elsewhere)
    source = cluster.start_agent("node-a", "--local-store", str(local), "--move-interval", "0.5")
    cluster.create("containercheckpoints", "planted", "ContainerCheckpoint",
                   {"podName": "planted-0", "containerName": "app"})
    done = await eventually(lambda: _phase(c := cluster.get("containercheckpoints", "planted")) in
                            ("Succeeded", "Failed") and c, what="ContainerCheckpoint to finish")
    message = done["status"]["message"]
    assert _phase(done) == "Succeeded", message
    assert "held locally on node node-a" in message and "is a symlink, refused" in message, message
    content = cluster.get("containercheckpointcontents", done["status"]["boundContentName"], namespaced=False)
    assert content["spec"]["storageType"] == "local"
    assert content["spec"]["artifactURI"].startswith(f"file://{local}/{pod['metadata']['uid']}/")
    # The Event is recorded right after the status: wait for it.
    [event] = await eventually(lambda: cluster.events("planted-0"), what="the pod's Event")
    assert (event["reason"], event["type"]) == ("CheckpointHeldLocally", "Warning")
    assert "is a symlink, refused" in event["message"]
    assert list(elsewhere.iterdir()) == []
    assert [status for _, status in cluster.nodes["node-a"].kubelet.requests] == [200]
    assert not source.logs("shared store unavailable; checkpoints are held in the local store")
    source.wait_logged("local checkpoint cannot be moved")  # the mover keeps it, and says why
    assert _metric(source, "lpm_shared_store_available") == 1
    assert not source.logs("ingest failed")  # the directory watcher does not retry it against the link
    assert source.stop()[0] == 0


@pytest.mark.asyncio
async def test_annotation_migrates_the_checkpoint_phase_to_checkpoint_complete(cluster: Cluster) -> None:
    cluster.announce("node-b")
    cluster.start_agent("node-a")
    pod = cluster.create_pod("cart-0", "node-a", ("app", "sidecar"),
                             annotations={"lpm.my.domain/migrate-to": "node-b"})
    migration = await eventually(lambda: [m for m in cluster.items("podmigrations")
                                          if _phase(m) in ("CheckpointComplete", "Failed")],
                                 what="PodMigration to reach CheckpointComplete")
    [migration] = migration
    status = migration["status"]
    assert status["phase"] == "CheckpointComplete", status
    assert status["sourceNode"] == "node-a" and status["podCheckpointRef"]["name"] == migration["metadata"]["name"]
    checkpoint = cluster.get("podcheckpoints", status["podCheckpointRef"]["name"])
    content = cluster.get("podcheckpointcontents", checkpoint["status"]["boundContentName"], namespaced=False)
    assert content["spec"]["targetNode"] == "node-b" and content["spec"]["podUID"] == pod["metadata"]["uid"]
    # node-b's Lease says its capability is unknown: the migration goes on, with a warning.
    warned = cluster.nodes["node-a"].agent.logs("migrating to a node whose restore capability is unknown")  # type: ignore[union-attr]
    assert warned and "node-b's agent not started yet (test)" in warned[0]["reason"], warned
    uris = {c["containerName"]: c["artifactURI"] for c in content["spec"]["containers"]}
    assert set(uris) == {"app", "sidecar"}
    assert len({uri.split("/")[3] for uri in uris.values()}) == 1  # ONE checkpoint ID for the pod
    store = cluster.nodes["node-a"].store
    [listed] = [json.loads(row) for row in lpm("store", "ls", "--store", str(store), "--json", check=True)
                .stdout.splitlines()]
    assert listed["targetNode"] == "node-b" and sorted(listed["containers"]) == ["app", "sidecar"]
    manifest = json.loads((store / pod["metadata"]["uid"] / listed["checkpointID"] / "app" / "manifest.json")
                          .read_text())
    assert manifest["targetNode"] == "node-b" and manifest["sourceNode"] == "node-a"
    agent = cluster.nodes["node-a"].agent
    assert agent is not None and agent.stop()[0] == 0
    assert [line["pod"] for line in agent.logs("annotated pod's migration created")] == [
        f"{cluster.namespace}/cart-0"]
    # Seeing the annotation again (an update, a relist, a restart) creates no second migration: the
    # restarted agent replays the pod (waited for: it says so), finds its migration and leaves it.
    restarted = cluster.start_agent("node-a")
    # It replays every annotated pod on node-a, other tests' too (the watch is cluster-wide): this one's line.
    ours = f"{cluster.namespace}/cart-0"
    await asyncio.to_thread(restarted.wait_for, lambda lines: any(
        line.get("msg") == "annotated pod's migration exists already" and line.get("pod") == ours for line in lines))
    [again] = [line for line in restarted.logs("annotated pod's migration exists already") if line["pod"] == ours]
    assert again["migration"] == migration["metadata"]["name"]
    assert restarted.stop()[0] == 0
    assert [line for line in restarted.logs("annotated pod's migration created") if line["pod"] == ours] == []
    assert [m["metadata"]["name"] for m in cluster.items("podmigrations")] == [migration["metadata"]["name"]]
    assert [s for _, s in cluster.nodes["node-a"].kubelet.requests] == [200, 200]  # one per container, once
    assert [e["reason"] for e in cluster.events("cart-0")].count("CheckpointComplete") == 1


@pytest.mark.asyncio
async def test_archive_taken_without_a_request_is_ingested_and_announced(cluster: Cluster) -> None:
    pod = cluster.create_pod("manual-0", "node-a")
    cluster.start_agent("node-a")
    who = Pod(uid=pod["metadata"]["uid"], namespace=cluster.namespace, name="manual-0", container="app")
    make_archive(cluster.nodes["node-a"].checkpoint_dir, ArchiveSpec(pod=who, memory=1 << 20), archive_name(who))
    [request] = await eventually(lambda: [c for c in cluster.items("containercheckpoints")
                                          if _phase(c) == "Succeeded"], what="an announced ContainerCheckpoint")
    assert request["metadata"]["annotations"]["lpm.my.domain/origin"] == "kubelet-directory"
    content = cluster.get("containercheckpointcontents", request["status"]["boundContentName"], namespaced=False)
    assert content["spec"]["podName"] == "manual-0" and content["spec"]["artifactURI"].startswith("shared://")
    assert cluster.nodes["node-a"].kubelet.requests == []  # the agent did not checkpoint it again


@pytest.mark.asyncio
async def test_kubelet_failures_are_retried_then_fail_with_the_reason(cluster: Cluster) -> None:
    cluster.create_pod("flaky-0", "node-a")
    cluster.nodes["node-a"].kubelet.fail_next(10, 500)
    cluster.start_agent("node-a")
    cluster.create("containercheckpoints", "flaky", "ContainerCheckpoint",
                   {"podName": "flaky-0", "containerName": "app"})
    done = await eventually(lambda: _phase(c := cluster.get("containercheckpoints", "flaky")) == "Failed" and c,
                            what="ContainerCheckpoint to fail")
    message = done["status"]["message"]
    assert "kubelet on node-a" in message and "500" in message and "after 4 attempts" in message
    assert [s for _, s in cluster.nodes["node-a"].kubelet.requests] == [500] * 4
    assert [e["type"] for e in cluster.events("flaky-0")] == ["Warning"]
    # A transient failure is retried and then succeeds.
    cluster.nodes["node-a"].kubelet._failures.clear()
    cluster.nodes["node-a"].kubelet.fail_next(2, 503)
    cluster.create("containercheckpoints", "flaky-2", "ContainerCheckpoint",
                   {"podName": "flaky-0", "containerName": "app"})
    done = await eventually(lambda: _phase(c := cluster.get("containercheckpoints", "flaky-2")) in
                            ("Succeeded", "Failed") and c, what="retry to succeed")
    assert _phase(done) == "Succeeded", done["status"]


@pytest.mark.asyncio
async def test_migration_to_a_node_that_does_not_exist_fails_with_the_reason(cluster: Cluster) -> None:
    cluster.create_pod("lost-0", "node-a")
    cluster.start_agent("node-a")
    cluster.create("podmigrations", "lost", "PodMigration", {"podName": "lost-0", "targetNode": "node-zz"})
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", "lost")) == "Failed" and m,
                            what="PodMigration to fail")
    assert done["status"]["message"] == "target node node-zz does not exist"
    assert cluster.nodes["node-a"].kubelet.requests == []  # the pod was never touched


def _metric(agent: AgentProcess, name: str) -> float:
    [served] = agent.wait_logged("health endpoints served")
    with urllib.request.urlopen(f"http://127.0.0.1:{served['port']}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.mark.asyncio
async def test_read_only_store_holds_checkpoints_locally_until_it_is_back_then_the_migration_goes_on(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPM_TEST_IMPORT_SECONDS", "0")
    store = cluster.nodes["node-a"].store
    store.mkdir(mode=0o700)
    local = cluster.tmp / "node-a" / "local-store"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(store)], check=True)
    try:
        pod = cluster.create_pod("ro-0", "node-a", annotations={"lpm.my.domain/migrate-to": "node-b"})
        subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
        # node-b's agent starts second (the two requests below then fall in different seconds of the
        # stand-in kubelet's archive names); the source checks for node-b's Lease as soon as it starts.
        cluster.announce("node-b")
        source = cluster.start_agent("node-a", "--local-store", str(local), "--move-interval", "0.5")
        destination = cluster.start_agent("node-b", "--restore-work-dir", str(cluster.tmp / "work-b"),
                                          "--import-prefix", str(SLOW_IMPORT))
        cluster.create("containercheckpoints", "ro", "ContainerCheckpoint", {"podName": "ro-0", "containerName": "app"})

        # The migration's checkpoint is taken anyway, held on node-a, and says so.
        migration = await _checkpoint_complete(cluster, "ro-0")
        name = migration["metadata"]["name"]
        message = migration["status"]["message"]
        assert "held locally on node node-a" in message and "Read-only file system" in message, message
        checkpoint = cluster.get("podcheckpoints", migration["status"]["podCheckpointRef"]["name"])
        content_name = checkpoint["status"]["boundContentName"]
        content = cluster.get("podcheckpointcontents", content_name, namespaced=False)
        cid = content["spec"]["checkpointID"]
        [entry] = content["spec"]["containers"]
        assert entry["storageType"] == "local"
        assert entry["artifactURI"] == f"file://{local}/{pod['metadata']['uid']}/{cid}/app/dump.tar.zst"
        request = await eventually(lambda: _phase(c := cluster.get("containercheckpoints", "ro")) in
                                   ("Succeeded", "Failed") and c, what="ContainerCheckpoint to finish")
        assert _phase(request) == "Succeeded" and "held locally on node node-a" in request["status"]["message"]
        single = cluster.get("containercheckpointcontents", request["status"]["boundContentName"], namespaced=False)
        assert single["spec"]["storageType"] == "local" and single["spec"]["artifactURI"].startswith(f"file://{local}/")
        # The Event follows the status by a request: waited for, not read at once.
        held = await eventually(lambda: len(h := [e for e in cluster.events("ro-0")
                                                  if e["reason"] == "CheckpointHeldLocally"]) >= 2 and h,
                                what="a CheckpointHeldLocally Event for each request")
        assert len(held) == 2 and {e["type"] for e in held} == {"Warning"}, held
        # Both requests in one second of the stand-in kubelet can name the same archive, so the same checkpoint.
        ids = {cid, single["spec"]["artifactURI"].split("/")[-3]}
        assert _metric(source, "lpm_shared_store_available") == 0
        assert _metric(source, "lpm_local_checkpoints") == len(ids)
        # node-b cannot read node-a's disk: it waits, it does not fail.
        destination.wait_logged("checkpoint held in its source node's local store; waiting for the shared store")
        await asyncio.sleep(1)
        assert _phase(cluster.get("podmigrations", name)) == "CheckpointComplete"
        assert [p["metadata"]["name"] for p in _pods(cluster)] == ["ro-0"]

        subprocess.run(["mount", "-o", "remount,rw", str(store)], check=True)
        source.wait_logged("checkpoint moved to the shared store", count=len(ids))
        content = cluster.get("podcheckpointcontents", content_name, namespaced=False)
        [entry] = content["spec"]["containers"]
        assert (entry["storageType"], entry["artifactURI"]) == (
            "shared", f"shared://{pod['metadata']['uid']}/{cid}/app/dump.tar.zst")
        single = cluster.get("containercheckpointcontents", request["status"]["boundContentName"], namespaced=False)
        assert single["spec"]["storageType"] == "shared" and single["spec"]["artifactURI"].startswith("shared://")
        assert "moved from node node-a's local store" in cluster.get("containercheckpoints", "ro")["status"]["message"]
        assert not any(p.is_file() for p in local.rglob("*") if "/.ingest/" not in str(p))  # local copies gone
        assert _metric(source, "lpm_local_checkpoints") == 0
        assert _metric(source, "lpm_checkpoints_moved_to_shared_total") == len(ids)
        # The move re-triggers node-b (the migration's status changed), which restores from the shared store.
        restored = await eventually(lambda: cluster.get("podmigrations", name)["status"].get("restoredPodName"),
                                    what="the restore once the checkpoint is shared")
        assert cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/{restored}")["spec"]["nodeName"] \
            == "node-b"
        out = cluster.tmp / "moved.tar"
        lpm("store", "get", entry["artifactURI"], "--store", str(store), "-o", str(out), check=True)
        # The moved copy is the archive the kubelet wrote, byte for byte (store get checked the manifest's
        # SHA-256 too). Not compared with the file in the kubelet's directory: the two requests may have
        # landed in one second, and then the runtime wrote the second archive over the first's name.
        manifest = json.loads((store / pod["metadata"]["uid"] / cid / "app" / "manifest.json").read_text())
        assert hashlib.sha256(out.read_bytes()).hexdigest() == manifest["uncompressedSHA256"]
        written = {a.name: hashlib.sha256(a.read_bytes()).hexdigest()
                   for a in cluster.nodes["node-a"].checkpoint_dir.glob("checkpoint-ro-0_*.tar")}
        assert manifest["kubeletArchive"] in written
        assert entry["checksumSHA256"] == hashlib.sha256((store / pod["metadata"]["uid"] / cid / "app" /
                                                          "dump.tar.zst").read_bytes()).hexdigest()
    finally:
        for node in ("node-a", "node-b"):
            agent = cluster.nodes[node].agent
            if agent is not None:
                agent.kill()
        subprocess.run(["umount", str(store)], check=True)


@pytest.mark.asyncio
async def test_apiserver_restart_and_expired_watch_miss_nothing_and_repeat_nothing(cluster: Cluster) -> None:
    cluster.create_pod("steady-0", "node-a")
    agent = cluster.start_agent("node-a")
    cluster.create("containercheckpoints", "before", "ContainerCheckpoint",
                   {"podName": "steady-0", "containerName": "app"})
    await eventually(lambda: _phase(cluster.get("containercheckpoints", "before")) == "Succeeded", what="first")
    # Move history on, then compact it away: the versions the agent's watches hold are gone.
    for index in range(5):
        cluster.api("POST", f"/api/v1/namespaces/{cluster.namespace}/configmaps",
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"churn-{index}"}})
    await asyncio.to_thread(cluster.cp.compact_etcd)
    # Not in a worker thread: the apiserver dies with the thread that started it (PR_SET_PDEATHSIG).
    cluster.cp.restart_apiserver(1.0)
    # A request made right after the restart, while the agent is still reconnecting.
    cluster.create("containercheckpoints", "after", "ContainerCheckpoint",
                   {"podName": "steady-0", "containerName": "app"})
    done = await eventually(lambda: _phase(c := cluster.get("containercheckpoints", "after")) in
                            ("Succeeded", "Failed") and c, what="request made after the restart")
    assert _phase(done) == "Succeeded", done["status"]
    assert [s for _, s in cluster.nodes["node-a"].kubelet.requests] == [200, 200]  # nothing done twice
    # Every watch's version was compacted away: each of the agent's four watches, once it is back from its
    # backoff (up to seconds after the outage), gets its 410 and relists, once.
    watched = sorted(["/api/v1/pods", f"{GROUP}/podmigrations", f"{GROUP}/podcheckpoints",
                      f"{GROUP}/containercheckpoints"])

    def relisted() -> list[str]:
        return sorted(line["resource"] for line in agent.logs("watch expired; relisting"))

    await eventually(lambda: len(relisted()) >= len(watched), what="every watch to relist")
    assert relisted() == watched
    assert agent.proc.poll() is None  # it rode out the outage


@pytest.mark.asyncio
async def test_status_update_conflict_is_re_read_and_retried(cluster: Cluster) -> None:
    from watcher.cluster.status import update_status
    from watcher.kube.client import Kube, connect

    cluster.create("containercheckpoints", "raced", "ContainerCheckpoint", {"podName": "x", "containerName": "app"})
    seen: list[str | None] = []

    def mutate(status: dict[str, Any]) -> dict[str, Any]:
        seen.append(status.get("message"))
        if len(seen) == 1:  # another writer gets in between our read and our write
            body = cluster.get("containercheckpoints", "raced")
            body["status"] = {"phase": "Pending", "message": "other writer"}
            cluster.api("PUT", f"{GROUP}/namespaces/{cluster.namespace}/containercheckpoints/raced/status", body)
        return {**status, "phase": "Running", "message": "ours"}

    kube = Kube(await connect(cluster.cp.admin_kubeconfig))
    try:
        await update_status(kube, "ContainerCheckpoint", cluster.namespace, "raced", mutate)
    finally:
        await kube.client.close()
    assert seen == [None, "other writer"]  # re-read after the 409, change applied to the fresh object
    assert cluster.get("containercheckpoints", "raced")["status"] == {"phase": "Running", "message": "ours"}


@pytest.mark.asyncio
async def test_kubelet_that_never_answers_is_timed_out_not_asked_again_then_failed(cluster: Cluster) -> None:
    """The request may have reached the kubelet: sending it again would freeze the pod a second time."""
    cluster.create_pod("stuck-0", "node-a")
    kubelet = cluster.nodes["node-a"].kubelet
    kubelet.hang_next(10, 6.0)
    cluster.start_agent("node-a", "--kubelet-timeout", "1")
    cluster.create("containercheckpoints", "stuck", "ContainerCheckpoint",
                   {"podName": "stuck-0", "containerName": "app"})
    done = await eventually(lambda: _phase(c := cluster.get("containercheckpoints", "stuck")) == "Failed" and c,
                            timeout=90, what="ContainerCheckpoint to fail on the timeout")
    message = done["status"]["message"]
    assert "no answer within 2 s" in message and "not sent again" in message, message
    # The stand-in records a request when it answers, 6 s after it came in; a re-send would follow it.
    await eventually(lambda: kubelet.requests, timeout=20, what="the hung request to end")
    await asyncio.sleep(3)
    assert [status for _, status in kubelet.requests] == [500]


async def _checkpoint_complete(cluster: Cluster, pod: str) -> dict[str, Any]:
    [migration] = await eventually(lambda: [m for m in cluster.items("podmigrations")
                                            if m["spec"]["podName"] == pod and _phase(m) in
                                            ("CheckpointComplete", "Failed")], what="CheckpointComplete")
    assert _phase(migration) == "CheckpointComplete", migration["status"]
    return migration


@pytest.mark.asyncio
async def test_restore_refuses_a_dump_whose_sha256_does_not_match(cluster: Cluster) -> None:
    cluster.create_pod("tampered-0", "node-a", annotations={"lpm.my.domain/migrate-to": "node-b"})
    cluster.announce("node-b")
    cluster.start_agent("node-a")
    migration = await _checkpoint_complete(cluster, "tampered-0")
    store = cluster.nodes["node-a"].store
    [dump] = store.glob("*/*/app/dump.tar.zst")
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot, or someone editing the shared volume
    dump.write_bytes(bytes(data))
    cluster.start_agent("node-b", "--restore-work-dir", str(cluster.tmp / "work-b"))
    name = migration["metadata"]["name"]
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", name)) == "Failed" and m,
                            what="the restore to fail")
    assert "restore failed" in done["status"]["message"] and "dump.tar.zst" in done["status"]["message"]
    pods = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods")["items"]
    assert [p["metadata"]["name"] for p in pods] == ["tampered-0"]  # nothing restored, the source kept
    assert pods[0]["metadata"].get("deletionTimestamp") is None
    assert "RestoreFailed" in [e["reason"] for e in cluster.events("tampered-0")]


@pytest.mark.asyncio
async def test_restore_refuses_a_content_another_node_wrote(cluster: Cluster) -> None:
    """What a compromised node-c could do within its rights (a content naming itself, a request's status
    pointing at it) does not make node-b restore node-c's bytes as node-a's pod."""
    cluster.create_pod("forged-0", "node-a", annotations={"lpm.my.domain/migrate-to": "node-b"})
    cluster.announce("node-b")
    cluster.start_agent("node-a")
    migration = await _checkpoint_complete(cluster, "forged-0")
    checkpoint = cluster.get("podcheckpoints", migration["status"]["podCheckpointRef"]["name"])
    genuine = cluster.get("podcheckpointcontents", checkpoint["status"]["boundContentName"], namespaced=False)
    forged = cluster.api("POST", f"{GROUP}/podcheckpointcontents", {
        "apiVersion": "lpm.my.domain/v1", "kind": "PodCheckpointContent", "metadata": {"name": "forged-by-node-c"},
        "spec": {**genuine["spec"], "sourceNode": "node-c"}})
    checkpoint["status"]["boundContentName"] = forged["metadata"]["name"]
    cluster.api("PUT", f"{GROUP}/namespaces/{cluster.namespace}/podcheckpoints/{checkpoint['metadata']['name']}"
                       "/status", checkpoint)
    cluster.start_agent("node-b", "--restore-work-dir", str(cluster.tmp / "work-b"))
    name = migration["metadata"]["name"]
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", name)) == "Failed" and m,
                            what="the restore to fail")
    assert "forged-by-node-c was taken on node node-c, but source pod" in done["status"]["message"], done["status"]
    assert "runs on node node-a" in done["status"]["message"]
    pods = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods")["items"]
    assert [p["metadata"]["name"] for p in pods] == ["forged-0"]  # nothing restored, the source kept


@pytest.mark.asyncio
async def test_failed_import_keeps_the_source_pod_and_says_why(cluster: Cluster) -> None:
    cluster.create_pod("noimport-0", "node-a", annotations={"lpm.my.domain/migrate-to": "node-b"})
    cluster.announce("node-b")
    cluster.start_agent("node-a")
    migration = await _checkpoint_complete(cluster, "noimport-0")
    # skopeo run through `false`: the node's image store refuses every import.
    cluster.start_agent("node-b", "--restore-work-dir", str(cluster.tmp / "work-b"), "--import-prefix", "false")
    name = migration["metadata"]["name"]
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", name)) == "Failed" and m,
                            what="the restore to fail")
    assert "import of localhost/lpm-checkpoint" in done["status"]["message"]
    pods = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods")["items"]
    assert [p["metadata"]["name"] for p in pods] == ["noimport-0"]
    assert not any((cluster.tmp / "work-b").iterdir())  # scratch archives and images cleaned up


def _set_ready(cluster: Cluster, node: str, ready: bool) -> None:
    """What the node's kubelet (or the node lifecycle controller) would write: its Ready condition."""
    body = cluster.api("GET", f"/api/v1/nodes/{node}")
    for condition in body["status"]["conditions"]:
        if condition["type"] == "Ready":
            condition.update(status="True" if ready else "False", reason="KubeletReady" if ready else "KubeletNotReady",
                             message="stand-in" if ready else "PLEG is not healthy (test)")
    cluster.api("PUT", f"/api/v1/nodes/{node}/status", body)


@pytest.mark.asyncio
async def test_migration_to_a_node_that_is_not_ready_is_refused(cluster: Cluster) -> None:
    _set_ready(cluster, "node-b", False)
    try:
        cluster.create_pod("stranded-0", "node-a", annotations={"lpm.my.domain/migrate-to": "node-b"})
        cluster.start_agent("node-a")
        [done] = await eventually(lambda: [m for m in cluster.items("podmigrations") if _phase(m) == "Failed"],
                                  what="PodMigration to fail")
        assert done["status"]["message"] == "target node node-b is not Ready"
        assert cluster.nodes["node-a"].kubelet.requests == []  # the pod was never frozen
        assert cluster.items("podcheckpoints") == []
        [event] = [e for e in cluster.events("stranded-0") if e["reason"] == "MigrationRefused"]
        assert event["type"] == "Warning" and "not Ready" in event["message"]
        pod = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/stranded-0")
        assert pod["metadata"].get("deletionTimestamp") is None
    finally:
        _set_ready(cluster, "node-b", True)  # nodes are cluster-scoped: leave node-b as the fixture made it


SLOW_IMPORT = Path(__file__).with_name("slow_import.sh")


def _pods(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods")["items"]


@pytest.mark.asyncio
async def test_restore_refuses_a_checkpoint_missing_a_listed_container(cluster: Cluster,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    imports = cluster.tmp / "imports.log"
    monkeypatch.setenv("LPM_TEST_IMPORT_LOG", str(imports))  # inherited by the agent and its import prefix
    monkeypatch.setenv("LPM_TEST_IMPORT_SECONDS", "0")
    cluster.create_pod("partial-0", "node-a", ("app", "sidecar"), annotations={"lpm.my.domain/migrate-to": "node-b"})
    cluster.announce("node-b")
    cluster.start_agent("node-a")
    migration = await _checkpoint_complete(cluster, "partial-0")
    # The marker lists app and sidecar; sidecar's directory is gone (a partial copy, an operator's rm).
    [sidecar] = cluster.nodes["node-a"].store.glob("*/*/sidecar")
    shutil.rmtree(sidecar)
    cluster.start_agent("node-b", "--restore-work-dir", str(cluster.tmp / "work-b"),
                        "--import-prefix", str(SLOW_IMPORT))
    name = migration["metadata"]["name"]
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", name)) == "Failed" and m,
                            what="the restore to fail")
    message = done["status"]["message"]
    assert message.startswith("restore failed") and "marker lists container sidecar" in message, message
    assert [p["metadata"]["name"] for p in _pods(cluster)] == ["partial-0"]  # nothing restored, the source kept
    assert _pods(cluster)[0]["metadata"].get("deletionTimestamp") is None
    assert not imports.exists()  # not even app's image was imported: the checkpoint was refused as a whole
    assert "RestoreFailed" in [e["reason"] for e in cluster.events("partial-0")]
    assert not any((cluster.tmp / "work-b").iterdir())


@pytest.mark.asyncio
async def test_destination_restarted_mid_restore_restores_exactly_once(cluster: Cluster,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    imports = cluster.tmp / "imports.log"
    monkeypatch.setenv("LPM_TEST_IMPORT_LOG", str(imports))
    monkeypatch.setenv("LPM_TEST_IMPORT_SECONDS", "4")
    cluster.create_pod("moving-0", "node-a", annotations={"lpm.my.domain/migrate-to": "node-b"})
    cluster.announce("node-b")
    cluster.start_agent("node-a")
    migration = await _checkpoint_complete(cluster, "moving-0")
    name = migration["metadata"]["name"]
    flags = ("--restore-work-dir", str(cluster.tmp / "work-b"), "--import-prefix", str(SLOW_IMPORT))
    first = cluster.start_agent("node-b", *flags)
    await eventually(imports.exists, what="the import to start")
    assert _phase(cluster.get("podmigrations", name)) == "Restoring"
    first.kill()  # SIGKILL while the image is being imported: no cleanup, no last status write
    assert [p["metadata"]["name"] for p in _pods(cluster)] == ["moving-0"]
    cluster.start_agent("node-b", *flags)
    restored_name = await eventually(lambda: cluster.get("podmigrations", name)["status"].get("restoredPodName"),
                                     what="the restored pod")
    restored = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/{restored_name}")
    assert restored["spec"]["nodeName"] == "node-b"
    assert restored["spec"]["containers"][0]["image"].startswith("localhost/lpm-checkpoint")
    _report_running(cluster, restored_name)
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", name)) in ("Succeeded", "Failed") and m,
                            what="the migration to finish")
    assert _phase(done) == "Succeeded", done["status"]
    assert done["status"]["restoredPodName"] == restored_name
    pods = {p["metadata"]["name"]: p for p in _pods(cluster)}
    owned = [n for n, p in pods.items() if p["metadata"].get("labels", {}).get("lpm.my.domain/migration") == name]
    assert owned == [restored_name]  # restored exactly once
    # The source pod is being deleted (no kubelet confirms it, so it lingers with a deletionTimestamp).
    assert "moving-0" not in pods or pods["moving-0"]["metadata"].get("deletionTimestamp")
    # The interrupted import was done again by the restarted agent; the pod was created once.
    assert len(imports.read_text().splitlines()) == 2
    assert [e["reason"] for e in cluster.events(restored_name)] == ["Restored"]
    [migrated] = [e for e in cluster.events("moving-0") if e["reason"] == "Migrated"]
    assert migrated["message"].endswith("; this pod is removed")


def _report_running(cluster: Cluster, pod_name: str) -> None:
    """There is no runtime behind node-b's stand-in: the test plays its kubelet and reports the pod running."""
    pod = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/{pod_name}")
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                     "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True,
                                            "restartCount": 0, "state": {"running": {"startedAt": started}}}
                                           for c in pod["spec"]["containers"]]}
    cluster.api("PUT", f"/api/v1/namespaces/{cluster.namespace}/pods/{pod_name}/status", pod)


@pytest.mark.asyncio
async def test_retain_original_pod_keeps_the_source_and_both_pods_say_what_happened(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPM_TEST_IMPORT_SECONDS", "0")
    cluster.create_pod("kept-0", "node-a")
    cluster.create("podmigrations", "keep-it", "PodMigration",
                   {"podName": "kept-0", "targetNode": "node-b", "retainOriginalPod": True})
    cluster.announce("node-b")
    cluster.start_agent("node-a")
    cluster.start_agent("node-b", "--restore-work-dir", str(cluster.tmp / "work-b"),
                        "--import-prefix", str(SLOW_IMPORT))
    restored_name = await eventually(lambda: cluster.get("podmigrations", "keep-it")["status"].get("restoredPodName"),
                                     what="the restored pod")
    _report_running(cluster, restored_name)
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", "keep-it")) in ("Succeeded", "Failed")
                            and m, what="the migration to finish")
    assert _phase(done) == "Succeeded", done["status"]
    # The checkpoint's last progress and the whole freeze window, as each agent wrote them into the migration.
    content = cluster.get("podcheckpointcontents", cluster.get("podcheckpoints", "keep-it")["status"]
                          ["boundContentName"], namespaced=False)
    [stored] = content["spec"]["containers"]
    [moved] = done["status"]["progress"]
    assert moved["containerName"] == "app" and moved["done"] is True, moved
    assert moved["bytesCheckpointed"] == moved["bytesTotal"] > 0 and moved["bytesStored"] == stored["compressedSize"]
    window = done["status"]["freezeWindow"]
    assert set(window) == {"checkpointRequested", "checkpointComplete", "restoreStarted", "restoredRunning",
                           "seconds", "checkpointSeconds", "handoverSeconds", "restoreSeconds"}, window
    spans = window["checkpointSeconds"] + window["handoverSeconds"] + window["restoreSeconds"]
    assert all(window[k] >= 0 for k in ("checkpointSeconds", "handoverSeconds", "restoreSeconds")), window
    assert abs(window["seconds"] - spans) < 0.005, window
    destination = cluster.nodes["node-b"].agent
    assert destination is not None
    assert _metric(destination, "lpm_freeze_window_seconds_count") == 1
    assert _metric(destination, "lpm_freeze_window_seconds_sum") == pytest.approx(window["seconds"], abs=1e-6)
    source = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/kept-0")
    assert source["metadata"].get("deletionTimestamp") is None  # kept, as asked
    assert source["spec"]["nodeName"] == "node-a"
    [migrated] = [e for e in cluster.events("kept-0") if e["reason"] == "Migrated"]
    assert migrated["type"] == "Normal"
    assert migrated["message"] == (f"running on node-b as {restored_name} (keep-it); "
                                   "this pod was kept: retainOriginalPod")
    assert [e["reason"] for e in cluster.events(restored_name)] == ["Restored"]


@pytest.mark.asyncio
async def test_marker_poll_alone_brings_the_restore(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PodMigration watch on node-b: the store's completion marker is the only signal it gets.

    node-b's half runs in this process — the agent's own Destination and worker, with the
    lpm-agent ServiceAccount's token — but fed by the marker poller alone, reading the store
    through node-b's own bindfs view of the shared directory.
    """
    import threading

    from watcher.kube.client import Kube, connect
    from watcher.kube.informer import Workers
    from watcher.observe import AgentMetrics
    from watcher.restore.destination import Destination
    from watcher.restore.importer import ContainersStorageImporter
    from watcher.restore.markers import poll_markers
    from watcher.restore.source import DirectorySource
    from watcher.store import fsio
    from watcher.zstream import CompressionSettings

    monkeypatch.setenv("LPM_TEST_IMPORT_SECONDS", "0")
    cluster.create_pod("polled-0", "node-a", annotations={"lpm.my.domain/migrate-to": "node-b"})
    cluster.announce("node-b")
    cluster.start_agent("node-a")
    migration = await _checkpoint_complete(cluster, "polled-0")
    name = migration["metadata"]["name"]
    view = cluster.tmp / "view-b"
    view.mkdir(mode=0o700)
    await asyncio.to_thread(subprocess.run, ["bindfs", str(cluster.nodes["node-a"].store), str(view)], check=True)
    kube = Kube(await connect(cluster.cp.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)))
    root_fd = fsio.open_root(view, create=False)
    work = cluster.tmp / "work-b"
    source = DirectorySource(root_fd, CompressionSettings(), threading.Event())
    destination = Destination(kube, "node-b", source, work, ContainersStorageImporter((str(SLOW_IMPORT),)),
                              AgentMetrics(view),
                              lambda delay, obj: migrations.submit_later(delay, "MODIFIED", dict(obj)))
    migrations = Workers("podmigration", destination.reconcile)
    stop = asyncio.Event()
    poller = asyncio.create_task(poll_markers(kube, "node-b", source.markers, migrations.submit, stop, interval=0.5))
    try:
        restored = await eventually(lambda: cluster.get("podmigrations", name)["status"].get("restoredPodName"),
                                    what="the restore the marker poke brings")
        pod = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/{restored}")
        assert pod["spec"]["nodeName"] == "node-b"
        assert pod["metadata"]["labels"]["lpm.my.domain/migration"] == name
        assert _phase(cluster.get("podmigrations", name)) == "Restoring"  # waits for the pod to run
    finally:
        stop.set()
        await poller
        await migrations.close()
        await kube.client.close()
        os.close(root_fd)
        await asyncio.to_thread(subprocess.run, ["umount", str(view)], check=True)
