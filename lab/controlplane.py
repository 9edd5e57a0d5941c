"""A real, local Kubernetes control plane: Debian's etcd and a kube-apiserver built from source.

Everything listens on free ports of 127.0.0.1 (or of the lab bridge, for real nodes: lab/cluster.py) and
lives in one 0700 temporary directory: the CA and certificates, the service-account signing keys, the etcd
data, the logs and the kubeconfigs. RBAC is enforced (``--authorization-mode=Node,RBAC``) and
ServiceAccount tokens are real (TokenRequest), so a test that passes here passes against a cluster's
apiserver too.

There is no controller-manager, scheduler or kubelet here (lab/cluster.py adds them for real nodes):
namespaces and ServiceAccounts are created by hand (``create_namespace`` also adds the ``default``
ServiceAccount that the ServiceAccount admission plugin wants before it admits a pod), and tests set
``spec.nodeName`` and pod status themselves.

Use it as a context manager::

    with ControlPlane(locate_binaries()) as cp:
        print(cp.admin_kubeconfig)
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lab.apiclient import ApiClient, ApiError
from lab.kubeconfig import write_cert_kubeconfig, write_token_kubeconfig
from lab.pki import CertificateAuthority, write_signing_key_pair
from lab.processes import ServerError, ServerProcess, free_port

REPO = Path(__file__).resolve().parents[1]  # lab/ works from a checkout only: it runs scripts/ and .cache/
# The one place that names the Kubernetes release; scripts/kube/build-kube.sh reads it too.
KUBE_VERSION_FILE = REPO / "scripts" / "kube" / "kubernetes.version"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

_START_TIMEOUT = 60.0  # seconds; etcd and the apiserver are ready in about 2.5 s on 2 cores


class ControlPlaneError(Exception):
    """The control plane could not be found, started or used."""


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path


def kube_version() -> str:
    return KUBE_VERSION_FILE.read_text().strip()


def kube_binary(component: str) -> Path:
    """Where scripts/kube/build-kube.sh caches a component of the release (it may not be built yet)."""
    cache = Path(os.environ.get("LPM_CACHE_DIR", REPO / ".cache"))
    return cache / "kubernetes" / kube_version() / component


def locate_binaries() -> Binaries:
    """Find etcd and the cached kube-apiserver; never build or install anything (that is install-deps.sh's job).

    ``LPM_KUBE_APISERVER`` and ``LPM_ETCD`` override the paths; ``LPM_CACHE_DIR`` moves the build cache.
    """
    apiserver = Path(os.environ.get("LPM_KUBE_APISERVER", kube_binary("kube-apiserver")))
    etcd = Path(os.environ.get("LPM_ETCD") or shutil.which("etcd") or "/usr/bin/etcd")
    missing = []
    if not os.access(apiserver, os.X_OK):
        missing.append(f"kube-apiserver not found at {apiserver} (build it: scripts/kube/build-kube.sh)")
    if not os.access(etcd, os.X_OK):
        missing.append(f"etcd not found at {etcd} (install it: scripts/kube/install-deps.sh)")
    if missing:
        raise ControlPlaneError("; ".join(missing))
    return Binaries(kube_apiserver=apiserver, etcd=etcd)


class ControlPlane:
    """etcd + kube-apiserver on loopback, with an admin identity and helpers for ServiceAccount tokens."""

    def __init__(self, binaries: Binaries, address: str = "127.0.0.1") -> None:
        """``address``: where the apiserver listens; real nodes in their own network namespaces reach it
        on the lab bridge's address (lab/network.py), everything else on loopback."""
        self._binaries = binaries
        self.address = address
        self._processes: list[ServerProcess] = []
        # mkdtemp creates the directory 0700: keys, tokens and etcd's data are readable by us only.
        self.directory = Path(tempfile.mkdtemp(prefix="lpm-control-plane-"))
        self._pki = self.directory / "pki"
        self._pki.mkdir(mode=0o700)
        self._port = free_port()
        self.server = f"https://{address}:{self._port}"

        ca = self.ca = CertificateAuthority(self._pki)
        self.ca_file = ca.cert_file
        # Also the `kubernetes` Service's ClusterIP, which pods on the lab's real nodes dial.
        self._serving = ca.issue_serving("apiserver", [address, "localhost", "kubernetes.default.svc", "10.96.0.1"])
        # What the apiserver shows the kubelets it calls (logs, exec, port-forward); the kubelets authorise it
        # by a SubjectAccessReview like any client, and system:masters may do anything.
        self._kubelet_client = ca.issue_client("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                               ("system:masters",))
        # O=system:masters is bound to cluster-admin by the apiserver's bootstrap policy.
        admin = ca.issue_client("admin", "lpm-admin", ("system:masters",))
        self._sa_keys = self.service_account_keys = write_signing_key_pair(self._pki, "service-account")
        self.admin_kubeconfig = write_cert_kubeconfig(
            self.directory / "admin.kubeconfig", self.server, self.ca_file, admin.cert, admin.key
        )
        self.admin = ApiClient(self.server, self.ca_file, admin.cert, admin.key)

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._etcd_url = self._start_etcd()
        self._start_apiserver(self._etcd_url)

    def restart_apiserver(self, down: float = 0.0) -> None:
        """Stop kube-apiserver, stay down ``down`` seconds, start it again on the same port; etcd keeps its data.

        Clients see what a control-plane upgrade shows them: broken watches, refused connections, then a
        server whose watch cache starts afresh. Call it from the main thread: the new process is tied to the
        life of the thread that starts it (PR_SET_PDEATHSIG), and a worker thread's exit would kill it.
        """
        apiserver = next(p for p in self._processes if p.name == "kube-apiserver")
        apiserver.stop()
        self._processes.remove(apiserver)
        time.sleep(down)
        self._start_apiserver(self._etcd_url)

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now, so older resourceVersions are gone (watches on them get 410)."""
        def post(path: str, body: dict[str, object]) -> dict[str, object]:
            request = urllib.request.Request(f"{self._etcd_url}{path}", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                decoded: dict[str, object] = json.loads(answer.read())
                return decoded

        # etcd's JSON gateway wants keys base64-encoded; AA== is the key "\0", enough to read the revision.
        header = post("/v3/kv/range", {"key": "AA=="})["header"]
        revision = int(header["revision"])  # type: ignore[index]
        post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def stop(self) -> None:
        """Stop the apiserver, then etcd (the apiserver flushes to etcd on shutdown), then delete every file."""
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _start_etcd(self) -> str:
        client_url = f"http://127.0.0.1:{free_port()}"
        peer_url = f"http://127.0.0.1:{free_port()}"
        etcd = ServerProcess(
            "etcd",
            [
                str(self._binaries.etcd),
                "--name=default",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--logger=zap",
                "--log-level=warn",
            ],
            self.directory / "etcd.log",
        )
        self._processes.append(etcd)
        self._wait(etcd, lambda: _etcd_healthy(client_url))
        return client_url

    def _start_apiserver(self, etcd_url: str) -> None:
        apiserver = ServerProcess(
            "kube-apiserver",
            [
                str(self._binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                # The endpoint reconciler publishes the advertise address as the `kubernetes` Service's
                # endpoint and refuses a loopback one; nothing here reaches the apiserver through it.
                "--endpoint-reconciler-type=none",
                f"--secure-port={self._port}",
                f"--cert-dir={self._pki}",
                f"--tls-cert-file={self._serving.cert}",
                f"--tls-private-key-file={self._serving.key}",
                f"--client-ca-file={self.ca_file}",
                # Calls to kubelets (pods/log, exec) verify the kubelet's serving certificate, which a real
                # node's kubelet obtains from this CA through a CSR (serverTLSBootstrap).
                f"--kubelet-client-certificate={self._kubelet_client.cert}",
                f"--kubelet-client-key={self._kubelet_client.key}",
                f"--kubelet-certificate-authority={self.ca_file}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--authorization-mode=Node,RBAC",
                # What kubeadm enables beyond the defaults: kubelets may only touch their own node's objects.
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self._sa_keys.public}",
                f"--service-account-signing-key-file={self._sa_keys.private}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--profiling=false",
            ],
            self.directory / "kube-apiserver.log",
        )
        self._processes.append(apiserver)
        self._wait(apiserver, self._apiserver_ready)

    def _wait(self, process: ServerProcess, ready: Callable[[], bool]) -> None:
        try:
            process.wait_ready(ready, _START_TIMEOUT)
        except ServerError as err:
            raise ControlPlaneError(str(err)) from None

    def _apiserver_ready(self) -> bool:
        try:
            self.admin.request("GET", "/readyz")
        # Refused or reset while it starts listening, then 500 until every post-start hook has run.
        except (OSError, http.client.HTTPException, ApiError):
            return False
        return True

    # -- provisioning ----------------------------------------------------------------------------------

    def create_namespace(self, name: str) -> None:
        """A namespace plus its ``default`` ServiceAccount (normally the controller-manager's job)."""
        self._create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self.create_service_account(name, "default")

    def create_service_account(self, namespace: str, name: str) -> None:
        self._create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        )

    def create_node(self, name: str) -> None:
        """A Node object (no kubelet behind it): enough for pods pinned to it and for lookups by name."""
        self._create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})

    def _create(self, collection: str, body: dict[str, object]) -> None:
        try:
            self.admin.request("POST", collection, body)
        except ApiError as e:
            if e.status != 409:  # already there: creation is idempotent for callers
                raise

    def service_account_token(self, namespace: str, name: str, expiration_seconds: int = 3600,
                              pod: str | None = None) -> str:
        """A real, signed, audience-bound token for the ServiceAccount, from the TokenRequest API.

        ``pod``: bind the token to that pod of ``namespace`` (it must run as the ServiceAccount), as the
        kubelet does for the token it mounts; when the pod is bound to a node the API server writes the node
        into the token too, and shows it as the user's extra ``authentication.kubernetes.io/node-name``.
        """
        spec: dict[str, object] = {"expirationSeconds": expiration_seconds}
        if pod is not None:
            uid = self.admin.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")["metadata"]["uid"]
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}
        answer = self.admin.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        token: str = answer["status"]["token"]
        return token

    def service_account_kubeconfig(self, namespace: str, name: str, pod: str | None = None) -> Path:
        """A kubeconfig that acts as the ServiceAccount, TLS verified against this control plane's CA.

        ``pod``: the token is bound to that pod (see ``service_account_token``)."""
        token = self.service_account_token(namespace, name, pod=pod)
        suffix = f"-{pod}" if pod is not None else ""
        return write_token_kubeconfig(
            self.directory / f"sa-{namespace}-{name}{suffix}.kubeconfig", self.server, self.ca_file, token
        )


def _etcd_healthy(client_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=1) as response:
            return b'"true"' in response.read()
    except OSError:
        return False
