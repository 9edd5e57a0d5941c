"""deploy/ rendered by the real kustomize, the one scripts/kube/build-kustomize.sh builds and caches."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from lab.controlplane import REPO

DEPLOY = REPO / "deploy"
# Every kustomization an operator may apply, by the name the tests use.
OVERLAYS = {
    "base": DEPLOY / "base",
    "nfs": DEPLOY / "overlays" / "nfs",
    "alerting": DEPLOY / "overlays" / "alerting",
    "cri-o": DEPLOY / "overlays" / "cri-o",
    "containerd": DEPLOY / "overlays" / "containerd",
    "registry": DEPLOY / "overlays" / "registry",
}
COMPONENTS = DEPLOY / "components"
VERSION_FILE = REPO / "scripts" / "kube" / "kustomize.version"


def locate_kustomize() -> Path:
    """The cached binary (``LPM_KUSTOMIZE`` overrides it); never builds it (scripts/setup --for-tests does)."""
    version = VERSION_FILE.read_text().strip()
    cache = Path(os.environ.get("LPM_CACHE_DIR", REPO / ".cache"))
    binary = Path(os.environ.get("LPM_KUSTOMIZE", cache / "kustomize" / version / "kustomize"))
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"kustomize not found at {binary} (build it: scripts/kube/build-kustomize.sh)")
    return binary


def render(kustomize: Path, directory: Path) -> list[dict[str, Any]]:
    """``kustomize build DIRECTORY``: every object it would have applied, in its order."""
    done = subprocess.run([str(kustomize), "build", str(directory)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"kustomize build {directory} failed: {done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def component_agent(name: str) -> dict[str, Any]:
    """The agent container as ``deploy/components/NAME`` patches it: what that component grants."""
    kustomization = yaml.safe_load((COMPONENTS / name / "kustomization.yaml").read_text())
    [patch] = kustomization["patches"]
    [agent] = yaml.safe_load(patch["patch"])["spec"]["template"]["spec"]["containers"]
    assert agent["name"] == "agent"
    return agent  # type: ignore[no-any-return]
