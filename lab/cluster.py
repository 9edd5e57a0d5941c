"""A local cluster of real nodes: the control plane, its controllers, and a kubelet + containerd per node.

kube-apiserver + etcd (lab/controlplane.py) listening on the lab bridge, kube-controller-manager (every
default controller: DaemonSets, ReplicaSets, Jobs, CronJobs, garbage collection, CSR signing with the
cluster CA, ServiceAccounts) and kube-scheduler, all of the release scripts/kube/kubernetes.version names;
then one lab/node.py node per name, each on the bridge in namespaces of its own. The lab plays the
cluster operator's one manual part: it approves each kubelet's serving-certificate CSR, after checking it
asks for exactly its own node's name and address (what kubelet-csr-approver and kubeadm's docs have an
operator check), and kube-controller-manager signs it.

    with RealCluster(("node-a", "node-b")) as cluster:
        cluster.cp.admin.request(...)

Needs root (namespaces, cgroups, the bridge) and scripts/node/install-deps.sh's builds.
"""

from __future__ import annotations

import base64
import fcntl
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cryptography import x509

from lab.apiclient import ApiError
from lab.controlplane import ControlPlane, kube_binary, locate_binaries
from lab.kubeconfig import write_cert_kubeconfig
from lab.manifests import install_lpm
from lab.network import GATEWAY, Bridge, NodeAddress, node_address
from lab.node import ClusterAccess, NodeError, RealNode, node_binaries
from lab.processes import ServerProcess
from lab.sandbox import rootfs

_CSR = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
_KUBELET_SERVING = "kubernetes.io/kubelet-serving"
_READY_TIMEOUT = 120.0
_LOCK = "/run/lpm-lab.lock"  # seconds for a node to register, be Ready and serve with its CA-signed certificate


@contextmanager
def store_views(lab: Path, nodes: tuple[str, ...], size: int | None = None) -> Iterator[dict[str, Path]]:
    """One store directory, one bindfs view of it per node; with ``size``, the directory is a filesystem of
    its own that holds that many bytes (a tmpfs), so that a test can fill the store up."""
    store = lab / "store"
    store.mkdir(mode=0o700)
    if size is not None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "lpm-lab-store", str(store)],
                       check=True)
    mounted: dict[str, Path] = {}
    try:
        for node in nodes:
            view = lab / f"store-view-{node}"
            view.mkdir()
            subprocess.run(["bindfs", "--no-allow-other", str(store), str(view)], check=True)
            mounted[node] = view
        yield mounted
    finally:
        for view in mounted.values():
            # A FUSE mount still busy (an agent killed mid-read) refuses -u; detach it lazily then.
            if subprocess.run(["fusermount3", "-u", str(view)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(view)], check=True)
        if size is not None:
            subprocess.run(["umount", "-l", str(store)], check=True)


class ClusterError(Exception):
    """The cluster could not be brought up; the message says which part and carries its log."""


def serving_csr_verdict(csr: Mapping[str, Any], nodes: Mapping[str, NodeAddress]) -> str | None:
    """None if ``csr`` is a kubelet-serving request a lab node may have, else why not (pure: table-tested)."""
    spec = csr["spec"]
    user = spec.get("username", "")
    node = user.removeprefix("system:node:")
    if not user.startswith("system:node:") or node not in nodes:
        return f"requested by {user!r}, not a lab node"
    if "system:nodes" not in spec.get("groups", []):
        return f"{user} is not in system:nodes"
    request = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
    names = {a.oid.dotted_string: a.value for a in request.subject}
    if names.get(x509.NameOID.COMMON_NAME.dotted_string) != user or \
            names.get(x509.NameOID.ORGANIZATION_NAME.dotted_string) != "system:nodes":
        return f"subject {request.subject.rfc4514_string()} is not {user}, O=system:nodes"
    try:
        sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    dns = set(sans.get_values_for_type(x509.DNSName))
    if not ips <= {nodes[node].ip} or not dns <= {node}:
        return f"asks for {sorted(ips | dns)}, beyond {node}'s own name and address"
    return None


class _CsrApprover:
    """Approves the lab nodes' serving-certificate CSRs as they come (kube-controller-manager signs them)."""

    def __init__(self, cp: ControlPlane, nodes: Mapping[str, NodeAddress]) -> None:
        self._cp = cp
        self._nodes = nodes
        self._stop = threading.Event()
        self.refused: dict[str, str] = {}  # CSR name -> why, for a failure message
        self._thread = threading.Thread(target=self._run, name="csr-approver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                for csr in self._cp.admin.request("GET", _CSR)["items"]:
                    self._consider(csr)
            except (OSError, ApiError):
                continue  # the apiserver restarting: the next round asks again

    def _consider(self, csr: dict[str, Any]) -> None:
        name = csr["metadata"]["name"]
        if csr["spec"].get("signerName") != _KUBELET_SERVING or csr.get("status", {}).get("conditions") \
                or name in self.refused:
            return
        why = serving_csr_verdict(csr, self._nodes)
        if why is not None:
            self.refused[name] = why
            return
        csr["status"] = {"conditions": [{"type": "Approved", "status": "True", "reason": "LabApproved",
                                         "message": "the name and address are the node's own"}]}
        self._cp.admin.request("PUT", f"{_CSR}/{name}/approval", csr)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class RealCluster:
    def __init__(self, nodes: tuple[str, ...] = ("node-a", "node-b"),
                 restore_via_create: Mapping[str, bool] | None = None, runtime: str = "containerd",
                 store_size: int | None = None) -> None:
        """``restore_via_create``: per node, containerd's restore opt-in (default on everywhere);
        ``runtime``: every node's, ``containerd`` or ``crio``; ``store_size``: the shared store's capacity in
        bytes (a filesystem of its own), else it is a directory of the lab's."""
        self.addresses = {name: node_address(name, i) for i, name in enumerate(nodes)}
        self._restore = dict(restore_via_create or {})
        self.runtime = runtime
        self.directory = Path(tempfile.mkdtemp(prefix="lpm-lab-"))
        self._bridge = Bridge()
        # Made before the nodes, so that each node's mount namespace has its own view to bind.
        self._store = store_views(self.directory, nodes, store_size)
        self.store_views: dict[str, Path] = {}
        self.cp: ControlPlane | None = None
        self.nodes: dict[str, RealNode] = {}
        self._controllers: list[ServerProcess] = []
        self._approver: _CsrApprover | None = None
        self._lock: IO[str] | None = None

    def __enter__(self) -> RealCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def control_plane(self) -> ControlPlane:
        assert self.cp is not None
        return self.cp

    def start(self) -> None:
        # One lab cluster at a time on a machine: they would share the bridge, its addresses and the nodes'
        # cgroup roots. Held until stop(); the kernel lets go if this process dies.
        lock = open(_LOCK, "w")  # noqa: SIM115 (closed in stop)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            raise ClusterError(f"another lab cluster runs on this machine (it holds {_LOCK}); they share the "
                               "bridge and the nodes' names: run one at a time") from None
        self._lock = lock
        binaries = node_binaries(with_crio=self.runtime == "crio")
        root = rootfs()
        self._bridge.__enter__()
        cp = self.cp = ControlPlane(locate_binaries(), address=GATEWAY)
        cp.start()
        install_lpm(cp.admin)
        self._start_controllers(cp)
        self._approver = _CsrApprover(cp, self.addresses)
        access = ClusterAccess(cp.server, cp.ca)
        self.store_views = self._store.__enter__()
        for name, address in self.addresses.items():
            node = RealNode(name, address, self.directory, root, binaries, access, self.store_views[name],
                            restore_via_create=self._restore.get(name, True), runtime=self.runtime,
                            peers=[peer for other, peer in self.addresses.items() if other != name])
            self.nodes[name] = node
            node.start()
        for node in self.nodes.values():
            self._wait_ready(node)

    def stop(self) -> None:
        if self._lock is None:  # never started, or another cluster's: nothing here is ours to undo
            return
        # Every part is stopped even when one fails: a node left running (its cgroups, its veth, its mounts)
        # breaks every cluster started after it. The first failure is raised at the end.
        failures: list[Exception] = []
        steps: list[Callable[[], object]] = [node.stop for node in reversed(list(self.nodes.values()))]
        if self.store_views:
            steps.append(lambda: self._store.__exit__(None, None, None))
        if self._approver is not None:
            steps.append(self._approver.stop)
        steps += [controller.stop for controller in reversed(self._controllers)]
        if self.cp is not None:
            steps.append(self.cp.stop)
        steps.append(self._bridge.__exit__)
        for step in steps:
            try:
                step()
            except Exception as err:  # noqa: BLE001  (raised below, after the rest is stopped)
                failures.append(err)
        shutil.rmtree(self.directory, ignore_errors=True)
        self._lock.close()
        self._lock = None
        if failures:
            raise failures[0]

    def _kubeconfig(self, cp: ControlPlane, user: str) -> Path:
        cert = cp.ca.issue_client(user.replace(":", "-"), user)
        return write_cert_kubeconfig(cp.directory / f"{user.replace(':', '-')}.kubeconfig", cp.server, cp.ca_file,
                                     cert.cert, cert.key)

    def _start_controllers(self, cp: ControlPlane) -> None:
        # The bootstrap RBAC policy binds these user names to exactly what each component needs.
        kcm = self._kubeconfig(cp, "system:kube-controller-manager")
        self._controllers.append(ServerProcess("kube-controller-manager", [
            str(kube_binary("kube-controller-manager")), f"--kubeconfig={kcm}",
            "--secure-port=0", "--leader-elect=false",
            # Each controller acts as its own ServiceAccount, with the bootstrap policy's role for it.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={cp.service_account_keys.private}",
            f"--root-ca-file={cp.ca_file}",
            # Signs approved CSRs, the kubelets' serving certificates among them, with the cluster CA.
            f"--cluster-signing-cert-file={cp.ca_file}", f"--cluster-signing-key-file={cp.ca.key_file}",
        ], cp.directory / "kube-controller-manager.log"))
        scheduler = self._kubeconfig(cp, "system:kube-scheduler")
        self._controllers.append(ServerProcess("kube-scheduler", [
            str(kube_binary("kube-scheduler")), f"--kubeconfig={scheduler}", "--secure-port=0",
            "--leader-elect=false"], cp.directory / "kube-scheduler.log"))

    def _wait_ready(self, node: RealNode) -> None:
        """Registered, Ready, and serving on 10250 with a certificate the cluster CA verifies for its address."""
        assert self.cp is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        while not (self._is_ready(node.name) and self._serves_verified(node)):
            for process in self._controllers:
                process.check_running()
            if time.monotonic() > deadline:
                refused = self._approver.refused if self._approver else {}
                raise ClusterError(f"{node.name} not Ready with a verified serving certificate after "
                                   f"{_READY_TIMEOUT:.0f} s (CSRs refused: {refused}):\n{node.logs_tail()}")
            time.sleep(0.5)

    def _is_ready(self, name: str) -> bool:
        assert self.cp is not None
        try:
            node = self.cp.admin.request("GET", f"/api/v1/nodes/{name}")
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))

    def _serves_verified(self, node: RealNode) -> bool:
        assert self.cp is not None
        context = ssl.create_default_context(cafile=str(self.cp.ca_file))
        try:
            with socket.create_connection((node.address.ip, 10250), timeout=2) as raw:
                with context.wrap_socket(raw, server_hostname=node.address.ip):
                    return True
        except (OSError, ssl.SSLError):
            return False

    def node_failure(self) -> str:
        """Every node's daemon logs, for a failure message."""
        return "\n".join(f"=== {name}\n{node.logs_tail()}" for name, node in self.nodes.items())


__all__ = ["ClusterError", "NodeError", "RealCluster", "serving_csr_verdict"]
