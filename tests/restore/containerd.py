"""A real containerd (v2, built by scripts/restore/build-containerd.sh) on a private socket and root.

Nothing on the machine's own containerd (if any) is touched: the daemon gets its own root, state
and socket under a short temporary directory (a unix socket path must fit in 108 bytes). It runs
every default plugin, the CRI one included, so the ``k8s.io`` namespace it serves is the one the
kubelet's images live in. Needs root, like the real thing; a missing binary or an unprivileged run
fails the test with what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.controlplane import REPO
from tests.restore.tools import die_with_parent

BUILD = REPO / "scripts" / "restore" / "build-containerd.sh"


@dataclass(frozen=True)
class Containerd:
    address: str
    ctr_binary: Path
    log: Path

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.ctr_binary), "--address", self.address, "--namespace", "k8s.io", *args]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
        if check and result.returncode:
            pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
        return result


def binaries() -> Path:
    """The cached build's directory; building it here if setup has not (about a minute, once)."""
    result = subprocess.run([str(BUILD)], check=False, capture_output=True, text=True)
    if result.returncode:
        pytest.fail(f"{BUILD} failed:\n{result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@contextmanager
def run_containerd(parent: Path = Path("/tmp")) -> Iterator[Containerd]:
    """``parent``: where its directory goes (a sandbox's share, to reach its socket from there)."""
    if os.geteuid() != 0:
        pytest.fail("containerd needs root: run the suite as root (scripts/test)")
    bin_dir = binaries()
    top = Path(tempfile.mkdtemp(prefix="lpm-ctrd-", dir=parent))
    socket = top / "containerd.sock"
    config = top / "config.toml"
    config.write_text(f'version = 3\nroot = "{top / "root"}"\nstate = "{top / "state"}"\n'
                      f'[grpc]\n  address = "{socket}"\n')
    log = top / "containerd.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(bin_dir / "containerd"), "--config", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    daemon = Containerd(str(socket), bin_dir / "ctr", log)
    try:
        deadline = time.monotonic() + 20
        while daemon.ctr("version", check=False).returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"containerd did not start (exit {process.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield daemon
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Unpacked snapshots are overlay directories, not mounts (nothing ran), so this removes everything.
        shutil.rmtree(top, ignore_errors=True)
