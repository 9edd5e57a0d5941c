"""lpm installed on the lab's real nodes as users install it: kustomize, the DaemonSet, the CronJob.

``deploy`` imports the image built from the Dockerfile (lab/lpmimage.py) into every node's containerd, renders
lab/deploy/ (deploy/base + the containerd restore component, with the lab's storage) with the real kustomize,
applies it server-side, and waits until the DaemonSet's controller has an agent pod running and ready on
every node. ``PodAgent`` is one of those pods as lab/live.py's scenario reads an agent: its log through the
apiserver (``kubectl logs``), and whether it still runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lab.apiclient import ApiError
from lab.apply import Applier
from lab.cluster import RealCluster
from lab.controlplane import REPO
from lab.kustomize import locate_kustomize, render
from lab.lpmimage import REFERENCE, oci_archive
from lab.manifests import AGENT_NAMESPACE

OVERLAY = REPO / "lab" / "deploy"
_ROLLOUT_TIMEOUT = 180.0  # seconds for every node's agent pod to be Ready


class DeployError(Exception):
    """lpm did not come up; the message carries the pods' states and their logs."""


class PodAgent:
    """The DaemonSet's agent on one node."""

    def __init__(self, cluster: RealCluster, node: str) -> None:
        self._cluster = cluster
        self.node = node
        self.pod = _agent_pod(cluster, node)["metadata"]["name"]

    def _log(self) -> str:
        path = f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods/{self.pod}/log?container=agent"
        return str(self._cluster.control_plane.admin.request("GET", path).get("raw", ""))

    def logs(self, msg: str) -> list[dict[str, Any]]:
        lines = []
        for row in self._log().splitlines():
            try:
                line = json.loads(row)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict) and line.get("msg") == msg:
                lines.append(line)
        return lines

    def tail(self, lines: int = 15) -> str:
        """The end of its log."""
        return "\n".join(self._log().splitlines()[-lines:])

    def died(self) -> str | None:
        pod = self._cluster.control_plane.admin.request(
            "GET", f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods/{self.pod}")
        statuses = pod.get("status", {}).get("containerStatuses", [])
        restarted = [s for s in statuses if s.get("restartCount", 0) > 0]
        if pod.get("status", {}).get("phase") == "Running" and not restarted:
            return None
        return f"pod {self.pod}: {pod.get('status')}; its log:\n" + "\n".join(self._log().splitlines()[-20:])


def _agent_pod(cluster: RealCluster, node: str) -> dict[str, Any]:
    pods = cluster.control_plane.admin.request(
        "GET", f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods?labelSelector=app.kubernetes.io/name%3Dlpm-agent"
               f"&fieldSelector=spec.nodeName%3D{node}")["items"]
    if len(pods) != 1:
        raise DeployError(f"expected one lpm agent pod on {node}, found {[p['metadata']['name'] for p in pods]}")
    return pods[0]


def deploy(cluster: RealCluster, scratch: Path, objects: list[dict[str, Any]] | None = None) -> dict[str, PodAgent]:
    """lpm from lab/deploy/ (or ``objects``, rendered elsewhere and naming the image ``REFERENCE``) on every
    node of ``cluster``; returns each node's agent once all are Ready."""
    archive = oci_archive(scratch)
    for node in cluster.nodes.values():
        node.import_image(archive, REFERENCE)
    Applier(cluster.control_plane.admin).apply_all(objects or render(locate_kustomize(), OVERLAY))
    deadline = time.monotonic() + _ROLLOUT_TIMEOUT
    while not _rolled_out(cluster):
        if time.monotonic() > deadline:
            raise DeployError(f"the lpm-agent DaemonSet is not Ready on every node after {_ROLLOUT_TIMEOUT:.0f} s:"
                              f"\n{pods_report(cluster)}\n{cluster.node_failure()}")
        time.sleep(1)
    return {name: PodAgent(cluster, name) for name in cluster.nodes}


def _rolled_out(cluster: RealCluster) -> bool:
    daemonset = cluster.control_plane.admin.request(
        "GET", f"/apis/apps/v1/namespaces/{AGENT_NAMESPACE}/daemonsets/lpm-agent")
    status = daemonset.get("status", {})
    return status.get("numberReady") == len(cluster.nodes) == status.get("desiredNumberScheduled")


def pods_report(cluster: RealCluster) -> str:
    """Every pod of lpm's namespace (agents, collector Jobs): its status and the end of each container's log."""
    admin = cluster.control_plane.admin
    lines = []
    for pod in admin.request("GET", f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods")["items"]:
        name = pod["metadata"]["name"]
        lines.append(f"--- pod {name} on {pod['spec'].get('nodeName')}: {pod.get('status')}")
        for container in pod["spec"]["containers"]:
            try:
                log = admin.request("GET", f"/api/v1/namespaces/{AGENT_NAMESPACE}/pods/{name}/log"
                                           f"?container={container['name']}&tailLines=15").get("raw", "")
            except ApiError as err:
                log = str(err)
            lines.append(f"    {container['name']}:\n{log}")
    return "\n".join(lines)
