"""deploy/ rendered by the real kustomize (lab/kustomize.py), and what the tests look up in it."""

from __future__ import annotations

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
    "s3": DEPLOY / "overlays" / "s3",
}
COMPONENTS = DEPLOY / "components"


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
