"""A node's kubelet, for its checkpoint API only: one per test node, on loopback, real TLS.

A stand-in, kept for what the real kubelet (lab/node.py) cannot be made to show on demand: a 5xx or a
refusal on the next call (``fail_next``), a runtime stuck in CRIU past the agent's timeout
(``hang_next``), an archive written in place slowly in many pieces (the debounce and in-flight paths),
and hundreds of nodes at once (bench/migrations.py). Migrations end to end run on real nodes.

It authorises each request the way the real kubelet does — TokenReview of the bearer token,
then a SubjectAccessReview for ``create`` on ``nodes/checkpoint`` of this node — against the
real apiserver, finds the pod among those bound to its node, and writes the archive IN
PLACE, slowly, in the CRI-O layout, into the node's checkpoint directory (0600, no temp
file, no rename), answering ``{"items": [path]}`` only once it is complete. Its serving
certificate comes from the test CA, so the agent verifies it as it would a real kubelet's.

Faults for tests: ``fail_next(n, status)`` answers the next n requests with that status;
``hang_next(n, seconds)`` answers them only after ``seconds``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from lab.apiclient import ApiError
from lab.archives import ArchiveSpec, Pod, archive_bytes, archive_name, write_in_place
from lab.controlplane import ControlPlane


class KubeletStandIn:
    def __init__(self, cp: ControlPlane, node: str, checkpoint_dir: Path, memory: int = 2 << 20,
                 pieces: int = 6, pause: float = 0.1) -> None:
        self.cp = cp
        self.node = node
        self.checkpoint_dir = checkpoint_dir
        self.memory = memory
        self.pieces = pieces
        self.pause = pause
        self.requests: list[tuple[str, int]] = []  # (path, HTTP status answered)
        self.seconds: list[float] = []  # how long each request took to answer
        self._failures: list[int] = []
        self._hangs: list[float] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def fail_next(self, count: int, status: int = 500) -> None:
        self._failures.extend([status] * count)

    def hang_next(self, count: int, seconds: float) -> None:
        """The next ``count`` requests get no answer for ``seconds`` (a runtime stuck in CRIU)."""
        self._hangs.extend([seconds] * count)

    async def start(self) -> None:
        serving = self.cp.ca.issue_serving(f"kubelet-{self.node}", ["127.0.0.1"])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(serving.cert), str(serving.key))
        app = web.Application()
        app.router.add_post("/checkpoint/{namespace}/{pod}/{container}", self._checkpoint)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await asyncio.to_thread(self._register_node)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _register_node(self) -> None:
        """The Node object a kubelet keeps: where it listens, and Ready."""
        self.cp.create_node(self.node)
        node = self.cp.admin.request("GET", f"/api/v1/nodes/{self.node}")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        node["status"] = {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "stand-in",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }
        self.cp.admin.request("PUT", f"/api/v1/nodes/{self.node}/status", node)
        # The node lifecycle controller's part (there is none here): a Ready node loses the not-ready taint
        # the apiserver's TaintNodesByCondition plugin gave it at creation, which the scheduler honours.
        node = self.cp.admin.request("GET", f"/api/v1/nodes/{self.node}")
        node["spec"]["taints"] = [t for t in node["spec"].get("taints") or []
                                  if t.get("key") != "node.kubernetes.io/not-ready"]
        self.cp.admin.request("PUT", f"/api/v1/nodes/{self.node}", node)

    def _authorise(self, token: str) -> int:
        review = self.cp.admin.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
        status = review.get("status", {})
        if not status.get("authenticated"):
            return 401
        user = status["user"]
        access = self.cp.admin.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user["username"], "groups": user.get("groups", []), "uid": user.get("uid"),
                     "resourceAttributes": {"verb": "create", "resource": "nodes", "subresource": "checkpoint",
                                            "name": self.node}}})
        return 200 if access.get("status", {}).get("allowed") else 403

    def _pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pod = self.cp.admin.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return pod if pod.get("spec", {}).get("nodeName") == self.node else None

    async def _checkpoint(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        status, body = await self._answer(request)
        self.seconds.append(time.monotonic() - started)
        self.requests.append((request.path, status))
        return web.json_response(body, status=status) if status == 200 else web.Response(status=status, text=body)

    async def _answer(self, request: web.Request) -> tuple[int, Any]:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return 401, "Unauthorized"
        decision = await asyncio.to_thread(self._authorise, header.removeprefix("Bearer "))
        if decision != 200:
            return decision, "Forbidden" if decision == 403 else "Unauthorized"
        if self._failures:
            return self._failures.pop(0), "checkpointing container failed: injected fault"
        if self._hangs:
            await asyncio.sleep(self._hangs.pop(0))
            return 500, "checkpointing container failed: hung"
        namespace, name, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        pod = await asyncio.to_thread(self._pod, namespace, name)
        if pod is None:
            return 404, f"pod {namespace}/{name} not found on {self.node}"
        if container not in [c["name"] for c in pod["spec"]["containers"]]:
            return 404, f"container {container} not found"
        identity = Pod(uid=pod["metadata"]["uid"], namespace=namespace, name=name, container=container)
        path = self.checkpoint_dir / archive_name(identity, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        data = archive_bytes(ArchiveSpec(pod=identity, memory=self.memory))
        await asyncio.to_thread(write_in_place, path, data, self.pieces, self.pause)
        return 200, {"items": [str(path)]}


def pod_body(namespace: str, name: str, node: str, containers: tuple[str, ...] = ("app",),
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod bound to ``node`` (there is no scheduler: tests bind pods themselves)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "spec": {"nodeName": node, "containers": [{"name": c, "image": "lpm-test/app:1"}
                                                        for c in containers]}}

