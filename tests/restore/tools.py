"""The real tools that check lpm's checkpoint images: skopeo, and a CNCF distribution registry on loopback.

Both come from Debian (scripts/restore/install-deps.sh). A missing tool fails the test with
the command that installs it: a skipped check here would let a broken image format land.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.processes import ServerError, ServerProcess, free_port

INSTALL = "scripts/restore/install-deps.sh"
# The images in these tests are local and unsigned; the signature policy is the test's own, so
# no machine-wide /etc/containers/policy.json can change what the tests see.
_ACCEPT_ANYTHING = '{"default": [{"type": "insecureAcceptAnything"}]}'


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install it with {INSTALL} (as root)")
    return path


class Skopeo:
    def __init__(self, workdir: Path) -> None:
        self.binary = tool("skopeo")
        self.policy = workdir / "policy.json"
        self.policy.write_text(_ACCEPT_ANYTHING)

    def __call__(self, *args: str) -> str:
        command = [self.binary, "--policy", str(self.policy), *args]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
        if result.returncode:
            pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
        return result.stdout

    def version(self) -> str:
        return self("--version").strip()


@dataclass(frozen=True)
class RegistryTLS:
    cert: Path
    key: Path
    ca: Path
    """The CA that issued ``cert``; the only thing a client needs to trust."""


@dataclass(frozen=True)
class Registry:
    address: str
    """``HOST:PORT`` (127.0.0.1 unless asked otherwise), HTTPS."""
    log: Path
    tls: RegistryTLS

    @property
    def cert_dir(self) -> Path:
        """What skopeo's ``--cert-dir`` flags (and lpm's ``--registry-cert-dir``) take to trust it."""
        return self.tls.ca.parent


def _config(address: str, storage: Path, tls: RegistryTLS) -> str:
    # The secret signs upload state between requests; one registry, so any fixed value does.
    return f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
http:
  addr: {address}
  secret: lpm-loopback-test-registry
  tls:
    certificate: {tls.cert}
    key: {tls.key}
"""


def _answers(registry: Registry) -> Callable[[], bool]:
    # No proxy, whatever the environment says: the registry is on this machine's loopback.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=registry.tls.ca)))

    def ready() -> bool:
        try:
            with opener.open(f"https://{registry.address}/v2/", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False
    return ready


def run_registry(workdir: Path, tls: RegistryTLS, host: str = "127.0.0.1") -> Iterator[Registry]:
    """A registry on ``host`` and a free port behind ``tls``, storing into ``workdir``; stopped on exit."""
    binary = tool("docker-registry")
    workdir.mkdir()
    registry = Registry(f"{host}:{free_port()}", workdir / "registry.log", tls)
    config = workdir / "config.yml"
    config.write_text(_config(registry.address, workdir / "storage", tls))
    process = ServerProcess("docker-registry", [binary, "serve", str(config)], registry.log)
    try:
        try:
            process.wait_ready(_answers(registry), timeout=20.0)
        except ServerError as err:
            pytest.fail(str(err))
        yield registry
    finally:
        process.stop()
