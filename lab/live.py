"""The live migration on real nodes, one scenario for the tests and the demo.

On a lab/cluster.py cluster (real kubelets over containerd or CRI-O, runc and CRIU): one lpm agent per node
as the lpm-agent ServiceAccount, each seeing the shared store through its own bindfs view (two NFS
clients: inotify on one does not see the other's writes). A pod whose containers each count in memory is
scheduled onto node-a by the real scheduler, then annotated ``lpm.my.domain/migrate-to: node-b`` as
``kubectl annotate`` would. node-a's kubelet checkpoints each container (the runtime's archive), node-a's
agent ingests them; node-b's agent builds the checkpoint images, imports them into node-b's runtime and
creates the pod; node-b's kubelet starts it and the runtime restores each container through CRI from its
image.

``migrate`` raises ``MigrationFailed`` unless every counter goes on on node-b from the value it had when it
was checkpointed (no reset, no gap) and the source pod is deleted. The counters are read as ``kubectl logs
--timestamps`` reads them, through the apiserver and the kubelets. The kubelet's checkpoint leaves the
source running (CRI checkpoints are leave-running), so node-a's counter goes on too until its pod is
deleted: the value node-b starts from must be one node-a logged, and the line before it is when the state
was frozen. What it sees, it tells ``say`` as it happens.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from lab.agent import AgentProcess
from lab.apiclient import ApiError
from lab.cluster import RealCluster
from lab.controlplane import ControlPlane
from lab.images import BUSYBOX_IMAGE
from lab.manifests import AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT
from lab.node import CTR, RealNode

NAMESPACE = "live"
SOURCE, TARGET = "node-a", "node-b"
INTERVAL = 0.1  # seconds between two counter values: a gap or a reset would show
COUNTER = f"i=0; while true; do i=$((i+1)); echo $i; sleep {INTERVAL}; done"
MIGRATE_TO = "lpm.my.domain/migrate-to"
_PHASE_TIMEOUT = 240.0  # seconds from the annotation to Succeeded
_SOURCE_GONE_TIMEOUT = 60.0  # seconds for the source pod to be deleted once the restored one runs

Say = Callable[[str], None]


def annotate(cp: ControlPlane, pod: str, target: str) -> None:
    """``kubectl annotate pod POD lpm.my.domain/migrate-to=TARGET`` (in the lab's namespace)."""
    cp.admin.request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}",
                     {"metadata": {"annotations": {MIGRATE_TO: target}}},
                     content_type="application/merge-patch+json")


class Agent(Protocol):
    """An lpm agent as the scenario sees it: a process of the lab (lab/agent.py) or a DaemonSet pod
    (lab/deployed.py)."""

    def logs(self, msg: str) -> list[dict[str, Any]]:
        """Its JSON log lines with this message."""

    def died(self) -> str | None:
        """Why it stopped, with the end of its log; None while it runs."""

    def tail(self, lines: int = 15) -> str:
        """The end of its log."""


class MigrationFailed(Exception):
    """A counter did not arrive on node-b intact, or the migration did not finish as it should."""


@dataclass(frozen=True)
class Line:
    time: datetime
    value: int


@dataclass(frozen=True)
class Outcome:
    restored_pod: str
    freeze_seconds: float
    """The longest of the containers' windows: last value logged on node-a before the checkpoint's pause
    -> first value logged on node-b."""
    phases: dict[str, float]


def start_agent(cp: ControlPlane, node: RealNode, store: Path, *extra: str, via: str = "runtime") -> AgentProcess:
    """``lpm agent`` for ``node``, on the host: it reads the node's checkpoint directory through the host's
    view of it, has the node's runtime checkpoint over its CRI socket (``via="kubelet"``: calls the kubelet
    at the node's address, which needs ``grant_kubelet_checkpoints``), asks the same socket whether the
    runtime restores, and imports with the node's own ``ctr`` inside it."""
    if via == "kubelet":
        token = node.lab_dir / f"{node.name}.token"
        token.write_text(cp.service_account_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT))
        os.chmod(token, 0o600)
        checkpoints = ["--checkpoint-via", "kubelet", "--kubelet-ca", str(cp.ca_file),
                       "--kubelet-token-file", str(token)]
    else:
        # The runtime writes where it sees the kubelet's directory, inside the node.
        checkpoints = ["--checkpoint-via", "runtime", "--runtime-checkpoint-dir", KUBELET_CHECKPOINT_DIR]
    return AgentProcess.cluster(
        "--node", node.name,
        "--kubeconfig", str(cp.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)),
        *checkpoints, "--checkpoint-dir", str(node.checkpoint_dir), "--store", str(store),
        # Each node's own, as a node's disk is (the default path is one host directory for every node here).
        "--local-store", str(node.lab_dir / f"{node.name}-local-store"),
        # Under the lab directory, which the node sees at the same path: ctr reads the image archive there.
        "--restore-work-dir", str(node.lab_dir / f"{node.name}-work"),
        *_importer(node), "--runtime-endpoint", node.runtime_endpoint,
        "--debounce", "0.3", *extra)


KUBELET_CHECKPOINT_DIR = "/var/lib/kubelet/checkpoints"


@contextmanager
def host_agents(cluster: RealCluster, *extra: str) -> Iterator[dict[str, AgentProcess]]:
    """``start_agent`` (with ``extra`` flags) for every node of ``cluster``, each watching before this yields;
    stopped at the end."""
    agents = {name: start_agent(cluster.control_plane, node, cluster.store_views[name], *extra)
              for name, node in cluster.nodes.items()}
    try:
        for agent in agents.values():
            agent.wait_logged("cluster mode watching")
        yield agents
    finally:
        for agent in agents.values():
            if agent.proc.poll() is None:
                agent.stop()


def _importer(node: RealNode) -> list[str]:
    if node.runtime == "crio":
        # skopeo writes the node's containers-storage; in its PID namespace too, to find itself in /proc.
        return ["--importer", "containers-storage", "--import-prefix", shlex.join(node.prefix("pid"))]
    return ["--importer", "containerd", "--import-prefix", shlex.join(node.prefix()), "--ctr", CTR]


def _parse_log(text: str) -> list[Line]:
    lines = []
    for row in text.splitlines():
        stamp, _, value = row.partition(" ")
        if value.strip().isdigit():
            lines.append(Line(datetime.fromisoformat(stamp), int(value)))
    return lines


def read_logs(cp: ControlPlane, pod: str, container: str) -> list[Line]:
    """``kubectl logs --timestamps``: through the apiserver, from the kubelet of the pod's node."""
    answer = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/log"
                                     f"?container={container}&timestamps=true")
    return _parse_log(answer.get("raw", ""))


def _pod(cp: ControlPlane, name: str) -> dict[str, Any] | None:
    try:
        return cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
    except ApiError as err:
        if err.status == 404:
            return None
        raise


def _migration(cp: ControlPlane, pod: str) -> dict[str, Any] | None:
    items = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations")["items"]
    return next((m for m in items if m["spec"]["podName"] == pod), None)


def frozen_at(source: list[Line], first_restored: int) -> Line:
    """The source's line the restored counter goes on from: the value before ``first_restored``."""
    for line in source:
        if line.value == first_restored - 1:
            return line
    seen = f"{source[0].value}..{source[-1].value}" if source else "nothing"
    raise MigrationFailed(f"node-b's counter starts at {first_restored}, but node-a never logged "
                          f"{first_restored - 1} (it logged {seen}): not the checkpointed state")


async def run_pod(cluster: RealCluster, name: str, containers: tuple[str, ...], node: str) -> None:
    """A pod of counting containers, scheduled (by the real scheduler) onto ``node``; returns once they count."""
    cp, failure = cluster.control_plane, cluster.node_failure
    cp.admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": c, "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                 "command": ["sh", "-c", COUNTER]} for c in containers]}})
    deadline = time.monotonic() + 120
    while True:
        pod = await asyncio.to_thread(_pod, cp, name)
        status = (pod or {}).get("status", {})
        if status.get("phase") == "Running":
            counted = [len(await asyncio.to_thread(read_logs, cp, name, c)) for c in containers]
            if min(counted) >= 3:
                return
        if time.monotonic() > deadline:
            raise MigrationFailed(f"pod {name} not counting on {node} after 120 s: {status}\n{failure()}")
        await asyncio.sleep(0.3)


async def migrate(cluster: RealCluster, agents: Mapping[str, Agent], pod: str, containers: tuple[str, ...],
                  say: Say) -> Outcome:
    """Annotate ``pod`` (running on SOURCE) to move to TARGET; check every counter went on; see the module."""
    cp = cluster.control_plane
    started = time.monotonic()
    annotate(cp, pod, TARGET)
    say(f"annotated {NAMESPACE}/{pod} {MIGRATE_TO}={TARGET}")
    source_logs: dict[str, list[Line]] = {c: [] for c in containers}
    seen: list[str] = []
    status: dict[str, Any] = {}
    phase = None
    while phase not in ("Succeeded", "Failed"):
        if time.monotonic() - started > _PHASE_TIMEOUT:
            logs = ""
            for node, agent in agents.items():
                logs += f"\n=== lpm agent on {node}, last lines:\n{await asyncio.to_thread(agent.tail)}"
            raise MigrationFailed(f"no outcome {_PHASE_TIMEOUT:.0f} s after the annotation; phases seen: {seen}; "
                                  f"last status: {status}{logs}\n{cluster.node_failure()}")
        for node, agent in agents.items():
            if (why := await asyncio.to_thread(agent.died)) is not None:  # nothing would move the migration on
                raise MigrationFailed(f"the agent on {node} stopped: {why}")
        # Keep node-a's counters as they were last seen: the source pod's logs go with it.
        if await asyncio.to_thread(_pod, cp, pod) is not None:
            for container in containers:
                try:
                    source_logs[container] = await asyncio.to_thread(read_logs, cp, pod, container)
                except ApiError:
                    pass  # being deleted: what was read last stands
        migration = await asyncio.to_thread(_migration, cp, pod)
        if migration is not None:
            status = migration.get("status", {})
            phase = status.get("phase")
            if phase and phase not in seen:
                seen.append(phase)
                say(f"PodMigration {migration['metadata']['name']}: {phase:<18} "
                    f"+{time.monotonic() - started:.2f} s after the annotation")
        await asyncio.sleep(0.1)
    if phase == "Failed":
        raise MigrationFailed(f"the migration failed: {status.get('message')}")
    restored: str = status["restoredPodName"]

    await asyncio.sleep(1.0)  # let the restored counters go on
    windows: dict[str, float] = {}
    first_on_target: dict[str, Line] = {}
    for container in containers:
        logged = await asyncio.to_thread(read_logs, cp, restored, container)
        # containerd restores the container's log file with it: the lines up to the checkpoint come first,
        # with their original times. What the restored process wrote follows.
        known = set(source_logs[container])
        after = [line for line in logged if line not in known]
        if len(after) < 2:
            raise MigrationFailed(f"restored container {container} of {restored} logged nothing new: {logged}")
        first, last = after[0], after[-1]
        before = frozen_at(source_logs[container], first.value)
        values = [line.value for line in after]
        if values != list(range(first.value, first.value + len(values))):
            raise MigrationFailed(f"the restored counter {container} skips or repeats: {values}")
        windows[container] = (first.time - before.time).total_seconds()
        first_on_target[container] = first
        say(f"counter {container}: {before.value} on {SOURCE} when checkpointed, first on {TARGET} "
            f"{first.value}, a second later {last.value} (pod {NAMESPACE}/{restored}; node-a's copy went on to "
            f"{source_logs[container][-1].value} until deleted)")

    deadline = time.monotonic() + _SOURCE_GONE_TIMEOUT
    while await asyncio.to_thread(_pod, cp, pod) is not None:
        if time.monotonic() > deadline:
            raise MigrationFailed(f"the source pod still exists {_SOURCE_GONE_TIMEOUT:.0f} s after the restore")
        await asyncio.sleep(0.2)
    restored_pod = await asyncio.to_thread(_pod, cp, restored)
    assert restored_pod is not None
    origin = restored_pod["metadata"].get("annotations", {}).get("lpm.my.domain/restored-from")
    if restored_pod["spec"]["nodeName"] != TARGET or origin != f"{NAMESPACE}/{pod}":
        raise MigrationFailed(f"restored pod on {restored_pod['spec']['nodeName']}, restored-from {origin!r}")
    phases = _phases(cluster, agents, pod, restored, first_on_target)
    freeze = max(windows.values())
    say(f"freeze window: {freeze:.2f} s (last value on {SOURCE} before the checkpoint -> first on {TARGET}); "
        + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    say(f"source pod {NAMESPACE}/{pod} deleted; {NAMESPACE}/{restored} runs on {TARGET}, restored-from {origin}")
    return Outcome(restored, freeze, phases)


def _time(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["time"]).timestamp()


def _containerd_times(log: str, pod: str) -> tuple[float, float]:
    """When, by the destination containerd's own log, the restored pod's sandbox was up and its containers
    were created from their checkpoint images (the checkpoint copied out of each image); it fails unless
    that log says each was restored."""
    sandbox = created = restored = 0.0
    sandbox_id = ""
    containers: set[str] = set()
    for row in log.splitlines():
        stamp = re.match(r'time="([^"]+)"', row)
        if stamp is None:
            continue
        at = datetime.fromisoformat(stamp.group(1)).timestamp()
        if f'RunPodSandbox for name:\\"{pod}\\"' in row and (found := re.search(r'returns sandbox id \\"(\w+)', row)):
            sandbox, sandbox_id = at, found.group(1)
        elif sandbox_id and f'CreateContainer within sandbox \\"{sandbox_id}' in row and \
                (found := re.search(r'returns container id \\"(\w+)', row)):
            created = at
            containers.add(found.group(1))
        elif (found := re.search(r"Restored container (\w+) successfully", row)) and found.group(1) in containers:
            restored = at
    if not (sandbox and created and restored):
        raise MigrationFailed(f"the destination containerd's log does not show {pod} restored")
    return sandbox, created


def _phases(cluster: RealCluster, agents: Mapping[str, Agent], pod: str, restored_pod: str,
            first: dict[str, Line]) -> dict[str, float]:
    """Where the window went, from the agents' log lines and the destination containerd's (their times are
    the machine's one clock)."""
    def of_pod(agent: Agent, msg: str) -> list[dict[str, Any]]:
        return [line for line in agent.logs(msg) if line.get("pod") == f"{NAMESPACE}/{pod}"]

    source, target = agents[SOURCE], agents[TARGET]
    [committed] = of_pod(source, "checkpoint committed")[-1:]
    [created] = [line for line in target.logs("restored pod created")
                 if line.get("pod") == f"{NAMESPACE}/{restored_pod}"]
    restore_began = _time(created) - created["seconds"]
    running = max(line.time.timestamp() for line in first.values())
    phases = {
        "checkpoint": sum(line["checkpointSeconds"] for line in of_pod(source, "container checkpointed")),
        "ingest": sum(line["ingestSeconds"] for line in of_pod(source, "container ingested"))
        + committed["commitSeconds"],
        "marker to destination": restore_began - _time(committed),
        # verify and image are phases of their own only where the normalised layer is written (skopeo);
        # containerd's streamed import checks the dump on its way in.
        **{phase: created[key] for phase, key in (("verify", "verifySeconds"), ("image", "imageSeconds"))
           if key in created},
        "import": created["importSeconds"], "pod create": created["createSeconds"],
    }
    target_node = cluster.nodes[TARGET]
    if target_node.runtime != "containerd":
        return {**phases, "pod start + CRIU restore": running - _time(created)}
    sandbox, prepared = _containerd_times((target_node.directory / "containerd.log").read_text(errors="replace"),
                                          restored_pod)
    return {**phases, "pod sandbox": sandbox - _time(created), "restore prepare": prepared - sandbox,
            # To the restored process's first line, which it may print before containerd logs the restore done.
            "CRIU restore": running - prepared}
