"""The standalone demo: the agent ingesting an archive as a kubelet writes it.

    .venv/bin/python scripts/demo.py [--workdir DIR] [--memory-mib 64]

What ``scripts/run --standalone`` runs, and ``scripts/run`` where the live demo cannot run.

Starts ``lpm agent --standalone`` on a fresh checkpoint directory and store, writes a
CRI-O-style checkpoint archive into the directory IN PLACE over a few seconds (as CRI-O and
containerd do), waits for the agent to commit it, lists the store and reads the archive back
with ``lpm store get``, checking it is byte-identical. The agent's JSON log is shown as it runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, archive_bytes, archive_name, write_in_place

REPO = Path(__file__).resolve().parent.parent


def lpm(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "watcher", *args], check=True, capture_output=True,
                          text=True, cwd=REPO).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the directory and store")
    parser.add_argument("--memory-mib", type=int, default=64, help="size of the dumped memory image")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lpm-demo-"))
    kube_dir, store = work / "kubelet-checkpoints", work / "store"
    kube_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    print(f"== kubelet checkpoint dir {kube_dir}\n== store {store}\n", flush=True)

    shown = 0
    with AgentProcess("--node", "demo-node", "--checkpoint-dir", str(kube_dir), "--store", str(store)) as agent:
        def show() -> None:
            nonlocal shown
            for line in agent.raw[shown:]:
                print("agent:", line.rstrip(), flush=True)
            shown = len(agent.raw)

        agent.wait_logged("agent starting")
        show()
        pod = Pod(uid="5d0e1c9a-3f41-4b7e-8c2a-9e6d1f0a4b21", namespace="shop-prod", name="cart-7d9f8-x2x4z",
                  container="cart-api")
        path = kube_dir / archive_name(pod, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        data = archive_bytes(ArchiveSpec(pod=pod, memory=args.memory_mib << 20))
        print(f"== writing {path.name} in place ({len(data) >> 20} MiB over ~3 s)", flush=True)
        write_in_place(path, data, pieces=12, pause=0.25)
        agent.wait_logged("archive ingested", timeout=120)
        show()
        code, seconds = agent.stop()
        show()
        print(f"== agent exited {code} {seconds:.2f} s after SIGTERM\n", flush=True)

    print("== lpm store ls --json", flush=True)
    listing = lpm("store", "ls", "--store", str(store), "--json")
    print(listing, flush=True)
    uri = json.loads(listing.splitlines()[0])["artifactURIs"][pod.container]
    out = work / "restored.tar"
    lpm("store", "get", uri, "--store", str(store), "-o", str(out))
    same = out.read_bytes() == path.read_bytes()
    print(f"== lpm store get {uri}\n   -> {out}: {'byte-identical to' if same else 'DIFFERS FROM'} the kubelet archive")
    return 0 if same and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
