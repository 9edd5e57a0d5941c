"""A live migration end to end: a counter in memory moves from node-a to node-b and goes on.

Real parts throughout: the kube-apiserver + etcd, two lpm agents (one per node) with the agent
ServiceAccount's token, a kubelet stand-in per node backed by podman + CRIU in the trixie
rootfs, and one shared store seen through two bindfs views (two NFS clients: inotify on one
does not see the other's writes, so the destination must rely on the API and polling).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
import pytest_asyncio

from lab.apiclient import ApiError
from lab.controlplane import ControlPlane
from lab.manifests import AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT
from lab.kubelet import KubeletStandIn
from lab.runtime import PodmanRuntime, build_base_image
from lab.sandbox import Sandbox, rootfs
from lab.agent import AgentProcess

NAMESPACE = "live"
COUNTER = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    share = tmp_path_factory.mktemp("live-share")
    with Sandbox(rootfs(), share) as box:
        build_base_image(box)
        yield box


@pytest.fixture
def views(sandbox: Sandbox) -> Iterator[tuple[Path, Path]]:
    """One store directory, two bindfs views of it: node-a's and node-b's."""
    store = sandbox.share / "store"
    store.mkdir(mode=0o700)
    view_a, view_b = sandbox.share / "view-a", sandbox.share / "view-b"
    for view in (view_a, view_b):
        view.mkdir()
        subprocess.run(["bindfs", "--no-allow-other", str(store), str(view)], check=True)
    yield view_a, view_b
    for view in (view_a, view_b):
        subprocess.run(["fusermount3", "-u", str(view)], check=False)
        subprocess.run(["umount", "-l", str(view)], check=False)


def _migration(cp: ControlPlane) -> dict[str, Any] | None:
    items = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations")["items"]
    return items[0] if items else None


@pytest_asyncio.fixture
async def nodes(control_plane: ControlPlane, sandbox: Sandbox) -> AsyncIterator[dict[str, Any]]:
    control_plane.create_namespace(NAMESPACE)
    stop = asyncio.Event()
    made: dict[str, Any] = {}
    for node in ("node-a", "node-b"):
        directory = sandbox.share / node / "checkpoints"
        directory.mkdir(parents=True, mode=0o700)
        runtime = PodmanRuntime(sandbox, control_plane, node, NAMESPACE)
        kubelet = KubeletStandIn(control_plane, node, directory, runtime=runtime)
        await kubelet.start()
        made[node] = {"dir": directory, "runtime": runtime, "kubelet": kubelet,
                      "restores": asyncio.create_task(runtime.run_restores(stop))}
    yield made
    stop.set()
    for node in made.values():
        await node["restores"]
        await node["kubelet"].stop()


def _agent(cp: ControlPlane, sandbox: Sandbox, node: str, directory: Path, store: Path) -> AgentProcess:
    token = sandbox.share / f"{node}.token"
    token.write_text(cp.service_account_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT))
    os.chmod(token, 0o600)
    agent = AgentProcess.cluster(
        "--node", node, "--kubeconfig", str(cp.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)),
        "--kubelet-ca", str(cp.ca_file), "--kubelet-token-file", str(token), "--checkpoint-dir", str(directory),
        "--store", str(store), "--restore-work-dir", str(sandbox.share / f"{node}-work"),
        "--import-prefix", shlex.join(sandbox.prefix()), "--debounce", "0.3")
    agent.wait_logged("cluster mode watching")
    return agent


@pytest.mark.asyncio
async def test_counter_survives_migration_from_node_a_to_node_b(
        control_plane: ControlPlane, sandbox: Sandbox, views: tuple[Path, Path], nodes: dict[str, Any]) -> None:
    cp = control_plane
    pod = cp.admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "counter", "namespace": NAMESPACE},
        "spec": {"nodeName": "node-a", "containers": [
            {"name": "count", "image": build_base_image(sandbox), "command": ["sh", "-c", COUNTER]}]}})
    await asyncio.to_thread(nodes["node-a"]["runtime"].start_pod, pod)
    agents = [_agent(cp, sandbox, "node-a", nodes["node-a"]["dir"], views[0]),
              _agent(cp, sandbox, "node-b", nodes["node-b"]["dir"], views[1])]
    try:
        await asyncio.sleep(1.5)  # let it count
        started = time.monotonic()
        cp.admin.request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/counter",  # kubectl annotate
                         {"metadata": {"annotations": {"lpm.my.domain/migrate-to": "node-b"}}},
                         content_type="application/merge-patch+json")
        seen: dict[str, float] = {}
        while True:
            migration = await asyncio.to_thread(_migration, cp)
            phase = (migration or {}).get("status", {}).get("phase")
            if phase and phase not in seen:
                seen[phase] = time.monotonic() - started
            if phase in ("Succeeded", "Failed") or time.monotonic() - started > 180:
                break
            await asyncio.sleep(0.05)
        assert phase == "Succeeded", (migration or {}).get("status")
        restored_name = migration["status"]["restoredPodName"]  # type: ignore[index]
        before = nodes["node-a"]["runtime"].logs(NAMESPACE, "counter", "count")
        await asyncio.sleep(1.0)
        after = nodes["node-b"]["runtime"].logs(NAMESPACE, restored_name, "count")
        last_before, first_after = int(before[-1]), int(after[0])
        freeze = nodes["node-b"]["runtime"].restored_at[restored_name] - nodes["node-a"]["kubelet"].checkpoint_started[0]
        print(f"\ncounter: last before {last_before}, first after {first_after}, now {after[-1]}")
        print("phases (s after the annotation): " + ", ".join(f"{k} {v:.2f}" for k, v in seen.items()))
        print(f"freeze window (checkpoint requested -> restored process running): {freeze:.2f} s; "
              f"CRIU dump via podman {nodes['node-a']['kubelet'].checkpoint_seconds[0]:.2f} s")
        [restore] = agents[1].logs("restored pod created")
        print("restore on node-b (s): " + ", ".join(f"{k} {restore[k]}" for k in (
            "verifySeconds", "imageSeconds", "importSeconds", "createSeconds", "seconds")))
        assert first_after == last_before + 1, "the counter must go on from its last value: no reset, no gap"
        assert int(after[-1]) > first_after, "and keep counting"
        async def source_gone() -> bool:
            try:
                await asyncio.to_thread(cp.admin.request, "GET", f"/api/v1/namespaces/{NAMESPACE}/pods/counter")
            except ApiError as err:
                return err.status == 404
            return False

        deadline = time.monotonic() + 20
        while not await source_gone():
            assert time.monotonic() < deadline, "the source pod should be deleted once the restored one runs"
            await asyncio.sleep(0.1)
        restored = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{restored_name}")
        assert restored["spec"]["nodeName"] == "node-b"
        assert restored["metadata"]["annotations"]["lpm.my.domain/restored-from"] == f"{NAMESPACE}/counter"
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.stop()
