"""Pods that hold SIZE of memory and check every byte of it after a restore (bench/memhold), and many
migrations of them at once: bench/freeze.py, bench/concurrency.py, tests/realstack/test_concurrency.py.

memhold prints "ready" once its memory is written, counts, and prints "verified N MiB" once it notices it
was frozen and finds every byte as it was (or "CORRUPT at byte K"). Each pod of a batch holds a different
number of MiB, so a restored pod that printed another's size would be another pod's memory: cross-talk.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from lab.apiclient import ApiError
from lab.cluster import RealCluster
from lab.images import MEMHOLD_IMAGE, memhold_image
from lab.live import NAMESPACE, annotate
from lab.sandbox import rootfs

MIB = 1 << 20


class HolderFailed(Exception):
    """A holder did not come up, or did not come back holding its own memory."""


def install_memhold(cluster: RealCluster, nodes: tuple[str, ...] | None = None) -> None:
    """memhold's image (built once, cached) imported into the runtime of ``nodes`` (default: every node)."""
    image = memhold_image(rootfs(), cluster.directory)
    for name in nodes or tuple(cluster.nodes):
        cluster.nodes[name].import_image(image, MEMHOLD_IMAGE)


def logs(cluster: RealCluster, pod: str) -> str:
    answer = cluster.control_plane.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/log")
    raw: str = answer.get("raw", "")
    return raw


async def run_holder(cluster: RealCluster, name: str, size: int, node: str, timeout: float = 300,
                     image: str = MEMHOLD_IMAGE) -> None:
    """A memhold pod holding ``size`` bytes (whole MiB) on ``node``; returns once its memory is written.
    ``image``: memhold's image as imported on the nodes (``install_memhold``), or one the node pulls."""
    cluster.control_plane.admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "hold", "image": image,
                                 "imagePullPolicy": "Never" if image == MEMHOLD_IMAGE else "IfNotPresent",
                                 "args": [str(size // MIB), "7"]}]}})
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = await asyncio.to_thread(logs, cluster, name)
        except ApiError:
            text = ""
        if "ready" in text.split() and len(text.split()) >= 4:
            return
        if "CORRUPT" in text or time.monotonic() > deadline:
            raise HolderFailed(f"{name} did not come up holding its memory: {text[-300:]}\n{cluster.node_failure()}")
        await asyncio.sleep(0.5)


async def verified(cluster: RealCluster, pod: str, size: int, timeout: float) -> None:
    """Until ``pod`` says it found all of its ``size`` bytes as they were (memhold re-reads them all)."""
    deadline = time.monotonic() + timeout
    while True:
        text = await asyncio.to_thread(logs, cluster, pod)
        if f"verified {size // MIB} MiB" in text:
            return
        if "CORRUPT" in text or "verified" in text or time.monotonic() > deadline:
            raise HolderFailed(f"{pod} (holding {size // MIB} MiB) did not verify its memory; its log begins "
                               f"{text[:200]!r} and ends {text[-200:]!r}")
        await asyncio.sleep(0.5)


@dataclass(frozen=True)
class Moved:
    pod: str
    phase: str
    message: str
    restored_pod: str | None
    seconds: float
    """Annotation -> the migration's final phase."""
    messages: tuple[str, ...]
    """Every distinct status message its checkpoint request showed on the way (queued, checkpointing, ...)."""


def _migrations(cluster: RealCluster) -> list[dict[str, Any]]:
    path = f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations"
    items: list[dict[str, Any]] = cluster.control_plane.admin.request("GET", path)["items"]
    return items


def _requests(cluster: RealCluster) -> list[dict[str, Any]]:
    path = f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podcheckpoints"
    items: list[dict[str, Any]] = cluster.control_plane.admin.request("GET", path)["items"]
    return items


async def migrate_at_once(cluster: RealCluster, moves: dict[str, str], timeout: float) -> dict[str, Moved]:
    """Annotate every pod of ``moves`` (pod -> target node) at once; wait until each migration ends."""
    cp = cluster.control_plane
    started = time.monotonic()
    for pod, target in moves.items():
        annotate(cp, pod, target)
    done: dict[str, Moved] = {}
    said: dict[str, list[str]] = {pod: [] for pod in moves}
    while len(done) < len(moves):
        if time.monotonic() - started > timeout:
            waiting = sorted(set(moves) - set(done))
            statuses = [m.get("status") for m in await asyncio.to_thread(_migrations, cluster)]
            raise HolderFailed(f"{len(waiting)} of {len(moves)} migrations without an outcome after {timeout:.0f} s: "
                               f"{waiting}; statuses: {statuses}\n{cluster.node_failure()}")
        for request in await asyncio.to_thread(_requests, cluster):
            pod, message = request["spec"].get("podName"), request.get("status", {}).get("message")
            if pod in said and message and message not in said[pod]:
                said[pod].append(message)
        for migration in await asyncio.to_thread(_migrations, cluster):
            pod, status = migration["spec"]["podName"], migration.get("status", {})
            if pod in moves and pod not in done and status.get("phase") in ("Succeeded", "Failed"):
                done[pod] = Moved(pod, status["phase"], status.get("message", ""), status.get("restoredPodName"),
                                  time.monotonic() - started, tuple(said[pod]))
        await asyncio.sleep(0.1)
    return done
