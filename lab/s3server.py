"""s3proxy, the real S3 server scripts/s3/install-s3proxy.sh installs from Maven Central, serving HTTPS on
loopback with a throw-away CA (``lab.pki``), its objects in a directory of its own (jclouds' filesystem-nio2).

``S3Server.env`` is what a client needs, in the standard AWS variables lpm reads: the endpoint, the region,
the credentials and ``AWS_CA_BUNDLE`` (the test CA: TLS is verified, as everywhere in lpm).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, load_pem_private_key, pkcs12

from lab.controlplane import REPO
from lab.pki import CertificateAuthority

VERSIONS = REPO / "scripts" / "s3" / "s3proxy.versions"
IDENTITY = "lpm-test"
CREDENTIAL = "lpm-test-secret-0123456789"  # a test server's; never a real credential
REGION = "us-east-1"
_KEYSTORE_PASSWORD = "lpm-test-keystore"


def versions() -> list[str]:
    """The versions install-s3proxy.sh installs; the first honours If-None-Match, the second ignores it."""
    lines = [line.split() for line in VERSIONS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [parts[0] for parts in lines]


def locate_jar(version: str | None = None) -> Path:
    """The cached jar (``LPM_S3PROXY_JAR`` overrides the first); never downloads it (scripts/setup --for-tests does)."""
    version = version or versions()[0]
    if version == versions()[0] and os.environ.get("LPM_S3PROXY_JAR"):
        return Path(os.environ["LPM_S3PROXY_JAR"])
    cache = Path(os.environ.get("LPM_CACHE_DIR", REPO / ".cache"))
    jar = cache / "s3proxy" / version / "s3proxy.jar"
    if not jar.is_file():
        raise FileNotFoundError(f"s3proxy {version} not found at {jar} (install it: scripts/s3/install-s3proxy.sh)")
    return jar


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """One s3proxy process. ``start`` (again after ``kill``) keeps the port, the data and the CA. ``host``: the
    address it serves on (its certificate names it); the lab bridge's gateway serves the lab's pods."""

    work: Path
    version: str | None = None
    host: str = "127.0.0.1"
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.data = self.work / "data"
        self.data.mkdir(exist_ok=True)
        pki = self.work / "pki"
        pki.mkdir(mode=0o700, exist_ok=True)
        self.ca = CertificateAuthority(pki, "lpm-s3-test-ca")
        serving = self.ca.issue_serving("s3", [self.host, "localhost"])
        key = load_pem_private_key(serving.key.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(serving.cert.read_bytes())
        self.keystore = pki / "s3.p12"
        self.keystore.write_bytes(pkcs12.serialize_key_and_certificates(
            b"s3proxy", key, cert, None, BestAvailableEncryption(_KEYSTORE_PASSWORD.encode())))  # type: ignore[arg-type]
        self.keystore.chmod(0o600)
        self.config = self.work / "s3proxy.conf"
        self.config.write_text("\n".join([
            f"s3proxy.secure-endpoint=https://{self.host}:{self.port}",
            f"s3proxy.keystore-path={self.keystore}",
            f"s3proxy.keystore-password={_KEYSTORE_PASSWORD}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={IDENTITY}",
            f"s3proxy.credential={CREDENTIAL}",
            "jclouds.provider=filesystem-nio2",
            f"jclouds.identity={IDENTITY}",
            f"jclouds.credential={CREDENTIAL}",
            f"jclouds.filesystem.basedir={self.data}",
            "",
        ]))
        self.config.chmod(0o600)
        self.log = self.work / "s3proxy.log"

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": IDENTITY,
            "AWS_SECRET_ACCESS_KEY": CREDENTIAL,
            "AWS_CA_BUNDLE": str(self.ca.cert_file),
            # No shared files of the machine's own: a developer's ~/.aws must not change what the tests see.
            "AWS_CONFIG_FILE": str(self.work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.work / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 60.0) -> None:
        jar = locate_jar(self.version)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["java", "-Xmx256m", "-jar", str(jar), "--properties", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        context = ssl.create_default_context(cafile=str(self.ca.cert_file))
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"s3proxy exited with {self.process.returncode}; its log {self.log}:\n"
                                   + self.log.read_text()[-3000:])
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as raw, \
                        context.wrap_socket(raw, server_hostname=self.host):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"s3proxy did not serve TLS on port {self.port} within {timeout:g} s; "
                                       f"its log {self.log}:\n" + self.log.read_text()[-3000:]) from None
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: the server goes away mid-request, as a crashed or partitioned one does."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
