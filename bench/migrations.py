"""Cluster-mode benchmark on the real apiserver: migration control-plane overhead, idle CPU.

    .venv/bin/python bench/migrations.py [--migrations 20] [--pods 500] [--idle-seconds 30]

1. ``--migrations`` times: a pod bound to node-a is created with ``lpm.my.domain/migrate-to:
   node-b``; the time until its PodMigration reads ``CheckpointComplete`` is measured, and the
   kubelet's own time (the stand-in's answer time) and the ingest time (stage + commit, from
   the agent's log) are subtracted: what is left is lpm's control-plane overhead (watch
   latency, PodMigration -> PodCheckpoint -> status round trips).
2. ``--pods`` idle pods are bound to node-a; once the agent has listed them, its CPU time
   (utime + stime from /proc) over ``--idle-seconds`` gives its idle load in % of one core.

Needs the cached kube-apiserver and etcd (scripts/setup --for-tests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from lab.agent import AgentProcess
from lab.controlplane import ControlPlane, locate_binaries
from lab.kubelet import KubeletStandIn, pod_body
from lab.manifests import AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, grant_kubelet_checkpoints, install_lpm
from watcher.cluster.presence import lease_body
from watcher.runtime.capability import Capability, Verdict

NAMESPACE = "bench"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase_of(cp: ControlPlane, name: str) -> str | None:
    for item in cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations")["items"]:
        if item["spec"]["podName"] == name:
            return item.get("status", {}).get("phase")
    return None


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="lpm-bench-cluster-"))
    with ControlPlane(locate_binaries()) as cp:
        install_lpm(cp.admin)
        grant_kubelet_checkpoints(cp.admin)  # the stand-in kubelet takes the checkpoints
        cp.create_namespace(NAMESPACE)
        kubelets = {}
        for node in ("node-a", "node-b"):
            directory = work / node
            directory.mkdir(mode=0o700)
            kubelets[node] = KubeletStandIn(cp, node, directory, memory=1 << 20, pieces=2, pause=0.01)
            await kubelets[node].start()
        # node-b's agent is not run (only node-a's half is measured), but a source refuses a target with
        # no live agent: write the Lease node-b's agent would (live 90 s, longer than the migrations take).
        cp.admin.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NAMESPACE}/leases", lease_body(
            AGENT_NAMESPACE, "node-b", Capability(Verdict.UNKNOWN, "", "", "benchmark: no agent runs on node-b"),
            datetime.now(UTC)))
        token = work / "token"
        token.write_text(cp.service_account_token(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT))
        agent = AgentProcess.cluster(
            "--node", "node-a", "--kubeconfig", str(cp.service_account_kubeconfig(AGENT_NAMESPACE,
                                                                                  AGENT_SERVICE_ACCOUNT)),
            "--checkpoint-via", "kubelet", "--kubelet-ca", str(cp.ca_file), "--kubelet-token-file", str(token),
            "--checkpoint-dir", str(work / "node-a"), "--store", str(work / "store"))
        try:
            agent.wait_logged("cluster mode watching")
            overheads, totals = [], []
            for index in range(args.migrations):
                name = f"mover-{index}"
                before_kubelet = len(kubelets["node-a"].seconds)
                started = time.monotonic()
                cp.admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod_body(
                    NAMESPACE, name, "node-a", ("app",), {"lpm.my.domain/migrate-to": "node-b"}))
                while (phase := await asyncio.to_thread(phase_of, cp, name)) != "CheckpointComplete":
                    if phase == "Failed":
                        raise SystemExit(f"migration of {name} failed")
                    await asyncio.sleep(0.01)
                total = time.monotonic() - started
                kubelet = sum(kubelets["node-a"].seconds[before_kubelet:])
                ingest = sum(line["ingestSeconds"] for line in agent.logs("container ingested")
                             if line["pod"] == f"{NAMESPACE}/{name}")
                ingest += sum(line["commitSeconds"] for line in agent.logs("checkpoint committed")
                              if line["pod"] == f"{NAMESPACE}/{name}")
                totals.append(total)
                overheads.append(total - kubelet - ingest)
            print(f"migrations: {args.migrations}; "
                  f"annotation -> CheckpointComplete: median {statistics.median(totals):.3f} s; "
                  f"control-plane overhead (minus kubelet and ingest): median {statistics.median(overheads):.3f} s, "
                  f"max {max(overheads):.3f} s")

            for index in range(args.pods):
                cp.admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods",
                                 pod_body(NAMESPACE, f"idle-{index}", "node-a"))
            await asyncio.sleep(5)  # the agent sees them all and settles
            before = cpu_seconds(agent.proc.pid)
            await asyncio.sleep(args.idle_seconds)
            used = cpu_seconds(agent.proc.pid) - before
            print(f"idle: {args.pods + args.migrations} pods on the node; agent CPU {used:.3f} s over "
                  f"{args.idle_seconds} s = {100 * used / args.idle_seconds:.2f}% of one core")
        finally:
            agent.stop()
            for kubelet in kubelets.values():
                await kubelet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--migrations", type=int, default=20)
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
