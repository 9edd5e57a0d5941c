"""Real checkpoint archives for ``lpm inspect``'s tests (and the image's), and the real checkpointctl to hold it to.

The archives are podman's (``podman container checkpoint --export``), made by the lab's CRIU 4.2 in the
trixie rootfs (lab/sandbox.py, as tests/image does), once per session. The container runs busybox from that
rootfs as its whole image and holds what inspect must find: several processes (a shell, two of its
children's children), an established TCP connection over loopback (both ends: ``nc -l`` and ``nc``,
checkpointed with ``--tcp-established``), regular files open for writing, pipes, a file deleted from the
image and files written into it (the root-filesystem diff). Its spec carries containerd's Kubernetes
identity annotations so ``lpm ingest`` takes it into a store as it would a node's archive.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.controlplane import REPO
from lab.sandbox import Sandbox, rootfs

POD_UID = "7c1e5a52-9d0b-4c8e-8f3a-0d6a1b2c3d4e"
IDENTITY = {
    "io.kubernetes.cri.sandbox-uid": POD_UID,
    "io.kubernetes.cri.sandbox-name": "nettalk-5f7d9",
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.container-name": "talker",
}
SECRET = "LPM_TEST_SECRET=hunter2-do-not-print"

# Several processes, an established TCP connection (nc -l <- nc over 127.0.0.1:7000), files open for
# writing (fd 3 of the shell: /data/log; nc -l's stdout: /data/received), pipes everywhere; /etc/motd,
# part of the image, deleted (deleted.files); /data/* written (rootfs-diff.tar). Loopback is down in a
# netns of its own until brought up (hence NET_ADMIN).
WORKLOAD = (
    "B=/bin/busybox; $B ip link set lo up; $B mkdir -p /data; echo hello > /data/greeting; $B rm /etc/motd; "
    "$B sleep 100000 | $B nc -l -p 7000 > /data/received & $B sleep 0.5; "
    "(while true; do echo ping; $B sleep 1; done) | $B nc 127.0.0.1 7000 & "
    "exec 3>>/data/log; while true; do echo tick >&3; $B sleep 1; done"
)


@dataclass(frozen=True)
class Archives:
    tcp: Path
    """The running workload, checkpointed with its established TCP connection."""


def _checkpoint(box: Sandbox, name: str, out: Path) -> None:
    # Running for 2 s: the connection is up and a few ticks written.
    deadline = time.monotonic() + 20
    while True:
        top = box.run("podman", "top", name, "args", check=False).stdout
        if top.count("nc ") >= 2 and "nc -l" in top:
            break
        if time.monotonic() > deadline:
            logs = box.run("podman", "logs", name, check=False)
            raise AssertionError(f"the workload never had both nc running: top {top!r}, logs {logs.stdout!r} "
                                 f"{logs.stderr!r}")
        time.sleep(0.2)
    time.sleep(1)
    box.run("podman", "container", "checkpoint", "--tcp-established", "--export", str(out), "--compress", "none",
            name, timeout=180)


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archives]:
    share = tmp_path_factory.mktemp("inspect-share")
    root = rootfs()
    image = share / "image"
    (image / "bin").mkdir(parents=True)
    (image / "etc").mkdir()
    shutil.copy2(root / "usr" / "bin" / "busybox", image / "bin" / "busybox")
    (image / "etc" / "motd").write_text("deleted by the workload\n")
    with Sandbox(root, share) as box:
        box.run("sh", "-c", f"tar -C {image} -c . | podman import - localhost/lpm-inspect-busybox:1", timeout=120)
        annotations = [flag for key, value in IDENTITY.items() for flag in ("--annotation", f"{key}={value}")]
        box.run("podman", "run", "-d", "--name", "talker", "--cap-add", "NET_ADMIN", "--env", SECRET,
                *annotations, "localhost/lpm-inspect-busybox:1", "/bin/busybox", "sh", "-c", WORKLOAD)
        # Named as the kubelet names its archives, so `lpm ingest` takes it into a store.
        tcp = share / "checkpoint-nettalk-5f7d9_shop-talker-2026-12-02T06:40:00Z.tar"
        _checkpoint(box, "talker", tcp)
        yield Archives(tcp=tcp)


@pytest.fixture(scope="session")
def checkpointctl() -> Path:
    """checkpointctl v1.5.0, built from the Go module proxy (cached under $LPM_CACHE_DIR)."""
    built = subprocess.run([str(REPO / "scripts" / "criu" / "build-checkpointctl.sh")], capture_output=True, text=True,
                           timeout=1200)
    if built.returncode != 0:
        raise AssertionError(f"cannot build checkpointctl: {built.stderr[-2000:]}")
    return Path(built.stdout.strip().splitlines()[-1])
