"""Live migrations on real nodes: a real kubelet checkpoints, a real containerd restores, through lpm.

The cluster is lab/cluster.py's: kube-apiserver, kube-controller-manager, kube-scheduler, and three nodes,
each a kubelet v1.37 over containerd 2.3 + runc + CRIU in namespaces of its own; node-c's containerd lacks
the restore opt-in (enable_experimental_restore_via_create), so a migration to it must be refused before
anything is checkpointed. The scenario is
lab/live.py's, the code the README's run command shows: it raises ``MigrationFailed`` (with the
migration's status, the agents' and the nodes' logs) unless every counter goes on on node-b from the value
it was checkpointed at and the source pod is gone. Progress lines are printed (pytest -s shows them).

The agents take checkpoints from their node's containerd over its CRI socket (the default), which needs no
API permission; one test switches node-a's agent to the kubelet's API (deploy/components/checkpoint-kubelet)
to show that path still works where a user chooses it, and one shows what the default buys: the agent's
token, bound to its pod on node-a as the DaemonSet's is, cannot have any kubelet dump any pod, directly or
through the API server (docs/threat-model.md, rule 8).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lab.agent import AgentProcess
from lab.cluster import RealCluster
from lab.holders import MIB, install_memhold, migrate_at_once, run_holder, verified
from lab.images import BUSYBOX_IMAGE, memhold_image
from lab.live import NAMESPACE, SOURCE, TARGET, annotate, host_agents, migrate, read_logs, run_pod, start_agent
from lab.manifests import (
    AGENT_NAMESPACE,
    AGENT_SERVICE_ACCOUNT,
    grant_kubelet_checkpoints,
    revoke_kubelet_checkpoints,
)
from lab.network import GATEWAY
from lab.pki import CertificateAuthority
from lab.sandbox import rootfs
from tests.restore.tools import RegistryTLS, Skopeo, run_registry
from tests.support import lpm, run_in_pty
from watcher.cluster.objects import migration_name

NO_RESTORE = "node-c"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    with RealCluster((SOURCE, TARGET, NO_RESTORE), restore_via_create={NO_RESTORE: False}) as real:
        real.control_plane.create_namespace(NAMESPACE)
        yield real


@pytest.fixture(scope="module")
def agents(cluster: RealCluster) -> Iterator[dict[str, AgentProcess]]:
    with host_agents(cluster) as started:
        yield started


@pytest.mark.asyncio
async def test_counter_moves_to_node_b_on_real_kubelets(cluster: RealCluster,
                                                        agents: dict[str, AgentProcess]) -> None:
    await run_pod(cluster, "counter", ("count",), SOURCE)
    outcome = await migrate(cluster, agents, "counter", ("count",), print)
    assert outcome.restored_pod.startswith("counter-restored-")
    # Taken by node-a's containerd over its CRI socket: lpm named the archive (to the microsecond).
    [archive] = [line["archive"] for line in agents[SOURCE].logs("container checkpointed")
                 if line.get("pod") == f"{NAMESPACE}/counter"]
    assert "." in archive.rsplit("-", 1)[-1].removesuffix(".tar"), archive


@pytest.mark.asyncio
async def test_two_containers_each_keep_their_state(cluster: RealCluster,
                                                    agents: dict[str, AgentProcess]) -> None:
    await run_pod(cluster, "pair", ("left", "right"), SOURCE)
    outcome = await migrate(cluster, agents, "pair", ("left", "right"), print)
    assert outcome.restored_pod.startswith("pair-restored-")


@pytest.mark.asyncio
async def test_a_node_that_cannot_restore_is_refused_before_the_checkpoint(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    lease = cp.admin.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NAMESPACE}/leases/"
                                    f"lpm-node-{NO_RESTORE}")["metadata"]["annotations"]
    assert lease["lpm.my.domain/restore-capable"] == "false", lease
    assert "enable_experimental_restore_via_create=false" in lease["lpm.my.domain/restore-capability"], lease

    await run_pod(cluster, "stay", ("count",), SOURCE)
    annotate(cp, "stay", NO_RESTORE)
    deadline = time.monotonic() + 60
    while (migration := _migration_of(cluster, "stay")) is None or \
            migration.get("status", {}).get("phase") not in ("Failed", "Succeeded"):
        assert time.monotonic() < deadline, f"no outcome: {migration}\n{''.join(agents[SOURCE].raw[-20:])}"
        await asyncio.sleep(0.2)
    status = migration["status"]
    assert status["phase"] == "Failed", status
    assert NO_RESTORE in status["message"] and "enable_experimental_restore_via_create=false" in status["message"]
    # Nothing was checkpointed: no request to node-a's kubelet, no archive, the pod counting on where it was.
    assert not list(cluster.nodes[SOURCE].checkpoint_dir.glob("checkpoint-stay_*")), \
        sorted(p.name for p in cluster.nodes[SOURCE].checkpoint_dir.iterdir())
    assert not [line for line in agents[SOURCE].logs("container checkpointed")
                if line.get("pod") == f"{NAMESPACE}/stay"]
    before = len(read_logs(cp, "stay", "count"))
    await asyncio.sleep(1)
    pod = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/stay")
    assert pod["spec"]["nodeName"] == SOURCE and pod["status"]["phase"] == "Running"
    assert len(read_logs(cp, "stay", "count")) > before  # still counting
    events = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=involvedObject.name%3Dstay")
    refused = [e for e in events["items"] if e["reason"] == "MigrationRefused"]
    assert refused and refused[0]["type"] == "Warning", [e["reason"] for e in events["items"]]


@pytest.mark.asyncio
async def test_the_kubelet_path_still_migrates_where_it_is_chosen(cluster: RealCluster,
                                                                 agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    runtime_agent = agents[SOURCE]
    runtime_agent.stop()
    binding = grant_kubelet_checkpoints(cp.admin)  # what components/checkpoint-kubelet adds
    agents[SOURCE] = start_agent(cp, cluster.nodes[SOURCE], cluster.store_views[SOURCE], via="kubelet")
    try:
        agents[SOURCE].wait_logged("cluster mode watching")
        await run_pod(cluster, "via-kubelet", ("count",), SOURCE)
        outcome = await migrate(cluster, agents, "via-kubelet", ("count",), print)
        assert outcome.restored_pod.startswith("via-kubelet-restored-")
        # The kubelet named the archive (to the second; lpm's own names carry microseconds).
        [archive] = [line["archive"] for line in agents[SOURCE].logs("container checkpointed")
                     if line.get("pod") == f"{NAMESPACE}/via-kubelet"]
        assert "." not in archive.rsplit("-", 1)[-1].removesuffix(".tar"), archive
    finally:
        agents[SOURCE].stop()
        revoke_kubelet_checkpoints(cp.admin, binding)
        agents[SOURCE] = start_agent(cp, cluster.nodes[SOURCE], cluster.store_views[SOURCE])
        agents[SOURCE].wait_logged("cluster mode watching")


@pytest.mark.asyncio
async def test_a_migration_with_encryption_at_rest_stores_the_dump_sealed_and_restores_it(
        cluster: RealCluster, agents: dict[str, AgentProcess], tmp_path: Path) -> None:
    """Both agents with --encryption-keys (docs/encryption.md): the dump is stored sealed under the current key,
    and node-b opens it with the key its manifest names; the counter goes on after the gap."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "2026-12").write_bytes(os.urandom(32))
    (keys / "2026-12").chmod(0o600)
    cp = cluster.control_plane
    try:
        for node in (SOURCE, TARGET):
            agents[node].stop()
            agents[node] = start_agent(cp, cluster.nodes[node], cluster.store_views[node],
                                       "--encryption-keys", str(keys))
        for node in (SOURCE, TARGET):
            agents[node].wait_logged("cluster mode watching")
        await run_pod(cluster, "sealed", ("count",), SOURCE)
        outcome = await migrate(cluster, agents, "sealed", ("count",), print)
        assert outcome.restored_pod.startswith("sealed-restored-")
    finally:
        for node in (SOURCE, TARGET):
            agents[node].stop()
            agents[node] = start_agent(cp, cluster.nodes[node], cluster.store_views[node])
        for node in (SOURCE, TARGET):
            agents[node].wait_logged("cluster mode watching")
    manifest, head = _stored(cluster.store_views[SOURCE], "sealed", "count")
    assert (manifest["encryption"]["format"], manifest["encryption"]["keyID"]) == ("lpm-seal-v1", "2026-12"), manifest
    assert head == b"LPMSEAL", head  # sealed (docs/encryption.md), not a plain zstd frame


def _stored(store: Path, pod: str, container: str) -> tuple[dict[str, Any], bytes]:
    """The manifest of ``pod``'s one checkpoint in the store, and the first bytes of its stored dump."""
    [manifest] = [m for path in store.glob(f"*/*/{container}/manifest.json")
                  if (m := json.loads(path.read_text()))["podName"] == pod]
    with open(store / manifest["podUID"] / manifest["checkpointID"] / container / "dump.tar.zst", "rb") as dump:
        return manifest, dump.read(7)


@pytest.mark.asyncio
async def test_an_agents_token_has_no_kubelet_dump_any_pod(cluster: RealCluster,
                                                           agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    # The token the DaemonSet's pod on node-a gets: the agent's ServiceAccount, bound to a pod on node-a.
    holder = "lpm-agent-token-holder"
    cp.admin.request("POST", f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": holder, "namespace": AGENT_NAMESPACE},
        "spec": {"nodeName": SOURCE, "serviceAccountName": AGENT_SERVICE_ACCOUNT, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "agent", "image": "lpm-not-pulled:never", "imagePullPolicy": "Never"}]}})
    try:
        token = cp.service_account_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, pod=holder)
        await run_pod(cluster, "elsewhere", ("count",), TARGET)
        await run_pod(cluster, "here", ("count",), SOURCE)
        user = f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}"
        for node, pod in ((TARGET, "elsewhere"), (SOURCE, "here")):
            # Straight to the node's kubelet, as the kubelet path would call it.
            status, body = _post(cluster, _kubelet_address(cluster, node), 10250,
                                 f"/checkpoint/{NAMESPACE}/{pod}/count", token)
            assert status == 403, (node, status, body)
            assert f"user={user}, verb=create, resource=nodes, subresource(s)=[checkpoint]" in body, body
            # Through the API server's proxy to the kubelet.
            status, body = _post(cluster, None, None, f"/api/v1/nodes/{node}/proxy/checkpoint/{NAMESPACE}/{pod}/count",
                                 token)
            assert status == 403 and "nodes/proxy" in body, (node, status, body)
        # Nothing was dumped: no archive of either pod on either node, and both still count.
        for node in (SOURCE, TARGET):
            archives = sorted(p.name for p in cluster.nodes[node].checkpoint_dir.glob("checkpoint-*"))
            assert not [a for a in archives if a.startswith(("checkpoint-elsewhere_", "checkpoint-here_"))], archives
    finally:
        cp.admin.request("DELETE", f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods/{holder}")


def _kubelet_address(cluster: RealCluster, node: str) -> str:
    addresses = cluster.control_plane.admin.request("GET", f"/api/v1/nodes/{node}")["status"]["addresses"]
    return next(a["address"] for a in addresses if a["type"] == "InternalIP")


def _post(cluster: RealCluster, host: str | None, port: int | None, path: str, token: str) -> tuple[int, str]:
    """POST ``path`` with ``token`` to a kubelet, or (``host`` None) to the API server; TLS verified."""
    cp = cluster.control_plane
    if host is None:
        host, _, server_port = cp.server.removeprefix("https://").partition(":")
        port = int(server_port)
    connection = http.client.HTTPSConnection(host, port, timeout=30,
                                             context=ssl.create_default_context(cafile=str(cp.ca_file)))
    try:
        connection.request("POST", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def _migration_of(cluster: RealCluster, pod: str) -> dict[str, Any] | None:
    items = cluster.control_plane.admin.request(
        "GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations")["items"]
    return next((m for m in items if m["spec"]["podName"] == pod), None)


@pytest.mark.asyncio
async def test_many_migrations_at_once_each_pod_keeps_its_own_memory(cluster: RealCluster,
                                                                      agents: dict[str, AgentProcess]) -> None:
    """Eight pods leave node-a while two leave node-b for node-a, all annotated at once. node-a's agent takes at
    most two checkpoints at a time (--max-concurrent-checkpoints 2): the rest wait, and their status says so.
    Every pod holds a different number of MiB and checks each byte after its restore (bench/memhold), so a
    restored pod with another pod's memory would say so."""
    cp = cluster.control_plane
    install_memhold(cluster, (SOURCE, TARGET))
    agents[SOURCE].stop()
    agents[SOURCE] = start_agent(cp, cluster.nodes[SOURCE], cluster.store_views[SOURCE],
                                 "--max-concurrent-checkpoints", "2")
    try:
        agents[SOURCE].wait_logged("cluster mode watching")
        sizes = {**{f"many-a{i}": (8 + i) * MIB for i in range(8)}, **{f"many-b{i}": (20 + i) * MIB for i in range(2)}}
        home = {pod: SOURCE if pod.startswith("many-a") else TARGET for pod in sizes}
        await asyncio.gather(*(run_holder(cluster, pod, size, home[pod]) for pod, size in sizes.items()))
        moved = await migrate_at_once(cluster, {pod: TARGET if home[pod] == SOURCE else SOURCE for pod in sizes},
                                      timeout=600)
        failed = {pod: m.message for pod, m in moved.items() if m.phase != "Succeeded"}
        assert not failed, f"{failed}\n" + "\n".join(f"=== {n}:\n{a.tail(30)}" for n, a in agents.items())
        for pod, outcome in moved.items():
            assert outcome.restored_pod is not None
            await verified(cluster, outcome.restored_pod, sizes[pod], timeout=60)  # its own memory, every byte
            restored = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{outcome.restored_pod}")
            assert restored["spec"]["nodeName"] == (TARGET if home[pod] == SOURCE else SOURCE), pod
        queued = [pod for pod, m in moved.items()
                  if any(said.startswith(f"queued on node {SOURCE}: ") for said in m.messages)]
        assert queued, {pod: m.messages for pod, m in moved.items()}
        assert all(home[pod] == SOURCE for pod in queued), queued  # node-b's agent kept its default of 4
        peak = agents[SOURCE].peak_rss()
        print(f"{len(moved)} migrations in {max(m.seconds for m in moved.values()):.1f} s; {len(queued)} queued on "
              f"{SOURCE}; its agent's peak RSS {peak / MIB:.0f} MiB")
        assert peak < 1 << 30, f"node-a's agent peaked at {peak / MIB:.0f} MiB, past the DaemonSet's 1 GiB limit"
    finally:
        agents[SOURCE].stop()
        agents[SOURCE] = start_agent(cp, cluster.nodes[SOURCE], cluster.store_views[SOURCE])
        agents[SOURCE].wait_logged("cluster mode watching")


async def _migrate_with_plugin(cluster: RealCluster, agents: dict[str, AgentProcess],
                               pod: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    """``kubectl lpm migrate POD --to node-b --wait``, piped, as a script runs it; it must exit 0. Its output,
    the migration as it ended, and what explains a failed assertion."""
    cp = cluster.control_plane
    uid = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")["metadata"]["uid"]
    plugin = str(Path(sys.executable).parent / "kubectl-lpm")
    done = await asyncio.to_thread(
        subprocess.run, [plugin, "--kubeconfig", str(cp.admin_kubeconfig), "migrate", pod, "--to", TARGET,
                         "-n", NAMESPACE, "--wait", "--timeout", "5m"],
        capture_output=True, text=True, timeout=400, check=False)
    explain = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\n" + "\n".join(
        f"=== {n}:\n{a.tail(20)}" for n, a in agents.items())
    assert done.returncode == 0, explain
    migration = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations/"
                                        f"{migration_name(pod, uid)}")
    return done, migration, explain


@pytest.mark.asyncio
async def test_an_operator_moves_a_pod_with_kubectl_lpm_and_sees_its_bytes_and_freeze_window(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """``kubectl lpm migrate --wait``, piped as a script would run it, moves a pod holding 192 MiB from node-a
    to node-b: it prints the checkpoint's bytes as the source's agent publishes them, ends 0 with where the pod
    runs and its freeze window, and the restored pod finds every byte of its memory as it was."""
    install_memhold(cluster, (SOURCE, TARGET))
    size = 192 * MIB
    await run_holder(cluster, "plugin-hold", size, SOURCE)
    done, migration, explain = await _migrate_with_plugin(cluster, agents, "plugin-hold")
    print(done.stdout)
    status = migration["status"]
    [moved] = status["progress"]
    # The archive holds the pod's memory; the store holds it compressed (memhold's pages are a third zeros).
    assert moved["done"] and moved["bytesCheckpointed"] == moved["bytesTotal"] > size, moved
    assert 0 < moved["bytesStored"] < moved["bytesCheckpointed"], moved
    lines = done.stdout.splitlines()
    total = f"{moved['bytesTotal'] / MIB:.1f} of {moved['bytesTotal'] / MIB:.1f} MiB checkpointed"
    assert any(line.endswith(", done") and f"Checkpointing: hold: {total}" in line for line in lines), explain
    window = status["freezeWindow"]
    assert f"freeze window: {window['seconds']:.2f}s (checkpoint requested to restored pod running: checkpoint " \
           f"{window['checkpointSeconds']:.2f}s" in done.stdout, explain
    assert 0 < window["checkpointSeconds"] < window["seconds"], window
    assert lines[-2] == f"pod runs on {TARGET} as {status['restoredPodName']} (moved from {SOURCE})", explain
    await verified(cluster, status["restoredPodName"], size, timeout=120)


@pytest.mark.asyncio
async def test_on_a_terminal_kubectl_lpm_migrate_draws_the_checkpoints_bytes_as_a_bar(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """The same as a person at a shell sees it (a pseudo-terminal): a pod holding 512 MiB moves, and while
    node-a checkpoints it the bar is drawn from the bytes its agent publishes, redrawn in place, with the
    rate; then the pod runs on node-b with every byte of its memory."""
    cp = cluster.control_plane
    install_memhold(cluster, (SOURCE, TARGET))
    size = 512 * MIB
    await run_holder(cluster, "pty-hold", size, SOURCE)
    plugin = str(Path(sys.executable).parent / "kubectl-lpm")
    code, output = await asyncio.to_thread(
        run_in_pty, [plugin, "--kubeconfig", str(cp.admin_kubeconfig), "migrate", "pty-hold", "--to", TARGET,
                     "-n", NAMESPACE, "--timeout", "5m"], 400)
    explain = f"output:\n{output!r}\n" + "\n".join(f"=== {n}:\n{a.tail(20)}" for n, a in agents.items())
    assert code == 0, explain
    # Redrawn in place (carriage return, the line cleared after it): the bytes as a bar, and the rate.
    bars = [part for part in output.split("\r") if part.startswith("[") and " MiB checkpointed, " in part]
    assert bars and any("MiB/s" in bar for bar in bars), explain
    assert "pod runs on node-b as pty-hold-restored-" in output and "freeze window: " in output, explain
    restored = output.split("pod runs on node-b as ", 1)[1].split(" ", 1)[0]
    await verified(cluster, restored, size, timeout=120)

@pytest.mark.asyncio
async def test_the_base_image_is_pulled_on_the_target_while_the_source_checkpoints(
        cluster: RealCluster, agents: dict[str, AgentProcess], tmp_path: Path) -> None:
    """A pod whose image node-a pulled from a registry (HTTPS, a test CA the nodes' containerd trusts) moves to
    node-b, which has never had that image. node-b's agent has its containerd pull it by the digest the
    source's container status reports, while node-a still checkpoints: by the time the checkpoint is complete
    the image is there, and containerd's restore finds it instead of pulling inside the freeze window.

    The image is a variant of memhold's: with the same image ID as the one the other tests import, a later
    import's name went missing for node-a's kubelet (ErrImageNeverPull, seen here once)."""
    cp = cluster.control_plane
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = CertificateAuthority(pki, "lpm-test-registry-ca")
    serving = ca.issue_serving("registry", [GATEWAY])
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(ca.cert_file, trust / "ca.crt")
    registries = run_registry(tmp_path / "registry", RegistryTLS(serving.cert, serving.key, trust / "ca.crt"),
                              host=GATEWAY)
    registry = next(registries)
    try:
        for node in cluster.nodes.values():
            node.trust_registry(registry.address, trust / "ca.crt")
        image = f"{registry.address}/lpm/memhold-pulled:1"
        Skopeo(tmp_path)("copy", "--dest-cert-dir", str(trust),
                         f"oci-archive:{memhold_image(rootfs(), cluster.directory, 'pulled')}", f"docker://{image}")
        size = 256 * MIB
        await run_holder(cluster, "pulled-hold", size, SOURCE, image=image)
        pod = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/pulled-hold")
        [reference] = [s["imageID"] for s in pod["status"]["containerStatuses"]]
        assert reference.startswith(f"{registry.address}/lpm/memhold-pulled@sha256:"), reference
        listed = subprocess.run([*cluster.nodes[TARGET].ctr_prefix(), "images", "ls", "-q"], capture_output=True,
                                text=True, check=True).stdout.split()
        assert reference not in listed and image not in listed, listed  # node-b never had it

        moved = (await migrate_at_once(cluster, {"pulled-hold": TARGET}, timeout=300))["pulled-hold"]
        explain = "\n".join(f"=== {n}:\n{a.tail(25)}" for n, a in agents.items())
        assert moved.phase == "Succeeded", f"{moved.message}\n{explain}"
        [pulled] = [line for line in agents[TARGET].logs("base image pulled early") if line["image"] == reference]
        migration = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations/"
                                            f"{migration_name('pulled-hold', pod['metadata']['uid'])}")
        window = migration["status"]["freezeWindow"]
        # Pulled beside the checkpoint: done before the checkpoint was complete, so before the restore began.
        assert datetime.fromisoformat(pulled["time"]) < datetime.fromisoformat(
            window["checkpointComplete"].replace("Z", "+00:00")), (pulled, window)
        assert moved.restored_pod is not None
        await verified(cluster, moved.restored_pod, size, timeout=120)
    finally:
        registries.close()


@pytest.mark.asyncio
async def test_a_runtime_slower_than_the_checkpoint_timeout_fails_the_migration_and_the_pod_runs_on(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """node-a's agent gives its runtime one second (``--checkpoint-timeout 1``, so two with the grace) for a pod
    holding 384 MiB, which containerd takes longer than that to dump. The migration fails saying so, at once.
    The call is neither sent again (a second dump would freeze the pod again) nor cancelled: containerd
    resumes a paused container with the call's own context, so a cancelled call would leave the pod frozen for
    good (seen here before this was fixed). Once containerd answers, the pod runs on with every byte of its
    memory, and the archive it wrote for nobody is removed, not ingested."""
    cp = cluster.control_plane
    install_memhold(cluster, (SOURCE,))
    agents[SOURCE].stop()
    agents[SOURCE] = start_agent(cp, cluster.nodes[SOURCE], cluster.store_views[SOURCE], "--checkpoint-timeout", "1")
    try:
        agents[SOURCE].wait_logged("cluster mode watching")
        size = 384 * MIB
        await run_holder(cluster, "slow-hold", size, SOURCE)
        moved = (await migrate_at_once(cluster, {"slow-hold": TARGET}, timeout=300))["slow-hold"]
        explain = f"{moved}\n" + "\n".join(f"=== {n}:\n{a.tail(25)}" for n, a in agents.items())
        assert moved.phase == "Failed", explain
        assert "no answer within 2 s (--checkpoint-timeout 1 and its grace); the call is left to finish, not " \
               "cancelled" in moved.message, explain
        [ended] = await asyncio.to_thread(agents[SOURCE].wait_logged, "checkpoint call given up on has ended",
                                          1, 120)
        assert ended["outcome"] == "answered" and ended["archiveRemoved"] is True, ended
        await verified(cluster, "slow-hold", size, timeout=60)  # thawed, and its memory as it was
        pod = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/slow-hold")
        assert pod["status"]["phase"] == "Running" and pod["metadata"].get("deletionTimestamp") is None
        assert [p.name for p in cluster.nodes[SOURCE].checkpoint_dir.iterdir()
                if p.name.startswith("checkpoint-slow-hold_")] == []
        staging = cluster.store_views[SOURCE] / ".ingest" / SOURCE / "staging"
        assert list(staging.iterdir()) == [], list(staging.iterdir())
        records = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/containercheckpoints")
        assert [r["metadata"]["name"] for r in records["items"] if r["spec"]["podName"] == "slow-hold"] == []
    finally:
        agents[SOURCE].stop()
        agents[SOURCE] = start_agent(cp, cluster.nodes[SOURCE], cluster.store_views[SOURCE])
        agents[SOURCE].wait_logged("cluster mode watching")


def _task_state(cluster: RealCluster, pod: str) -> str:
    """containerd's own word on ``pod``'s container on node-a: RUNNING, PAUSED (frozen for a dump), ..."""
    status = cluster.control_plane.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")["status"]
    container = status["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    listing = subprocess.run([*cluster.nodes[SOURCE].ctr_prefix(), "task", "ls"], capture_output=True, text=True,
                             check=True).stdout
    states = {fields[0]: fields[-1] for fields in (line.split() for line in listing.splitlines()[1:]) if fields}
    return states.get(container, f"no task (tasks: {states})")


@pytest.mark.asyncio
@pytest.mark.parametrize("via", ["runtime", "kubelet"])
async def test_an_agent_stopped_mid_checkpoint_waits_for_the_dump_and_the_pod_runs_on(
        cluster: RealCluster, agents: dict[str, AgentProcess], via: str) -> None:
    """SIGTERM (a DaemonSet rollout) reaches node-a's agent while containerd dumps a 384 MiB pod for it, over the
    CRI socket or through the kubelet. Cut short, the dump would leave the pod paused for good: containerd
    resumes a paused container with the call's own context, and the kubelet hands the runtime its HTTP
    request's context. So the agent waits for the call before it exits, and the pod runs on, thawed, with every
    byte of its memory."""
    cp = cluster.control_plane
    install_memhold(cluster, (SOURCE,))
    binding = grant_kubelet_checkpoints(cp.admin) if via == "kubelet" else None
    agents[SOURCE].stop()
    agents[SOURCE] = start_agent(cp, cluster.nodes[SOURCE], cluster.store_views[SOURCE], via=via)
    pod, size = f"stopped-{via}", 384 * MIB
    try:
        agents[SOURCE].wait_logged("cluster mode watching")
        await run_holder(cluster, pod, size, SOURCE)
        annotate(cp, pod, TARGET)
        deadline = time.monotonic() + 60
        while (state := await asyncio.to_thread(_task_state, cluster, pod)) != "PAUSED":
            assert time.monotonic() < deadline, f"{pod} never paused for its dump ({state})\n{agents[SOURCE].tail()}"
            await asyncio.sleep(0.05)
        code, seconds = await asyncio.to_thread(agents[SOURCE].stop)
        explain = f"the agent exited {code} after {seconds:.1f} s; its log:\n{agents[SOURCE].tail(25)}"
        assert code == 0 and agents[SOURCE].logs("waiting for checkpoint calls under way before stopping"), explain
        assert await asyncio.to_thread(_task_state, cluster, pod) == "RUNNING", explain
        await verified(cluster, pod, size, timeout=60)  # thawed, and its memory as it was
    finally:
        if agents[SOURCE].proc.poll() is None:
            agents[SOURCE].stop()
        if binding is not None:
            revoke_kubelet_checkpoints(cp.admin, binding)
        # Nothing of this pod's migration goes on in the tests after this one.
        if (migration := _migration_of(cluster, pod)) is not None:
            cp.admin.request("DELETE", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations/"
                                       f"{migration['metadata']['name']}")
        cp.admin.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")
        agents[SOURCE] = start_agent(cp, cluster.nodes[SOURCE], cluster.store_views[SOURCE])
        agents[SOURCE].wait_logged("cluster mode watching")


# A connection over loopback kept open (nc -l <- nc), beside a counter that is the container's main process.
# busybox's nc applet, not one of the image's linked applets.
# Each nc's stdin a pipe that stays open: busybox's nc -l ends at once on an empty stdin.
TALKER = ("sleep 100000 | /bin/busybox nc -l -p 7000 > /dev/null & sleep 1; "
          "sleep 100000 | /bin/busybox nc 127.0.0.1 7000 & "
          "i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done")


@pytest.mark.asyncio
async def test_a_checkpoint_holding_established_tcp_connections_is_warned_of_before_the_restore(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """A pod with an established TCP connection (both ends over loopback) moves with ``kubectl lpm migrate``.
    Its checkpoint's sockets are read while it is ingested; the migration says, before the destination
    restores it, that its connections will not survive (its status, a Warning Event on the pod, and the plugin
    on stderr as kubectl prints the API server's warnings), and the migration still goes through."""
    cp = cluster.control_plane
    cp.admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker", "namespace": NAMESPACE},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": SOURCE}, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "talk", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                 "command": ["sh", "-c", TALKER]}]}})
    deadline = time.monotonic() + 120
    while True:  # counting for two seconds: both nc are up and connected
        pod = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/talker")
        if pod["status"].get("phase") == "Running" and len(
                await asyncio.to_thread(read_logs, cp, "talker", "talk")) >= 10:
            break
        assert time.monotonic() < deadline, cluster.node_failure()
        await asyncio.sleep(0.5)
    done, migration, explain = await _migrate_with_plugin(cluster, agents, "talker")
    unread = agents[SOURCE].logs("checkpoint's sockets not read; no warning about its TCP connections")
    if not migration["status"].get("warnings"):
        checkpoint = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podcheckpoints/"
                                             f"{migration['status']['podCheckpointRef']['name']}")
        content = cp.admin.request("GET", "/apis/lpm.my.domain/v1/podcheckpointcontents/"
                                          f"{checkpoint['status']['boundContentName']}")
        [artifact] = content["spec"]["containers"]
        seen = lpm("inspect", artifact["artifactURI"], "--store", str(cluster.store_views[SOURCE]), "-o", "json")
        raise AssertionError(f"no warning: {migration['status']}\nsockets not read: {unread}\n"
                             f"lpm inspect: {_sockets_and_processes(seen.stdout)}{seen.stderr}\n{explain}")
    [warned] = migration["status"]["warnings"]
    assert warned.startswith("the checkpoint holds 2 established TCP connections (talk: pid "), warned
    assert "127.0.0.1:7000" in warned and "a restore closes or breaks them" in warned
    assert done.stderr.count(f"Warning: {warned}\n") == 1, explain
    events = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    [event] = [e for e in events if e["involvedObject"]["name"] == "talker" and e["reason"] == "EstablishedConnections"]
    assert event["type"] == "Warning" and event["message"] == warned
    # Said before the restore: the destination began restoring only after the checkpoint (and its warning) was done.
    window = migration["status"]["freezeWindow"]
    assert window["checkpointComplete"] <= window["restoreStarted"], window


def _sockets_and_processes(inspected: str) -> str:
    """From ``lpm inspect -o json``: what explains a missing warning."""
    try:
        [found] = json.loads(inspected)
    except ValueError:
        return inspected[-2000:]
    return json.dumps({key: found.get(key) for key in ("processes", "sockets", "notes")}, indent=1)[-4000:]
