"""The restored pod's spec: the source's, unpinned from its node (``watcher.cluster.pins``), bound to this
node, each container on its checkpoint image. Pure: table-tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.cluster.pins import unpinned
from watcher.restore.pipeline import RestoreRefused


def restored_spec(source: Mapping[str, Any], node: str, images: Mapping[str, str]) -> dict[str, Any]:
    """``source`` (a pod's spec) bound to ``node``, with ``images`` (container name -> checkpoint image)."""
    spec = unpinned(source)
    spec["nodeName"] = node
    for container in spec.get("containers", []):
        if container["name"] not in images:
            raise RestoreRefused(f"the checkpoint has no container {container['name']}")
        container["image"] = images[container["name"]]
    return spec
