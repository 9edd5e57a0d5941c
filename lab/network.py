"""The lab's node network: one host bridge, and each real node in a network namespace of its own on it.

Like kind's docker network: the nodes reach each other and the apiserver (which listens on the bridge's
address) over a veth pair each, and nothing leaves the machine: the bridge has no uplink, no route and no
NAT. Pods live in further namespaces inside each node, on that node's own CNI bridge and pod subnet.

The names and the 172.31.250.0/24 range are the lab's own; a bridge left by a killed run is replaced.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

BRIDGE = "lpm-lab0"
GATEWAY = "172.31.250.1"  # the host's address on the bridge: the apiserver listens here
_PREFIX = 24


class NetworkError(Exception):
    """A link or address could not be set up; the message carries the command and what it said."""


def _ip(*argv: str, netns_pid: int | None = None) -> None:
    # The host's iproute2, entering only the node's network namespace when one is named.
    command = ["ip", *argv] if netns_pid is None else ["nsenter", "-t", str(netns_pid), "-n", "ip", *argv]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise NetworkError(f"{' '.join(command)}: {result.stderr.strip()}")


@dataclass(frozen=True)
class NodeAddress:
    node: str
    ip: str
    pod_subnet: str


def node_address(node: str, index: int) -> NodeAddress:
    """node 0 is 172.31.250.2 with pods in 10.244.1.0/24, node 1 is .3 with 10.244.2.0/24, and so on."""
    return NodeAddress(node, f"172.31.250.{index + 2}", f"10.244.{index + 1}.0/24")


class Bridge:
    def __enter__(self) -> Bridge:
        self.delete()
        _ip("link", "add", "name", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/{_PREFIX}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    @staticmethod
    def delete() -> None:
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0:
            _ip("link", "del", BRIDGE)

    @staticmethod
    def attach(pid: int, address: NodeAddress) -> None:
        """A veth from the bridge into the network namespace of ``pid``, where it is ``eth0`` at the node's
        address. The pair goes when that namespace does (its last process exits)."""
        host_end = f"veth-{address.node}"[:15]
        _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
        _ip("link", "set", host_end, "master", BRIDGE, "up")
        _ip("link", "set", "lo", "up", netns_pid=pid)
        _ip("addr", "add", f"{address.ip}/{_PREFIX}", "dev", "eth0", netns_pid=pid)
        _ip("link", "set", "eth0", "up", netns_pid=pid)
        _ip("route", "add", "default", "via", GATEWAY, netns_pid=pid)
