"""A migration through containers-storage, the store CRI-O restores from: podman + CRIU stand in for CRI-O.

Kept only until CRI-O runs in the lab (lab/node.py runs containerd): it is the one restore, end to end,
of lpm's ``containers-storage`` importer's image. The real-node migration is lab/live.py's. Here a
kubelet stand-in per node (the checkpoint API over verified TLS, authorised by the real apiserver) is
backed by podman + CRIU in the caller's ``Sandbox``, and one shared store is seen through two bindfs views.

``migrate_counter`` starts a counter pod on node-a, annotates it ``lpm.my.domain/migrate-to:
node-b``, follows the PodMigration's phases, and raises ``MigrationFailed`` unless the counter goes on in
the restored pod on node-b from its last value (podman's checkpoint stops the source, so its last value
is the checkpointed one) and the source pod is deleted. It tells ``say`` what it sees
(tests/realstack/test_podman_restore.py passes ``print``), and tears down what it started however it ends.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.agent import AgentProcess
from lab.cluster import store_views
from lab.apiclient import ApiError
from lab.controlplane import ControlPlane
from lab.kubelet import KubeletStandIn
from lab.manifests import AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT
from lab.runtime import PodmanRuntime, build_base_image
from lab.sandbox import Sandbox

NAMESPACE = "live"
POD = "counter"
CONTAINER = "count"
SOURCE, TARGET = "node-a", "node-b"
COUNTER = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"  # +1 every 0.1 s: a gap would show
MIGRATE_TO = "lpm.my.domain/migrate-to"
_PHASE_TIMEOUT = 180.0  # seconds from the annotation to Succeeded; about 1 s here
_SOURCE_GONE_TIMEOUT = 20.0  # seconds for the source pod to be deleted once the restored one runs

Say = Callable[[str], None]


class MigrationFailed(Exception):
    """The counter did not arrive on node-b intact, or the migration did not finish as it should."""


@dataclass
class _Node:
    directory: Path
    runtime: PodmanRuntime
    kubelet: KubeletStandIn


@asynccontextmanager
async def _nodes(cp: ControlPlane, sandbox: Sandbox) -> AsyncIterator[dict[str, _Node]]:
    """node-a and node-b: a kubelet stand-in each, their pods run by podman in the sandbox."""
    stop = asyncio.Event()
    made: dict[str, _Node] = {}
    restores: list[asyncio.Task[None]] = []
    try:
        for name in (SOURCE, TARGET):
            directory = sandbox.share / name / "checkpoints"
            directory.mkdir(parents=True, mode=0o700)
            runtime = PodmanRuntime(sandbox, cp, name, NAMESPACE)
            kubelet = KubeletStandIn(cp, name, directory, runtime=runtime)
            await kubelet.start()
            made[name] = _Node(directory, runtime, kubelet)
            restores.append(asyncio.create_task(runtime.run_restores(stop), name=f"restores-{name}"))
        yield made
    finally:
        stop.set()
        await asyncio.gather(*restores, return_exceptions=True)
        for node in made.values():
            await node.kubelet.stop()


def _agent(cp: ControlPlane, sandbox: Sandbox, node: str, directory: Path, store: Path) -> AgentProcess:
    token = sandbox.share / f"{node}.token"
    token.write_text(cp.service_account_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT))
    os.chmod(token, 0o600)
    return AgentProcess.cluster(
        "--node", node, "--kubeconfig", str(cp.service_account_kubeconfig(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT)),
        "--kubelet-ca", str(cp.ca_file), "--kubelet-token-file", str(token), "--checkpoint-dir", str(directory),
        "--store", str(store), "--restore-work-dir", str(sandbox.share / f"{node}-work"),
        "--import-prefix", shlex.join(sandbox.prefix()), "--debounce", "0.3")


def _migration(cp: ControlPlane) -> dict[str, Any] | None:
    items = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations")["items"]
    return items[0] if items else None


def _pod_exists(cp: ControlPlane, name: str) -> bool:
    try:
        cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
    except ApiError as err:
        if err.status == 404:
            return False
        raise
    return True


async def migrate_counter(cp: ControlPlane, sandbox: Sandbox, say: Say) -> None:
    """The scenario; ``cp`` has lpm's CRDs and RBAC installed, ``sandbox`` is entered. See the module."""
    cp.create_namespace(NAMESPACE)
    image = await asyncio.to_thread(build_base_image, sandbox)
    with store_views(sandbox.share, (SOURCE, TARGET)) as views:
        async with _nodes(cp, sandbox) as nodes:
            say(f"nodes: {SOURCE} and {TARGET} Ready, each a kubelet (checkpoint API, verified TLS) "
                "over podman + CRIU; one store, two bindfs views")
            agents: list[AgentProcess] = []
            try:
                for node, view in views.items():
                    agents.append(_agent(cp, sandbox, node, nodes[node].directory, view))
                for agent in agents:
                    await asyncio.to_thread(agent.wait_logged, "cluster mode watching")
                say("agents: lpm agent on each node, as the lpm-agent ServiceAccount, watching")
                await _migrate(cp, nodes, agents, image, say)
            finally:
                for agent in agents:
                    if agent.proc.poll() is None:
                        await asyncio.to_thread(agent.stop)


async def _migrate(cp: ControlPlane, nodes: dict[str, _Node], agents: list[AgentProcess], image: str,
                   say: Say) -> None:
    source, target = nodes[SOURCE], nodes[TARGET]
    pod = cp.admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "namespace": NAMESPACE},
        "spec": {"nodeName": SOURCE, "containers": [
            {"name": CONTAINER, "image": image, "command": ["sh", "-c", COUNTER]}]}})
    await asyncio.to_thread(source.runtime.start_pod, pod)
    for _ in range(3):  # let it count, and show it
        await asyncio.sleep(0.5)
        values = await asyncio.to_thread(source.runtime.logs, NAMESPACE, POD, CONTAINER)
        say(f"pod {NAMESPACE}/{POD} on {SOURCE}: counter at {values[-1] if values else '-'}")

    started = time.monotonic()
    cp.admin.request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}",  # kubectl annotate
                     {"metadata": {"annotations": {MIGRATE_TO: TARGET}}},
                     content_type="application/merge-patch+json")
    say(f"annotated {MIGRATE_TO}={TARGET}")
    seen: list[str] = []
    phase = None
    while phase not in ("Succeeded", "Failed"):
        if time.monotonic() - started > _PHASE_TIMEOUT:
            raise MigrationFailed(f"no outcome {_PHASE_TIMEOUT:.0f} s after the annotation; phases seen: {seen}")
        await asyncio.sleep(0.05)
        for node, agent in zip((SOURCE, TARGET), agents):
            if agent.proc.poll() is not None:  # nothing would ever move the migration on
                raise MigrationFailed(f"the agent on {node} exited ({agent.proc.returncode}); its log:\n"
                                      + "".join(agent.raw[-20:]))
        migration = await asyncio.to_thread(_migration, cp)
        if migration is None:  # the source agent has not created it yet
            continue
        status = migration.get("status", {})
        phase = status.get("phase")
        if phase and phase not in seen:
            seen.append(phase)
            say(f"PodMigration {migration['metadata']['name']}: {phase:<18} "
                f"+{time.monotonic() - started:.2f} s after the annotation")
    if phase == "Failed":
        raise MigrationFailed(f"the migration failed: {status.get('message')}")
    restored_name: str = status["restoredPodName"]

    before = await asyncio.to_thread(source.runtime.logs, NAMESPACE, POD, CONTAINER)
    await asyncio.sleep(1.0)  # let the restored counter go on
    after = await asyncio.to_thread(target.runtime.logs, NAMESPACE, restored_name, CONTAINER)
    last_before, first_after = int(before[-1]), int(after[0])
    say(f"counter: last on {SOURCE} {last_before}, first on {TARGET} {first_after}, "
        f"a second later {after[-1]} (pod {NAMESPACE}/{restored_name})")
    if first_after != last_before + 1:
        raise MigrationFailed(f"the counter must go on from its last value: {last_before} -> {first_after}")
    if int(after[-1]) <= first_after:
        raise MigrationFailed(f"the restored counter stopped at {after[-1]}")
    freeze = target.runtime.restored_at[restored_name] - source.kubelet.checkpoint_started[0]
    dump_seconds = source.kubelet.checkpoint_seconds[0]
    [restored_log] = agents[1].logs("restored pod created")
    restore = {step: restored_log[step] for step in (
        "verifySeconds", "imageSeconds", "importSeconds", "createSeconds", "seconds")}
    say(f"freeze window: {freeze:.2f} s (checkpoint requested -> restored process running; "
        f"CRIU dump {dump_seconds:.2f} s; restore on {TARGET} {restore['seconds']:.2f} s: verify "
        f"{restore['verifySeconds']:.3f}, image {restore['imageSeconds']:.3f}, "
        f"import {restore['importSeconds']:.3f}, create {restore['createSeconds']:.3f})")

    deadline = time.monotonic() + _SOURCE_GONE_TIMEOUT
    while await asyncio.to_thread(_pod_exists, cp, POD):
        if time.monotonic() > deadline:
            raise MigrationFailed(f"the source pod still exists {_SOURCE_GONE_TIMEOUT:.0f} s after the restore")
        await asyncio.sleep(0.1)
    restored = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{restored_name}")
    origin = restored["metadata"].get("annotations", {}).get("lpm.my.domain/restored-from")
    if restored["spec"]["nodeName"] != TARGET or origin != f"{NAMESPACE}/{POD}":
        raise MigrationFailed(f"restored pod on {restored['spec']['nodeName']}, restored-from {origin!r}")
    say(f"source pod {NAMESPACE}/{POD} deleted; {NAMESPACE}/{restored_name} runs on {TARGET}, "
        f"restored-from {origin}")
