"""Nodes: where a node's kubelet listens, and whether a node can take a migrated pod."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.kubelet import Endpoint


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


def unusable(name: str, node: Mapping[str, Any] | None) -> str | None:
    """Why the target node ``name`` (read: None when there is none) cannot take a pod; None when it can."""
    if node is None:
        return f"target node {name} does not exist"
    if not is_ready(node):
        return f"target node {name} is not Ready"
    return None
