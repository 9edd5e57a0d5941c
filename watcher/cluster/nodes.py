"""Nodes: where a node's kubelet listens, and whether a node can take a migrated pod."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.cluster.objects import node_path
from watcher.errors import LpmError, NotFound
from watcher.kube.client import Kube
from watcher.kubelet import Endpoint


class NodeUnusable(LpmError):
    """The node does not exist or is not Ready."""


def endpoint_of(node: Mapping[str, Any], default_port: int) -> Endpoint:
    """The kubelet's address as the API server itself would use it: InternalIP, then Hostname."""
    name = node["metadata"]["name"]
    status = node.get("status", {})
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses", [])}
    host = addresses.get("InternalIP") or addresses.get("Hostname") or name
    port = status.get("daemonEndpoints", {}).get("kubeletEndpoint", {}).get("Port") or default_port
    return Endpoint(name, host, int(port))


def is_ready(node: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in node.get("status", {}).get("conditions", []))


async def usable_target(kube: Kube, name: str) -> Mapping[str, Any]:
    """The target node, if it exists and is Ready; otherwise NodeUnusable saying which."""
    try:
        node = await kube.get(node_path(name))
    except NotFound:
        raise NodeUnusable(f"target node {name} does not exist") from None
    if not is_ready(node):
        raise NodeUnusable(f"target node {name} is not Ready")
    return node
