"""A private mount namespace rooted in the trixie rootfs, where CRIU, crun and podman work.

The recipe of ../shared/docs/REAL-STACK.md: ``unshare --mount --propagation private``, the
rootfs bind-mounted onto itself, proc / sys / dev / tmpfs mounted, ``pivot_root``, the host's
cgroup-v1 ``unified`` mount removed (crun refuses the hybrid layout) — in that namespace only.
One holder process (``sleep infinity``) keeps the namespace; every command enters it with
``nsenter``. A host directory is bind-mounted at the same path inside, so paths (checkpoint
directories, image layouts) mean the same thing on both sides.

Built by scripts/criu/build-rootfs.sh (cached under .cache/rootfs/). Needs root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from lab.controlplane import REPO

_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
        "PODMAN_IGNORE_CGROUPSV1_WARNING": "1", "LANG": "C.UTF-8"}


class SandboxError(Exception):
    """The rootfs is missing, or the namespace could not be set up."""


def rootfs() -> Path:
    """Build or find the cached rootfs (the build script prints its path last)."""
    result = subprocess.run([str(REPO / "scripts" / "criu" / "build-rootfs.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        raise SandboxError(f"cannot build the CRIU rootfs: {result.stderr.strip()[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def prune_cgroups() -> None:
    """Remove empty cgroups podman's cgroupfs manager left on the host (rmdir fails on a busy one).

    Containers killed with their namespace leave their cgroups behind, and CRIU walks every
    cgroup below the container's root when it dumps: left to pile up across runs (once
    seen: half a million nested directories), they turn a 0.3 s dump into minutes.
    """
    for parent in Path("/sys/fs/cgroup").glob("*/libpod_parent"):
        for directory in sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                directory.rmdir()
            except OSError:
                pass


class Sandbox:
    def __init__(self, root: Path, share: Path) -> None:
        self.root = root
        self.share = share
        self._holder: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sandbox:
        prune_cgroups()
        self.share.mkdir(parents=True, exist_ok=True)
        script = f"""
            set -e
            mount --bind '{self.root}' '{self.root}'
            cd '{self.root}'
            mount -t proc proc proc
            mount --rbind /sys sys
            mount --rbind /dev dev
            mount -t tmpfs -o mode=0755 tmpfs run
            mount -t tmpfs -o mode=1777 tmpfs tmp
            # After /tmp's tmpfs, which would otherwise hide a share that lives under /tmp.
            mkdir -p '{self.root}{self.share}'
            mount --bind '{self.share}' '{self.root}{self.share}'
            # podman's image and container store lives in the share, not in the cached rootfs: every
            # sandbox starts clean, and concurrent test runs never share (and break) one store.
            mkdir -p '{self.share}/.containers-storage' '{self.root}/var/lib/containers'
            mount --bind '{self.share}/.containers-storage' '{self.root}/var/lib/containers'
            mkdir -p .oldroot
            pivot_root . .oldroot
            umount -l /.oldroot
            umount /sys/fs/cgroup/unified 2>/dev/null || true
            touch /run/lpm-sandbox-ready
            exec sleep infinity
        """
        self._holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            # Failed, or interrupted (Ctrl-C in the demo): the holder has its own session, so nothing
            # else would ever stop it. No podman rm here: no container runs before the namespace is ready.
            if self._holder.poll() is None:
                os.killpg(self._holder.pid, signal.SIGKILL)
                self._holder.wait(timeout=10)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._holder is not None
        deadline = time.monotonic() + 20
        while True:
            if self._holder.poll() is not None:
                assert self._holder.stderr is not None
                raise SandboxError(f"namespace setup failed ({self._holder.returncode}): "
                                   f"{self._holder.stderr.read().decode(errors='replace')[-1500:]}")
            # /run is the namespace's own tmpfs: the marker exists only once pivot_root is done.
            ready = subprocess.run(self._enter(["test", "-e", "/run/lpm-sandbox-ready"]), capture_output=True)
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise SandboxError("the sandbox namespace never became ready")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self._holder is not None and self._holder.poll() is None:
            # Every process of the namespace was started with nsenter; kill them with the holder.
            subprocess.run(self._enter(["sh", "-c", "podman rm -af -t 0 >/dev/null 2>&1 || true"]),
                           capture_output=True, timeout=60)
            os.killpg(self._holder.pid, signal.SIGKILL)
            self._holder.wait(timeout=10)
        prune_cgroups()

    def _enter(self, argv: Sequence[str]) -> list[str]:
        assert self._holder is not None
        return ["nsenter", "-t", str(self._holder.pid), "-m", "--", "env", "-i",
                *[f"{k}={v}" for k, v in _ENV.items()], *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._enter(argv), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-1500:]}")
        return result

    def prefix(self) -> list[str]:
        """The command prefix that runs a program in the sandbox (for lpm's image importer)."""
        return self._enter([])
