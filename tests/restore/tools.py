"""The real tools that check lpm's checkpoint images: skopeo, and a CNCF distribution registry on loopback.

Both come from Debian (scripts/restore/install-deps.sh). A missing tool fails the test with
the command that installs it: a skipped check here would let a broken image format land.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "scripts/restore/install-deps.sh"
_PR_SET_PDEATHSIG = 1
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
    """``127.0.0.1:PORT``; plain HTTP unless ``tls``."""
    log: Path
    tls: RegistryTLS | None = None


def _free_port() -> int:
    # Released before the registry binds it; if another process takes it in between, the registry
    # exits and the start-up error shows its log.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    # In the child before exec: if pytest is killed outright, the kernel ends the registry too.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _config(address: str, storage: Path, tls: RegistryTLS | None) -> str:
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
""" + ("" if tls is None else f"""  tls:
    certificate: {tls.cert}
    key: {tls.key}
""")


def _wait_ready(process: subprocess.Popen[bytes], registry: Registry, timeout: float = 20.0) -> None:
    # No proxy, whatever the environment says: the registry is on this machine's loopback.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    scheme = "http"
    if registry.tls is not None:
        scheme = "https"
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=registry.tls.ca)))
    opener = urllib.request.build_opener(*handlers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"docker-registry exited {process.returncode}:\n{registry.log.read_text()}")
        try:
            with opener.open(f"{scheme}://{registry.address}/v2/", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    pytest.fail(f"docker-registry not ready on {registry.address} after {timeout}s:\n{registry.log.read_text()}")


def run_registry(workdir: Path, tls: RegistryTLS | None = None) -> Iterator[Registry]:
    """A registry on 127.0.0.1 and a free port, storing into ``workdir``; stopped on exit."""
    binary = tool("docker-registry")
    workdir.mkdir()
    registry = Registry(f"127.0.0.1:{_free_port()}", workdir / "registry.log", tls)
    config = workdir / "config.yml"
    config.write_text(_config(registry.address, workdir / "storage", tls))
    with open(registry.log, "wb") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=die_with_parent)
    try:
        _wait_ready(process, registry)
        yield registry
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
