"""The lab's node network: one host bridge, and each real node in a network namespace of its own on it.

Like kind's docker network: the nodes reach each other and the apiserver (which listens on the bridge's
address) over a veth pair each, and nothing leaves the machine: the bridge has no uplink, no route and no
NAT. Pods live in further namespaces inside each node, on that node's own CNI bridge and pod subnet.

The names and the 172.31.250.0/24 range are the lab's own; a bridge left by a killed run is replaced.

Each node runs kube-proxy (lab/node.py). Before it has synced, ``route_kubernetes_service`` already lets
pods — lpm's DaemonSet among them — reach the apiserver at the ``kubernetes`` Service's address, and
masquerades pod traffic leaving the node; ``route_pod_subnets`` routes the other nodes' pod subnets.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

BRIDGE = "lpm-lab0"
GATEWAY = "172.31.250.1"  # the host's address on the bridge: the apiserver listens here
# The `kubernetes` Service's ClusterIP in --service-cluster-ip-range 10.96.0.0/16: what a pod's in-cluster
# client dials (KUBERNETES_SERVICE_HOST), on port 443.
KUBERNETES_SERVICE_IP = "10.96.0.1"
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
        address."""
        Bridge.detach(address)  # one a killed run left behind (the lab's lock says no other cluster runs)
        host_end = _host_end(address)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
        _ip("link", "set", host_end, "master", BRIDGE, "up")
        _ip("link", "set", "lo", "up", netns_pid=pid)
        _ip("addr", "add", f"{address.ip}/{_PREFIX}", "dev", "eth0", netns_pid=pid)
        _ip("link", "set", "eth0", "up", netns_pid=pid)
        _ip("route", "add", "default", "via", GATEWAY, netns_pid=pid)


    @staticmethod
    def detach(address: NodeAddress) -> None:
        """Delete the node's veth pair now. It would also go with the node's network namespace, but only once
        the kernel has reaped the namespace's last process, after the node's init was killed: a node of the
        same name started in between (the next test module's) would find its name taken."""
        host_end = _host_end(address)
        deleted = subprocess.run(["ip", "link", "del", host_end], capture_output=True, text=True)
        # Gone already is as good: the kernel removes the pair with the namespace, which may happen between any
        # look and this delete (seen once at a module's teardown).
        if deleted.returncode != 0 and "Cannot find device" not in deleted.stderr:
            raise NetworkError(f"ip link del {host_end}: {deleted.stderr.strip()}")


def _host_end(address: NodeAddress) -> str:
    return f"veth-{address.node}"[:15]


def route_kubernetes_service(pid: int, address: NodeAddress, apiserver_port: int) -> None:
    """In the network namespace of ``pid``: the ``kubernetes`` Service's ClusterIP:443 is the apiserver, for
    the node's own processes and for its pods, whose traffic leaves the node masqueraded as the node's
    address (the host has no route to the pod subnets). What kube-proxy's rules for that Service do."""
    def iptables(*rule: str) -> None:
        command = ["nsenter", "-t", str(pid), "-m", "-n", "iptables", "-w", *rule]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise NetworkError(f"{' '.join(command)}: {result.stderr.strip()}")

    target = f"{GATEWAY}:{apiserver_port}"
    for chain in ("PREROUTING", "OUTPUT"):
        iptables("-t", "nat", "-A", chain, "-d", f"{KUBERNETES_SERVICE_IP}/32", "-p", "tcp", "--dport", "443",
                 "-j", "DNAT", "--to-destination", target)
    iptables("-t", "nat", "-A", "POSTROUTING", "-s", address.pod_subnet, "-o", "eth0", "-j", "MASQUERADE")
    forward = subprocess.run(["nsenter", "-t", str(pid), "-n", "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                             capture_output=True, text=True)
    if forward.returncode != 0:
        raise NetworkError(f"ip_forward in {address.node}: {forward.stderr.strip()}")


def route_pod_subnets(pid: int, peers: Iterable[NodeAddress]) -> None:
    """In the network namespace of ``pid``: each peer node's pod subnet through that node's address, as a
    cluster's pod network routes them (the pods' traffic leaves masqueraded as the node's address)."""
    for peer in peers:
        _ip("route", "add", peer.pod_subnet, "via", peer.ip, netns_pid=pid)
