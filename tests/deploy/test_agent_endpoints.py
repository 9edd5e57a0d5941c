"""The real ``lpm agent`` process serving /metrics, /healthz and /readyz, as the DaemonSet probes it.

The standalone agent runs the way the DaemonSet runs it: uid 0 with every capability dropped, on a
kubelet directory that is root-owned 0700 with 0600 archives, proving that uid 0 alone (no
CAP_DAC_OVERRIDE, no CAP_FOWNER) is what the pod needs. Its store is a tmpfs of known size that the
test remounts read-only and back (we are root), which is what a failing shared volume looks like to
the agent. The cluster-mode agent starts with a ServiceAccount that may not yet list anything, as
on a cluster where the RBAC is applied after the DaemonSet, so its watches cannot be established
until the binding appears.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.agent import AgentProcess
from lab.apiclient import ApiError
from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from lab.controlplane import ControlPlane
from lab.kubelet import KubeletStandIn, pod_body
from lab.manifests import AGENT_NAMESPACE, grant_kubelet_checkpoints, revoke_kubelet_checkpoints

pytestmark = pytest.mark.realstack

STORE_SIZE = 64 << 20
# The agent as a process with no capabilities at all: none in its bounding set (so exec cannot give it
# any back), none inheritable or ambient, and no_new_privs.
NO_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs"]
WATCHES = ("containercheckpoints", "podcheckpoints", "podmigrations", "pods")


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _sample(port: int, name: str, **labels: str) -> float:
    status, text = _get(port, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} in /metrics")


def _until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def _port(agent: AgentProcess) -> int:
    [served] = agent.wait_logged("health endpoints served")
    return int(served["port"])


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of its own for the store: its size is known and it can be made read-only."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (CI runs as root)", pytrace=False)
    mountpoint = tmp_path / "store-fs"
    mountpoint.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={STORE_SIZE},mode=0700", "lpm-test-store", str(mountpoint))
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def _capabilities(pid: int) -> dict[str, str]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in status)
            if k in ("Uid", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")}


def test_standalone_agent_without_capabilities_serves_health_and_metrics(kube_dir: Path, tmpfs: Path,
                                                                         tmp_path: Path) -> None:
    store = tmpfs / "store"
    store.mkdir(mode=0o700)
    local = tmp_path / "local-store"
    _mount("-o", "remount,ro", str(tmpfs))  # the shared volume, not writable yet
    with AgentProcess("--node", "node-a", "--checkpoint-dir", str(kube_dir), "--store", str(store),
                      "--local-store", str(local), "--debounce", "0.2", wrapper=NO_CAPABILITIES) as agent:
        port = _port(agent)
        caps = _capabilities(agent.proc.pid)
        assert caps["Uid"].split()[0] == "0" and caps["NoNewPrivs"] == "1"
        assert {caps[k] for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb")} == {"0000000000000000"}

        assert _get(port, "/healthz") == (200, "ok\n")
        # Degraded is ready: checkpoints can still be taken, into the local store; the body says why.
        status, body = _get(port, "/readyz")
        assert status == 200 and body.startswith("ok\ndegraded: shared store"), body
        assert "not writable (Read-only file system)" in body and "held in the local store" in body, body
        assert _sample(port, "lpm_shared_store_available") == 0

        _mount("-o", "remount,rw", str(tmpfs))
        _until(lambda: _get(port, "/readyz") == (200, "ok\n"), "/readyz to drop 'degraded' once the store is writable")
        assert _sample(port, "lpm_shared_store_available") == 1

        # An ingest, from a kubelet directory the agent can read only as its owner.
        assert os.stat(kube_dir).st_mode & 0o777 == 0o700 and os.stat(kube_dir).st_uid == 0
        archive = make_archive(kube_dir, ArchiveSpec(memory=4 << 20))
        agent.wait_logged("archive ingested")
        assert _sample(port, "lpm_ingest_duration_seconds_count") == 1
        assert _sample(port, "lpm_ingested_bytes_total") == archive.stat().st_size
        assert 0 < _sample(port, "lpm_stored_bytes_total") < archive.stat().st_size
        assert _sample(port, "lpm_store_capacity_bytes") == STORE_SIZE
        assert _sample(port, "lpm_store_used_bytes") > 0
        assert 0 < _sample(port, "lpm_store_usage_ratio") < 1
        assert _sample(port, "lpm_failures_total", operation="ingest", reason="identity") == 0
        assert _sample(port, "lpm_local_checkpoints") == 0

        # An archive without identity is refused, and counted by reason.
        nameless = Pod(container="nospec")
        make_archive(kube_dir, ArchiveSpec(pod=nameless, omit_spec=True), archive_name(nameless))
        agent.wait_logged("archive refused")
        assert _sample(port, "lpm_failures_total", operation="ingest", reason="identity") == 1
        assert _sample(port, "lpm_checkpoint_duration_seconds_count") == 0  # no kubelet calls in standalone

        # The volume fails under a running agent: degraded, still ready and alive.
        _mount("-o", "remount,ro", str(tmpfs))
        status, body = _get(port, "/readyz")
        assert status == 200 and "Read-only file system" in body, body
        assert _get(port, "/healthz") == (200, "ok\n")
        assert agent.wait_logged("agent ready, degraded", count=2)[-1]["reason"] in body
        # With the local store unwritable too (uid 0 without CAP_DAC_OVERRIDE obeys a 0500 mode), it cannot
        # checkpoint at all: not ready, with both reasons.
        os.chmod(local, 0o500)
        try:
            status, reasons = _get(port, "/readyz")
            assert status == 503, reasons
            assert [line.split(":")[0] for line in reasons.splitlines()] == [f"shared store {store}",
                                                                             f"local store {local}"], reasons
            assert agent.wait_logged("agent not ready")[-1]["problems"] == reasons.splitlines()
        finally:
            os.chmod(local, 0o700)

        assert agent.stop()[0] == 0


@pytest.mark.asyncio
async def test_cluster_agent_is_ready_once_its_watches_are_established(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    namespace, node, account = "lpm-deploy-endpoints", "node-deploy", "lpm-deploy-late"
    control_plane.create_namespace(namespace)
    # A ServiceAccount the RBAC has not reached yet: it can authenticate but may list nothing.
    control_plane.create_service_account(AGENT_NAMESPACE, account)
    kubeconfig = control_plane.service_account_kubeconfig(AGENT_NAMESPACE, account)
    token = tmp_path / "kubelet.token"
    token.write_text(control_plane.service_account_token(AGENT_NAMESPACE, account))
    kube_dir = tmp_path / "checkpoints"
    kube_dir.mkdir(mode=0o700)
    kubelet = KubeletStandIn(control_plane, node, kube_dir)
    await kubelet.start()
    binding = f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{account}"
    agent = AgentProcess.cluster(
        "--node", node, "--kubeconfig", str(kubeconfig), "--checkpoint-via", "kubelet",
        "--kubelet-ca", str(control_plane.ca_file),
        "--kubelet-token-file", str(token), "--checkpoint-dir", str(kube_dir), "--store", str(tmp_path / "store"),
        "--debounce", "0.5")

    def get(path: str) -> Any:
        return asyncio.to_thread(_get, port, path)

    def api(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return asyncio.to_thread(control_plane.admin.request, method, path, body)

    async def finished(name: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            request = await api("GET", f"/apis/lpm.my.domain/v1/namespaces/{namespace}/containercheckpoints/{name}")
            if request.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return request  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"ContainerCheckpoint {name} never finished"
            await asyncio.sleep(0.2)

    kubelet_binding: dict[str, Any] | None = None
    try:
        port = await asyncio.to_thread(_port, agent)
        assert await get("/healthz") == (200, "ok\n")
        await asyncio.to_thread(agent.wait_logged, "cluster mode watching")
        status, reasons = await get("/readyz")
        assert status == 503
        assert sorted(reasons.splitlines()) == [f"watch {w} not established yet" for w in WATCHES], reasons

        await api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "lpm-agent"},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": AGENT_NAMESPACE}]})
        # Checkpoints come from the (stand-in) kubelet here, which needs what components/checkpoint-kubelet grants.
        kubelet_binding = await asyncio.to_thread(grant_kubelet_checkpoints, control_plane.admin, account)
        deadline = time.monotonic() + 60  # the watches retry with a backoff capped at 30 s
        while (answer := await get("/readyz"))[0] != 200:
            assert time.monotonic() < deadline, f"never ready: {answer}"
            await asyncio.sleep(0.2)
        # Ready, and saying what it could tell of its runtime: no CRI-O socket here (the default for
        # --importer containers-storage), so "unknown" with why.
        ok, restore = answer[1].splitlines()
        assert ok == "ok" and restore.startswith("restore: unknown (") and "crio.sock" in restore, answer

        # A checkpoint through the (stand-in) kubelet is timed and its bytes counted.
        await api("POST", f"/api/v1/namespaces/{namespace}/pods", pod_body(namespace, "web-0", node))
        for name in ("ok", "refused"):
            if name == "refused":
                kubelet.fail_next(1, 400)
            await api("POST", f"/apis/lpm.my.domain/v1/namespaces/{namespace}/containercheckpoints", {
                "apiVersion": "lpm.my.domain/v1", "kind": "ContainerCheckpoint",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"podName": "web-0", "containerName": "app"}})
            request = await finished(name)
            assert request["status"]["phase"] == ("Succeeded" if name == "ok" else "Failed"), request["status"]
        # The directory watcher sees the agent's own archive too: a ledger lookup, not a second ingest.
        await asyncio.to_thread(agent.wait_logged, "archive already in the store")
        [archive] = kube_dir.glob("checkpoint-web-0_*.tar")
        sample = lambda name, **labels: asyncio.to_thread(_sample, port, name, **labels)  # noqa: E731
        assert await sample("lpm_checkpoint_duration_seconds_count") == 1
        assert await sample("lpm_ingested_bytes_total") == archive.stat().st_size  # counted once
        assert await sample("lpm_ingest_duration_seconds_count") == 0
        assert await sample("lpm_failures_total", operation="checkpoint", reason="kubelet") == 1
        code, _ = await asyncio.to_thread(agent.stop)
        assert code == 0
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        await kubelet.stop()
        if kubelet_binding is not None:
            await asyncio.to_thread(revoke_kubelet_checkpoints, control_plane.admin, kubelet_binding)
        try:
            await api("DELETE", binding)
        except ApiError as err:
            if err.status != 404:  # 404: the test failed before binding; nothing to undo
                raise
