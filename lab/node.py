"""A real Kubernetes node: the kubelet over containerd + runc + CRIU, isolated the way kind isolates one.

Each node is a holder process (``catatonit -P``, an init that reaps) in namespaces of its own — mount,
network, PID and UTS — rooted in the trixie rootfs (CRIU 4, iptables, the CNI plugins), like lab/sandbox.py
but with a network namespace on the lab bridge (lab/network.py) and a fresh sysfs for it. Its state lives
in host directories bind-mounted where a node keeps them (``/var/lib/kubelet``, ``/var/lib/containerd``,
``/etc/cni/net.d``, ``/var/log``), so a test reads the kubelet's checkpoint directory from the host; the
binaries built under .cache/ are bind-mounted under ``/opt/lpm``; the lab's directory is bind-mounted at
its own path, so a path under it means the same thing inside and out.

containerd and the kubelet are started inside with nsenter. The kubelet authenticates to the apiserver with
a ``system:node:<name>`` client certificate, authenticates and authorises its own callers through the
apiserver (webhook), and gets its serving certificate from a CSR for the ``kubernetes.io/kubelet-serving``
signer (``serverTLSBootstrap``), which the lab approves (lab/cluster.py) and kube-controller-manager signs
with the cluster CA: so the agent verifies the kubelet against the cluster CA, as on a kubeadm cluster.

The machine's cgroups are v1 (hybrid): the node's kubelet gets a cgroup root of its own (``/lpm-<node>``),
created here in every v1 hierarchy and removed, depth first, once every process of the node is gone; the
v2 mount is unmounted inside the node only (runc refuses the hybrid layout). No other cgroup is touched.
Stopping the holder ends every process of the node (the PID namespace's init), the network namespace with
its veth and pod networks, and every mount made inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from lab import crio
from lab.controlplane import REPO, kube_binary
from lab.images import node_images
from lab.kubeconfig import write_cert_kubeconfig
from lab.network import Bridge, NodeAddress, route_kubernetes_service, route_pod_subnets
from lab.pki import CertificateAuthority
from lab.processes import ServerError, ServerProcess

_CGROUP = Path("/sys/fs/cgroup")
_OPT = "/opt/lpm"  # inside the node: kubernetes/, containerd/ (with ctr and the shim), runc/
CTR = f"{_OPT}/containerd/ctr"
_PATH = (f"{_OPT}/kubernetes:{_OPT}/containerd:{_OPT}/crio:{_OPT}/runc:"
         "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
_CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
STORE_PATH = "/srv/lpm-store"  # inside a node: its view of the shared store (a hostPath PV names it)
_START_TIMEOUT = 60.0


class NodeError(Exception):
    """A node could not be set up, or one of its daemons failed; the message carries their log's end."""


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    containerd_dir: Path
    """containerd, ctr and containerd-shim-runc-v2"""
    runc: Path
    crio_dir: Path | None = None
    """crio and pinns, when a node runs CRI-O"""


def _build(script: str) -> Path:
    """Run a build script of scripts/ (a cached build returns at once); it prints its result last."""
    result = subprocess.run([str(REPO / "scripts" / script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise NodeError(f"scripts/{script} failed: {result.stderr.strip()[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def node_binaries(with_crio: bool = False) -> NodeBinaries:
    """The kubelet, containerd, runc (and CRI-O, ``with_crio``) this lab runs (built and cached by
    scripts/node/install-deps.sh)."""
    _build("kube/build-kube.sh")
    return NodeBinaries(kubelet=kube_binary("kubelet"), containerd_dir=_build("restore/build-containerd.sh"),
                        runc=_build("node/build-runc.sh"), crio_dir=_build("node/build-crio.sh") if with_crio else None)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:  # already gone
        return []


def _hierarchies() -> list[Path]:
    """The machine's cgroup v1 hierarchies (the v2 ``unified`` one has no controllers here)."""
    return sorted(p for p in _CGROUP.iterdir() if p.is_dir() and p.name != "unified")


def make_cgroup_root(name: str) -> None:
    for hierarchy in _hierarchies():
        directory = hierarchy / name
        directory.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":  # an empty cpuset admits no process: inherit the parent's
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (directory / knob).write_text((hierarchy / knob).read_text())


def remove_cgroup_root(name: str, timeout: float = 20.0) -> None:
    """rmdir the node's cgroups depth first, waiting for the kernel to let go of exited processes."""
    deadline = time.monotonic() + timeout
    # A dump cut short (its node stopped while CRIU held the container frozen) leaves its cgroup FROZEN, and a
    # frozen process never acts on its SIGKILL: thawed first, it dies and every hierarchy's cgroup empties.
    for state in (_CGROUP / "freezer" / name).rglob("freezer.state"):
        with contextlib.suppress(OSError):
            state.write_text("THAWED")
    for hierarchy in _hierarchies():
        top = hierarchy / name
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as err:  # EBUSY until the last task of the cgroup is reaped
                    if time.monotonic() > deadline:
                        raise NodeError(f"cgroup {directory} stays busy: {err}") from None
                    time.sleep(0.1)


@dataclass(frozen=True)
class ClusterAccess:
    """What a node needs from the control plane."""

    server: str
    ca: CertificateAuthority


class RealNode:
    def __init__(self, name: str, address: NodeAddress, lab_dir: Path, rootfs: Path, binaries: NodeBinaries,
                 access: ClusterAccess, store_view: Path, restore_via_create: bool = True,
                 runtime: str = "containerd", peers: Sequence[NodeAddress] = ()) -> None:
        """``store_view``: this node's view of the shared store (a bindfs mount: one NFS client), seen inside
        at ``STORE_PATH``. ``peers``: the other nodes, whose pod subnets are routed to them.
        ``restore_via_create``: containerd's CRI opt-in to restore from checkpoint images (2.2.7+/2.3).
        ``runtime``: ``containerd`` or ``crio`` (lab/crio.py)."""
        if runtime not in ("containerd", "crio"):
            raise ValueError(f"runtime {runtime!r}: expected containerd or crio")
        self.name = name
        self.address = address
        self.lab_dir = lab_dir
        self.rootfs = rootfs
        self.binaries = binaries
        self.access = access
        self.restore_via_create = restore_via_create
        self.runtime = runtime
        self.store_view = store_view
        self.peers = tuple(peers)
        self.directory = lab_dir / name
        self.manifests = self.directory / "manifests"
        """The kubelet's static pod directory (the lab directory is at the same path inside the node)."""
        self.cgroup_root = f"lpm-{name}"
        self._holder: subprocess.Popen[bytes] | None = None
        self._init = 0  # the node's PID 1 (catatonit), whose namespaces nsenter enters
        self._daemons: list[ServerProcess] = []

    # -- paths, as the host sees them ----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        """The kubelet's checkpoint directory (``/var/lib/kubelet/checkpoints`` inside)."""
        return self.directory / "kubelet" / "checkpoints"

    @property
    def pid(self) -> int:
        """The node's init, as the host sees it: every namespace of the node is its."""
        assert self._init, "the node is not started"
        return self._init

    def prefix(self, *namespaces: str) -> list[str]:
        """A command prefix that runs a program inside the node: its mount namespace (its files, its
        binaries, its containerd socket), and any of ``net``, ``pid``, ``uts`` besides."""
        flags = {"mount": "-m", "net": "-n", "pid": "-p", "uts": "-u"}
        return ["nsenter", "-t", str(self.pid), "-m", *[flags[n] for n in namespaces if n != "mount"], "--",
                "env", "-i", f"PATH={_PATH}", "HOME=/root"]

    @property
    def _socket(self) -> str:
        return crio.SOCKET if self.runtime == "crio" else _CONTAINERD_SOCKET

    @property
    def runtime_endpoint(self) -> str:
        """The node's CRI socket as the host reaches it (through its init's root): what the agent asks."""
        return f"unix:///proc/{self.pid}/root{self._socket}"

    def ctr_prefix(self) -> list[str]:
        """``ctr`` on this node's containerd, in the CRI namespace, as lpm's containerd importer runs it."""
        return [*self.prefix(), CTR, "--address", _CONTAINERD_SOCKET, "--namespace", "k8s.io"]

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._write_state()
            make_cgroup_root(self.cgroup_root)
            self._start_holder()
            Bridge.attach(self.pid, self.address)
            route_kubernetes_service(self.pid, self.address, urlsplit(self.access.server).port or 443)
            route_pod_subnets(self.pid, self.peers)
            if self.runtime == "crio":
                self._start_crio()
            else:
                self._start_containerd()
            self._import_images()
            self._start_kubelet()
            self._start_kube_proxy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """The kubelet, then containerd, then every process left (the holder's PID namespace), then cgroups."""
        for daemon in reversed(self._daemons):
            # nsenter forks the daemon into the node's PID namespace and does not pass signals on: the
            # SIGTERM goes to the daemon itself, then nsenter exits with it.
            for child in _children(daemon.pid):
                os.kill(child, signal.SIGTERM)
            daemon.stop()
        self._daemons.clear()
        if self._holder is not None and self._holder.poll() is None:
            os.killpg(self._holder.pid, signal.SIGKILL)
            self._holder.wait(timeout=10)
        Bridge.detach(self.address)
        remove_cgroup_root(self.cgroup_root)

    def logs_tail(self, lines: int = 30) -> str:
        """The end of the kubelet's and containerd's logs, and of CRIU's logs of failed dumps and restores
        (inside the node, under the runtime's state), for a failure message."""
        daemons = "\n".join(f"--- {d.name}:\n{d.log_tail(lines)}" for d in self._daemons)
        if not self._init:
            return daemons
        # CRIU writes "Error (...)" lines before it gives up; a log without one is a success's.
        found = subprocess.run([*self.prefix(), "sh", "-c",
                                "for f in $(find /run /var/lib/containerd /var/lib/containers "
                                "-name 'criu-*.log' -o -name 'dump.log' -o -name 'restore.log' 2>/dev/null); do "
                                "grep -q 'Error (' $f && { echo \"--- $f\"; grep -B3 'Error (' $f | tail -20; }; done"],
                               capture_output=True, text=True, timeout=30)
        return daemons + (f"\n--- CRIU logs with errors:\n{found.stdout}" if found.stdout.strip() else "")

    # -- set-up steps ------------------------------------------------------------------------------------------

    def _write_state(self) -> None:
        for sub in ("kubelet/checkpoints", "containerd", "cni-state", "cni-conf", "log", "etc", "images", "lpm",
                    "manifests", "criu", "certs.d"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        etc = self.directory / "etc"
        # The node sees the lab's directory, not the control plane's: its credentials are copied into its
        # own etc/ (0700).
        client = self.access.ca.issue_client(f"kubelet-{self.name}", f"system:node:{self.name}", ("system:nodes",))
        for source in (client.cert, client.key, self.access.ca.cert_file):
            shutil.copy(source, etc / source.name)
        write_cert_kubeconfig(etc / "kubelet.kubeconfig", self.access.server, etc / "ca.crt",
                              etc / client.cert.name, etc / client.key.name)
        if self.runtime == "crio":
            crio.write_config(self.directory)
        else:
            (etc / "containerd.toml").write_text(self._containerd_config())
        (etc / "kubelet.yaml").write_text(yaml.safe_dump(self._kubelet_config(), sort_keys=False))
        # runc hands CRIU this file on every dump and restore. Without tcp-close a process with an established
        # TCP connection (a server mid-request) cannot be dumped ("Connected TCP socket, consider using
        # --tcp-established"), and an established connection could not be restored anyway: the restored pod
        # has another address. Its peers see the connection closed and reconnect through the Service. Without
        # skip-in-flight, a connection still in a listening socket's queue fails the dump ("In-flight
        # connection"); skipped, its client retries.
        (self.directory / "criu" / "runc.conf").write_text("tcp-close\nskip-in-flight\n")
        # kube-proxy as kubeadm runs it: the system:kube-proxy user, bound by default to system:node-proxier.
        proxy = self.access.ca.issue_client(f"kube-proxy-{self.name}", "system:kube-proxy")
        for source in (proxy.cert, proxy.key):
            shutil.copy(source, etc / source.name)
        write_cert_kubeconfig(etc / "kube-proxy.kubeconfig", self.access.server, etc / "ca.crt",
                              etc / proxy.cert.name, etc / proxy.key.name)
        (etc / "kube-proxy.yaml").write_text(yaml.safe_dump(self._kube_proxy_config(), sort_keys=False))
        (self.directory / "cni-conf" / "10-lpm.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "lpm-pods", "plugins": [{
                "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": self.address.pod_subnet}]],
                         "routes": [{"dst": "0.0.0.0/0"}]}}]}))

    def _kube_proxy_config(self) -> dict[str, object]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "hostnameOverride": self.name, "clusterCIDR": "10.244.0.0/16",
            "clientConnection": {"kubeconfig": str(self.directory / "etc" / "kube-proxy.kubeconfig")},
            "bindAddress": self.address.ip, "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # The conntrack table's size and timeouts are the machine's (global sysctls), not a node's to set.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            # No NodePorts on 127.0.0.1: that would set route_localnet, which the lab has no use for.
            "iptables": {"localhostNodePorts": False},
        }

    def _containerd_config(self) -> str:
        return f"""version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "{_CONTAINERD_SOCKET}"
[plugins."io.containerd.cri.v1.runtime"]
  # These machines lack CAP_SYS_RESOURCE for containers: never lower an oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  # 2.2.7+/2.3.x restore from a checkpoint image through CreateContainer only with this opt-in.
  enable_experimental_restore_via_create = {str(self.restore_via_create).lower()}
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  # runc, not crun: crun under the runc shim cannot restore. A checkpoint restores under the runtime it
  # was taken with, so every node runs the same one.
  BinaryName = "{_OPT}/runc/runc"
  SystemdCgroup = false
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "/etc/cni/net.d"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "localhost/lpm-pause:1"
[plugins."io.containerd.cri.v1.images".registry]
  # One directory per registry host (host:port), read at each pull: a test trusts its registry there.
  config_path = "/etc/containerd/certs.d"
"""

    def _kubelet_config(self) -> dict[str, object]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            # 1.35+ refuses cgroup v1 unless told; cgroupfs, under a root of this node's own.
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{self.cgroup_root}",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self._socket}",
            "address": self.address.ip, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            # Who may call it is the apiserver's decision: client certificates of the cluster CA and bearer
            # tokens (TokenReview), authorised by SubjectAccessReview (so nodes/checkpoint is enforced here).
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.directory / "etc" / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            # Its serving certificate from the cluster CA, through a kubelet-serving CSR.
            "serverTLSBootstrap": True,
            "featureGates": {"ContainerCheckpoint": True},
            "resolvConf": "",
            "enforceNodeAllocatable": [], "localStorageCapacityIsolation": False,
            # The machine's disk is shared with everything else; never evict a lab pod for it.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "nodeStatusUpdateFrequency": "2s",
            # Static pods: a manifest written here runs on this node alone, with a mirror pod in the API.
            "staticPodPath": str(self.manifests), "fileCheckFrequency": "2s",
        }

    def _start_holder(self) -> None:
        root = self.rootfs
        binds = [(self.directory / "kubelet", "/var/lib/kubelet"),
                 (self.directory / "containerd", "/var/lib/containerd"),
                 (self.directory / "cni-state", "/var/lib/cni"),
                 (self.directory / "cni-conf", "/etc/cni/net.d"),
                 (self.directory / "log", "/var/log"),
                 # lpm's DaemonSet keeps its node-local store under /var/lib/lpm (a hostPath).
                 (self.directory / "lpm", "/var/lib/lpm"),
                 (self.directory / "criu", "/etc/criu"),
                 (self.directory / "certs.d", "/etc/containerd/certs.d"),
                 (self.store_view, STORE_PATH),
                 (self.lab_dir, str(self.lab_dir))]
        # The cached builds, one directory each. Directories, not files: runc re-executes itself through an
        # overlayfs over its own directory (its CVE-2019-5736 guard), which sees no file bind mounts.
        binds += [(self.binaries.kubelet.parent, f"{_OPT}/kubernetes"),
                  (self.binaries.containerd_dir, f"{_OPT}/containerd"), (self.binaries.runc.parent, f"{_OPT}/runc")]
        if self.runtime == "crio":
            assert self.binaries.crio_dir is not None, "node_binaries(with_crio=True) builds CRI-O"
            binds += [(self.binaries.crio_dir, f"{_OPT}/crio"),
                      # CRI-O's and skopeo's storage.conf and policy.json: the node's own.
                      (self.directory / "etc" / "containers", "/etc/containers")]
        mounts = "\n".join(f"mkdir -p '{root}{inside}'\nmount --bind '{host}' '{root}{inside}'"
                           for host, inside in binds)
        script = f"""
            set -e
            mount --bind '{root}' '{root}'
            cd '{root}'
            mount -t proc proc proc
            # sysfs of this network namespace (its interfaces), with the host's cgroup v1 hierarchies in it.
            mount -t sysfs sysfs sys
            mount --rbind /sys/fs/cgroup sys/fs/cgroup
            mount --rbind /dev dev
            mount -t tmpfs -o mode=0755 tmpfs run
            mount -t tmpfs -o mode=1777 tmpfs tmp
            {mounts}
            mkdir -p .oldroot
            pivot_root . .oldroot
            umount -l /.oldroot
            umount /sys/fs/cgroup/unified 2>/dev/null || true
            hostname '{self.name}'
            touch /run/lpm-node-ready
            exec catatonit -P
        """
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--net", "--pid", "--fork", "--propagation", "private",
             "sh", "-ec", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 20
        # unshare itself stays in the host's PID namespace (a new one is only for its children): enter the
        # namespaces of the child it forked, which becomes the node's init.
        while not self._init or subprocess.run([*self.prefix(), "test", "-e", "/run/lpm-node-ready"],
                                               capture_output=True).returncode != 0:
            if not self._init and (children := _children(self._holder.pid)):
                self._init = children[0]
                continue
            if self._holder.poll() is not None:
                assert self._holder.stderr is not None
                raise NodeError(f"{self.name}: namespace setup failed ({self._holder.returncode}): "
                                f"{self._holder.stderr.read().decode(errors='replace')[-1500:]}")
            if time.monotonic() > deadline:
                raise NodeError(f"{self.name}: the node's namespaces never became ready")
            time.sleep(0.05)

    def _daemon(self, name: str, argv: Sequence[str]) -> ServerProcess:
        daemon = ServerProcess(f"{name} on {self.name}", [*self.prefix("net", "pid", "uts"), *argv],
                               self.directory / f"{name}.log")
        self._daemons.append(daemon)
        return daemon

    def _wait(self, daemon: ServerProcess, ready: Sequence[str]) -> None:
        def check() -> bool:
            return subprocess.run([*self.prefix("net", "pid", "uts"), *ready], capture_output=True).returncode == 0
        try:
            daemon.wait_ready(check, _START_TIMEOUT)
        except ServerError as err:
            raise NodeError(str(err)) from None

    def _start_containerd(self) -> None:
        daemon = self._daemon("containerd", [f"{_OPT}/containerd/containerd", "--config",
                                             str(self.directory / "etc" / "containerd.toml")])
        self._wait(daemon, [CTR, "--address", _CONTAINERD_SOCKET, "version"])

    def _start_crio(self) -> None:
        daemon = self._daemon("crio", [f"{_OPT}/crio/crio", "--config", str(self.directory / "etc" / "crio.conf"),
                                       "--config-dir", ""])
        self._wait(daemon, ["test", "-S", crio.SOCKET])

    def _import_images(self) -> None:
        for name, archive in node_images(self.rootfs, self.directory / "images").items():
            if self.runtime == "crio":
                # skopeo in the node's mount and PID namespaces: its storage.conf, and a /proc it is in.
                result = subprocess.run([*self.prefix("pid"), "skopeo", "copy", "--quiet", f"oci-archive:{archive}",
                                         f"containers-storage:{name}"], capture_output=True, text=True, timeout=300)
                if result.returncode != 0:
                    raise NodeError(f"{self.name}: skopeo copy {archive.name}: {result.stderr.strip()[-1500:]}")
            else:
                self.import_image(archive, name)

    def trust_registry(self, address: str, ca: Path) -> None:
        """The node's containerd pulls from the registry at ``address`` (host:port) over HTTPS, verified against
        ``ca`` alone: its hosts.toml, read at each pull."""
        hosts = self.directory / "certs.d" / address
        hosts.mkdir(parents=True, exist_ok=True)
        shutil.copy(ca, hosts / "ca.pem")
        (hosts / "hosts.toml").write_text(
            f'server = "https://{address}"\n\n[host."https://{address}"]\n  capabilities = ["pull", "resolve"]\n'
            f'  ca = "/etc/containerd/certs.d/{address}/ca.pem"\n')

    def import_image(self, archive: Path, name: str) -> None:
        """An OCI archive into the node's containerd, where the kubelet finds it (the CRI namespace); it must
        come out named ``name`` (the archive's index says so)."""
        # On stdin: the archive may be anywhere on the host, out of the node's sight.
        with archive.open("rb") as stream:
            result = subprocess.run([*self.ctr_prefix(), "images", "import", "-"], stdin=stream,
                                    capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise NodeError(f"{self.name}: ctr images import {archive.name}: {result.stderr.strip()[-1500:]}")
        listed = subprocess.run([*self.ctr_prefix(), "images", "ls", "-q"], capture_output=True, text=True)
        if name not in listed.stdout.split():
            raise NodeError(f"{self.name}: importing {archive.name} gave {listed.stdout.split()}, not {name}")

    def _start_kubelet(self) -> None:
        etc = self.directory / "etc"
        daemon = self._daemon("kubelet", [
            f"{_OPT}/kubernetes/kubelet", f"--config={etc / 'kubelet.yaml'}",
            f"--kubeconfig={etc / 'kubelet.kubeconfig'}", f"--hostname-override={self.name}",
            f"--node-ip={self.address.ip}", "--v=1"])
        self._wait(daemon, ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:10248/healthz')"])

    def _start_kube_proxy(self) -> None:
        """Services' ClusterIPs in this node (iptables mode), as on any node: pods reach a Service's pods on
        either node (``route_pod_subnets``)."""
        etc = self.directory / "etc"
        daemon = self._daemon("kube-proxy", [f"{_OPT}/kubernetes/kube-proxy", f"--config={etc / 'kube-proxy.yaml'}",
                                             "--v=1"])
        self._wait(daemon, ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:10256/livez')"])
