"""A node's container runtime for the live migration (test and demo): podman with CRIU, in the sandbox.

What the kubelet and CRI-O do on a real node, reduced to what a migration needs: start a pod's
containers, checkpoint one to an archive in the node's checkpoint directory (podman's export
has the CRI-O layout), and start a pod whose images are checkpoint images by restoring them.
Pods' statuses are set through the real apiserver as a kubelet would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from lab.controlplane import ControlPlane
from lab.sandbox import Sandbox

BASE_IMAGE = "localhost/lpm-busybox:1"


def build_base_image(sandbox: Sandbox) -> str:
    """A tiny image made from the rootfs's busybox (no registry needed); idempotent."""
    if sandbox.run("podman", "image", "exists", BASE_IMAGE, check=False).returncode != 0:
        sandbox.run("sh", "-ec", "rm -rf /tmp/img && mkdir -p /tmp/img/bin && cp /usr/bin/busybox /tmp/img/bin/ && "
                    "for a in sh sleep echo cat; do ln -s busybox /tmp/img/bin/$a; done && "
                    f"tar -C /tmp/img -c . | podman import - {BASE_IMAGE} >/dev/null")
    return BASE_IMAGE


class PodmanRuntime:
    def __init__(self, sandbox: Sandbox, cp: ControlPlane, node: str, namespace: str) -> None:
        self.sandbox = sandbox
        self.cp = cp
        self.node = node
        self.namespace = namespace  # the only one it runs pods of: other tests' pods share the node names
        self.restored_at: dict[str, float] = {}  # pod name -> when its restore finished
        self._final_logs: dict[str, list[str]] = {}  # logs of removed containers, as a node's log files outlive them

    def name(self, namespace: str, pod: str, container: str) -> str:
        return f"{self.node}.{namespace}.{pod}.{container}"

    def _set_running(self, pod: dict[str, Any]) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pod["status"] = {"phase": "Running", "startTime": now,
                         "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}
        meta = pod["metadata"]
        self.cp.admin.request("PUT", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", pod)

    def start_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        for container in pod["spec"]["containers"]:
            self.sandbox.run("podman", "run", "-d", "--name", self.name(meta["namespace"], meta["name"],
                                                                         container["name"]),
                             container["image"], *container.get("command", []))
        self._set_running(self.cp.admin.request("GET", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"))

    def checkpoint(self, namespace: str, pod: str, container: str, archive: Path) -> None:
        """What CRI-O does for the kubelet: dump the container (it stops) into an archive."""
        self.sandbox.run("podman", "container", "checkpoint", f"--export={archive}", "--compress=none",
                         self.name(namespace, pod, container))

    def logs(self, namespace: str, pod: str, container: str) -> list[str]:
        """The container's output, also once its pod was deleted (then as saved just before removal)."""
        name = self.name(namespace, pod, container)
        deadline = time.monotonic() + 10
        while True:
            if name in self._final_logs:
                return self._final_logs[name]
            result = self.sandbox.run("podman", "logs", name, check=False)
            if result.returncode == 0:
                return result.stdout.split()
            if time.monotonic() > deadline:  # neither running nor removed by this runtime
                raise AssertionError(f"no logs for {name}: {result.stderr.strip()}")
            time.sleep(0.05)  # being removed right now: its saved logs are about to appear

    def _remove(self, pod: dict[str, Any]) -> None:
        """A deleted pod: stop its containers, then confirm the deletion as the kubelet does."""
        meta = pod["metadata"]
        for container in pod["spec"]["containers"]:
            name = self.name(meta["namespace"], meta["name"], container["name"])
            self._final_logs[name] = self.sandbox.run("podman", "logs", name, check=False).stdout.split()
            self.sandbox.run("podman", "rm", "-f", "-t", "0", name, check=False)
        self.cp.admin.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                              {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})

    async def run_restores(self, stop: asyncio.Event) -> None:
        """Start every pod bound to this node whose images are checkpoint images, by restoring them;
        finish the deletion of pods being deleted."""
        started: set[str] = set()
        while not stop.is_set():
            pods = await asyncio.to_thread(self.cp.admin.request, "GET",
                                           f"/api/v1/namespaces/{self.namespace}/pods"
                                           f"?fieldSelector=spec.nodeName={self.node}")
            for pod in pods["items"]:
                meta = pod["metadata"]
                if meta.get("deletionTimestamp"):
                    await asyncio.to_thread(self._remove, pod)
                    continue
                key = f"{meta['namespace']}/{meta['name']}"
                images = [c["image"] for c in pod["spec"]["containers"]]
                if key in started or not all(image.startswith("localhost/lpm-checkpoint") for image in images):
                    continue
                started.add(key)
                for container in pod["spec"]["containers"]:
                    await asyncio.to_thread(self.sandbox.run, "podman", "container", "restore", "--name",
                                            self.name(meta["namespace"], meta["name"], container["name"]),
                                            container["image"])
                self.restored_at[meta["name"]] = time.monotonic()
                await asyncio.to_thread(self._set_running, pod)
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            except asyncio.TimeoutError:
                pass
