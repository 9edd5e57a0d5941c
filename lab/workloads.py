"""Workloads on the lab's real nodes, as users run them: Deployments, disruption budgets, StatefulSets, Jobs,
DaemonSets, Services — and a record of every pod the real controllers start while a migration runs.

Each workload's pods run the same counter as lab/live.py's, so a restored pod shows whether it carries the
source's state (its counter goes on) or is a fresh replica (it counts from 1).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from lab.apiclient import ApiError
from lab.controlplane import ControlPlane
from lab.images import BUSYBOX_IMAGE
from lab.live import COUNTER, NAMESPACE, read_logs

T = TypeVar("T")
APPS = f"/apis/apps/v1/namespaces/{NAMESPACE}"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"


def pod_template(labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"labels": labels},
            "spec": {"terminationGracePeriodSeconds": 1, **spec,
                     "containers": [{"name": "count", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", COUNTER]}]}}


def deployment(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": pod_template({"app": name}, **spec)}}


def disruption_budget(name: str, app: str, min_available: int) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}}}


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0,
             explain: Callable[[], str] = lambda: "") -> T:
    """``probe()``'s first answer that is not None (or False); AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s\n{explain()}")
        time.sleep(0.2)


def pods(cp: ControlPlane, selector: str) -> list[dict[str, Any]]:
    """The pods matching a label selector that are not being deleted."""
    items = cp.admin.request("GET", f"{PODS}?labelSelector={selector}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def running(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def migration_of(cp: ControlPlane, pod: str) -> dict[str, Any] | None:
    items = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations")["items"]
    return next((m for m in items if m["spec"]["podName"] == pod), None)


def outcome(cp: ControlPlane, pod: str, timeout: float = 180.0, explain: Callable[[], str] = lambda: "",
            ) -> dict[str, Any]:
    """The PodMigration of ``pod`` once it has Succeeded or Failed."""
    def done() -> dict[str, Any] | None:
        migration = migration_of(cp, pod)
        phase = (migration or {}).get("status", {}).get("phase")
        return migration if phase in ("Succeeded", "Failed") else None

    return wait_for(f"the migration of {pod} to end", done, timeout,
                    lambda: f"migration: {migration_of(cp, pod)}\n{explain()}")


def counted_on(cp: ControlPlane, pod: str) -> int:
    """The counter's value ``pod`` logged last."""
    lines = read_logs(cp, pod, "count")
    return lines[-1].value if lines else 0


def first_count_after_start(cp: ControlPlane, pod: dict[str, Any]) -> int:
    """The first value the pod's counter logged once its container (re)started: 1 for a fresh replica, where
    the source was for a restored one (containerd restores the log with the process, older lines first)."""
    started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    begin = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
    after = [line for line in read_logs(cp, pod["metadata"]["name"], "count") if line.time.timestamp() >= begin]
    return after[0].value if after else 0


class PodHistory:
    """Every pod of the namespace the apiserver announces while it runs (a watch, from a list): which were
    created, and by whom. A pod a controller starts and deletes at once is seen too."""

    def __init__(self, cp: ControlPlane) -> None:
        self._cp = cp
        self.created: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._error: BaseException | None = None
        listed = cp.admin.request("GET", PODS)
        self.before = {p["metadata"]["name"] for p in listed["items"]}
        self._version = listed["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, name="pod history", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for event in self._cp.admin.watch(PODS, self._version, timeout=5):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise ApiError("WATCH", PODS, obj.get("code", 0), str(obj))
                    self._version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "ADDED" and obj["metadata"]["name"] not in self.before:
                        self.created.setdefault(obj["metadata"]["name"], obj)
        except BaseException as err:  # reported by stop(): a history with a hole in it proves nothing  # noqa: BLE001
            self._error = err

    def stop(self) -> dict[str, dict[str, Any]]:
        """The pods created since the start, by name."""
        self._stop.set()
        self._thread.join(timeout=15)
        if self._error is not None:
            raise AssertionError(f"the pod watch broke: {self._error!r}")
        return dict(self.created)
