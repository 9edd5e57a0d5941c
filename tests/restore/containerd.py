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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.controlplane import REPO
from lab.processes import ServerError, ServerProcess

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

    def ctr_bytes(self, *args: str) -> bytes:
        """ctr's output as bytes (a blob's content)."""
        command = [str(self.ctr_binary), "--address", self.address, "--namespace", "k8s.io", *args]
        result = subprocess.run(command, check=False, capture_output=True, timeout=60)
        if result.returncode:
            pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr.decode(errors='replace')}")
        return result.stdout


def binaries() -> Path:
    """The cached build's directory; building it here if setup has not (about a minute, once)."""
    result = subprocess.run([str(BUILD)], check=False, capture_output=True, text=True)
    if result.returncode:
        pytest.fail(f"{BUILD} failed:\n{result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@contextmanager
def run_containerd(parent: Path = Path("/tmp"), restore_via_create: bool | None = None) -> Iterator[Containerd]:
    """``parent``: where its directory goes (a sandbox's share, to reach its socket from there).
    ``restore_via_create``: the CRI runtime config's ``enable_experimental_restore_via_create``,
    written as given (None: left out, containerd's default, off since 2.2.7 and 2.3.4)."""
    if os.geteuid() != 0:
        pytest.fail("containerd needs root: run the suite as root (scripts/test)")
    bin_dir = binaries()
    top = Path(tempfile.mkdtemp(prefix="lpm-ctrd-", dir=parent))
    socket = top / "containerd.sock"
    config = top / "config.toml"
    text = f'version = 3\nroot = "{top / "root"}"\nstate = "{top / "state"}"\n[grpc]\n  address = "{socket}"\n'
    if restore_via_create is not None:
        # restrict_oom_score_adj: these machines lack CAP_SYS_RESOURCE, which a created container would
        # need (none is created here, but a daemon configured for restore is one that could).
        text += ('[plugins."io.containerd.cri.v1.runtime"]\n  restrict_oom_score_adj = true\n'
                 f'  enable_experimental_restore_via_create = {"true" if restore_via_create else "false"}\n')
    config.write_text(text)
    log = top / "containerd.log"
    process = ServerProcess("containerd", [str(bin_dir / "containerd"), "--config", str(config)], log)
    daemon = Containerd(str(socket), bin_dir / "ctr", log)
    try:
        try:
            process.wait_ready(lambda: daemon.ctr("version", check=False).returncode == 0, timeout=20.0)
        except ServerError as err:
            pytest.fail(str(err))
        yield daemon
    finally:
        process.stop()
        # Unpacked snapshots are overlay directories, not mounts (nothing ran), so this removes everything.
        shutil.rmtree(top, ignore_errors=True)
