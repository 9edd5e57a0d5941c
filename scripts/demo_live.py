"""The README's live demo: a counting process moves from node-a to node-b and goes on counting.

    .venv/bin/python scripts/demo_live.py         (root; scripts/setup --for-live first)

A local two-node cluster on real parts (lab/): etcd + kube-apiserver with lpm's CRDs and RBAC,
podman + CRIU in the trixie rootfs, a kubelet stand-in and an lpm agent per node, one shared
store seen through two bindfs views. Then lab/live.py's scenario, the same code the test
tests/realstack/test_live_migration.py runs: the counter pod is annotated
``lpm.my.domain/migrate-to: node-b`` and every step is printed as it happens. Everything is
torn down at the end, also on failure, Ctrl-C or SIGTERM. Exit 0 only if the counter went on
from its last value on node-b; 1 if it did not; 130 if interrupted.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from lab.controlplane import ControlPlane, ControlPlaneError, kube_version, locate_binaries
from lab.live import MigrationFailed, migrate_counter
from lab.manifests import install_lpm
from lab.sandbox import Sandbox, SandboxError, rootfs


def main() -> int:
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.2f} s] {line}", flush=True)

    # Ctrl-C tears down: inside asyncio.run, SIGINT cancels the scenario (its finally blocks stop
    # agents, kubelets and mounts); outside, it raises KeyboardInterrupt through the sandbox's and
    # the control plane's context managers. Set explicitly because a shell starts a background job
    # with SIGINT ignored, and SIGTERM is made to do the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    share = Path(tempfile.mkdtemp(prefix="lpm-demo-live-"))
    try:
        with ControlPlane(locate_binaries()) as cp:
            install_lpm(cp.admin)
            say(f"control plane: etcd + kube-apiserver {kube_version()} at {cp.server}, "
                "lpm's CRDs and RBAC applied")
            with Sandbox(rootfs(), share) as sandbox:
                say("container runtime: podman + CRIU in a private mount namespace of the trixie rootfs")
                asyncio.run(migrate_counter(cp, sandbox, say))
    except KeyboardInterrupt:
        say("interrupted: everything torn down")
        return 130
    except (MigrationFailed, ControlPlaneError, SandboxError) as e:
        say(f"LIVE DEMO FAILED: {e}")
        say("everything torn down")
        return 1
    finally:
        shutil.rmtree(share, ignore_errors=True)
    say("done: control plane, agents, kubelets, containers and mounts torn down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
