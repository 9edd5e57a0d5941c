"""Cluster mode over a bucket (docs/s3.md): the agents of two nodes (real ``lpm agent`` processes with the lpm-agent
ServiceAccount's token, against the real apiserver, a kubelet stand-in per node) keep their checkpoints in a real S3
server (s3proxy) instead of a shared directory. A migration goes from node-a's kubelet into the bucket and out of
it into node-b's importer; a bucket that is away when a checkpoint is asked for fails the request, saying why, and
the next one, once it is back, is stored; a bucket away while node-b reads the checkpoint keeps the migration
Restoring, saying so, until it is back (or fails it after --restore-store-patience).
"""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from lab.s3server import S3Server
from tests.realstack.test_agent_cluster import (  # noqa: F401 (fixture)
    SLOW_IMPORT,
    Cluster,
    _phase,
    _report_running,
    cluster,
    eventually,
)
from tests.s3.conftest import Bucket, own_server  # noqa: F401 (fixture)
from tests.support import lpm


async def _bucket(server: S3Server, name: str) -> Bucket:
    made = Bucket(server, name)
    await asyncio.to_thread(made.create)  # Bucket's calls run a loop of their own: not on the test's
    return made


async def _keys(bucket: Bucket, suffix: str = "") -> list[str]:
    return [key for key in await asyncio.to_thread(bucket.keys) if key.endswith(suffix)]


@pytest.mark.asyncio
async def test_a_migration_goes_through_the_bucket(cluster: Cluster, own_server: S3Server,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPM_TEST_IMPORT_SECONDS", "0")
    bucket = await _bucket(own_server, "lpm-cluster")
    cluster.create_pod("cart-0", "node-a")
    cluster.create("podmigrations", "cart-move", "PodMigration",
                   {"podName": "cart-0", "targetNode": "node-b", "retainOriginalPod": True})
    cluster.announce("node-b")
    source = cluster.start_agent("node-a", "--store", bucket.url, "--delete-ingested")
    destination = cluster.start_agent("node-b", "--store", bucket.url,
                                      "--restore-work-dir", str(cluster.tmp / "work-b"),
                                      "--import-prefix", str(SLOW_IMPORT))

    def state() -> str:
        return (f"migration: {cluster.get('podmigrations', 'cart-move').get('status')}\n"
                f"node-a:\n{source.tail()}\nnode-b:\n{destination.tail()}")

    restored = await eventually(lambda: cluster.get("podmigrations", "cart-move")["status"].get("restoredPodName"),
                                what="the restored pod", state=state)
    _report_running(cluster, restored)
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", "cart-move")) in ("Succeeded", "Failed")
                            and m, what="the migration to finish", state=state)
    assert _phase(done) == "Succeeded", state()

    # Announced as shared, at the URI the bucket's layout gives it, and there: marker, manifest and dump.
    content = cluster.get("podcheckpointcontents", cluster.get("podcheckpoints", "cart-move")["status"]
                          ["boundContentName"], namespaced=False)
    [stored] = content["spec"]["containers"]
    assert stored["storageType"] == "shared" and stored["artifactURI"].startswith("shared://"), stored
    dump = "checkpoints/" + stored["artifactURI"].removeprefix("shared://")
    assert await _keys(bucket, "/dump.tar.zst") == [dump], await _keys(bucket)
    assert len(await _keys(bucket, ".checkpoint-complete")) == 1, await _keys(bucket)
    [listed] = [json.loads(row) for row in lpm("store", "ls", "--store", bucket.url, "--json", check=True)
                .stdout.splitlines()]
    assert listed["targetNode"] == "node-b" and listed["podName"] == "cart-0", listed
    # node-b read it from the bucket, every sum checked, and imported it.
    [created] = destination.logs("restored pod created")
    assert created["pod"] == f"{cluster.namespace}/{restored}", created

    # node-a's kubelet archive: the directory watch found it in the ledger (not read or uploaded again), read
    # the bucket's copy back whole and removed it (--delete-ingested): it holds the pod's memory.
    directory = cluster.nodes["node-a"].checkpoint_dir
    await eventually(lambda: not list(directory.glob("checkpoint-cart-0_*.tar")),
                     what="the kubelet's archive removed", state=state)
    [known] = source.logs("archive already in the store")
    assert known["artifactURI"] == stored["artifactURI"], known
    assert source.logs("archive ingested") == [], state()
    assert source.logs("kubelet archive removed after verified ingest"), state()
    assert [status for _, status in cluster.nodes["node-a"].kubelet.requests] == [200]
    # Nothing uploaded twice.
    assert await _keys(bucket, "/dump.tar.zst") == [dump], await _keys(bucket)
    for agent in (source, destination):
        assert agent.stop(signal.SIGTERM)[0] == 0, agent.tail()


@pytest.mark.asyncio
async def test_a_bucket_away_fails_the_checkpoint_before_any_dump_saying_why_and_the_next_one_is_stored(
        cluster: Cluster, own_server: S3Server) -> None:
    bucket = await _bucket(own_server, "lpm-cluster-away")
    cluster.create_pod("web-0", "node-a")
    agent = cluster.start_agent("node-a", "--store", bucket.url)
    await asyncio.to_thread(own_server.kill)
    cluster.create("containercheckpoints", "web-0-first", "ContainerCheckpoint",
                   {"podName": "web-0", "containerName": "app"})
    failed = await eventually(lambda: _phase(c := cluster.get("containercheckpoints", "web-0-first"))
                              in ("Succeeded", "Failed") and c, what="the first checkpoint to end",
                              state=agent.tail)
    message = failed["status"]["message"]
    assert _phase(failed) == "Failed", failed["status"]
    assert message.startswith("shared store unavailable (store s3://lpm-cluster-away/checkpoints: "), message
    assert message.endswith("no local store to hold the checkpoint in (an S3 store: docs/s3.md); "
                            "the pod was not checkpointed"), message
    assert [e["reason"] for e in cluster.events("web-0")] == ["CheckpointFailed"]
    kubelet = cluster.nodes["node-a"].kubelet
    assert kubelet.requests == []  # asked before any dump: no memory written to the node's disk for nothing

    await asyncio.to_thread(own_server.start)
    cluster.create("containercheckpoints", "web-0-second", "ContainerCheckpoint",
                   {"podName": "web-0", "containerName": "app"})
    done = await eventually(lambda: _phase(c := cluster.get("containercheckpoints", "web-0-second"))
                            in ("Succeeded", "Failed") and c, what="the second checkpoint to end", state=agent.tail)
    assert _phase(done) == "Succeeded", done["status"]
    content = cluster.get("containercheckpointcontents", done["status"]["boundContentName"], namespaced=False)
    uri = content["spec"]["artifactURI"]
    assert uri.startswith("shared://"), content["spec"]
    assert [status for _, status in kubelet.requests] == [200]
    # Its archive, once its claim ended: known from the ledger, neither read nor uploaded again.
    [known] = await asyncio.to_thread(agent.wait_logged, "archive already in the store", 1, 60)
    assert known["artifactURI"] == uri, known
    assert await _keys(bucket, "/dump.tar.zst") == ["checkpoints/" + uri.removeprefix("shared://")]
    assert await asyncio.to_thread(bucket.uploads) == []  # no upload left half-done
    assert lpm("store", "verify", "--store", bucket.url, check=True).returncode == 0
    assert agent.stop(signal.SIGTERM)[0] == 0, agent.tail()


@pytest.mark.asyncio
async def test_an_archive_taken_without_a_request_is_stored_in_the_bucket_and_announced(
        cluster: Cluster, own_server: S3Server) -> None:
    bucket = await _bucket(own_server, "lpm-cluster-manual")
    pod = cluster.create_pod("manual-0", "node-a")
    agent = cluster.start_agent("node-a", "--store", bucket.url)
    who = Pod(uid=pod["metadata"]["uid"], namespace=cluster.namespace, name="manual-0", container="app")
    make_archive(cluster.nodes["node-a"].checkpoint_dir, ArchiveSpec(pod=who, memory=1 << 20), archive_name(who))
    [request] = await eventually(lambda: [c for c in cluster.items("containercheckpoints")
                                          if _phase(c) == "Succeeded"], what="an announced ContainerCheckpoint",
                                 state=agent.tail)
    assert request["metadata"]["annotations"]["lpm.my.domain/origin"] == "kubelet-directory"
    content = cluster.get("containercheckpointcontents", request["status"]["boundContentName"], namespaced=False)
    uri = content["spec"]["artifactURI"]
    assert content["spec"]["storageType"] == "shared" and uri.startswith("shared://"), content["spec"]
    assert await _keys(bucket, "/dump.tar.zst") == ["checkpoints/" + uri.removeprefix("shared://")]
    assert cluster.nodes["node-a"].kubelet.requests == []
    assert agent.stop(signal.SIGTERM)[0] == 0, agent.tail()


async def _restore_meets_the_bucket_away(cluster: Cluster, server: S3Server, pod: str, *extra: str) -> tuple[
        Bucket, AgentProcess, AgentProcess, str]:
    """A migration of ``pod`` whose checkpoint is in the bucket, the bucket away once node-b's agent comes to read
    it: node-b's agent starts while the bucket answers (it checks it then), is stopped (SIGSTOP) before the
    migration is asked for, and goes on (SIGCONT) once the checkpoint is complete and the server killed."""
    bucket = await _bucket(server, f"lpm-{pod}")
    cluster.create_pod(pod, "node-a")
    source = cluster.start_agent("node-a", "--store", bucket.url)
    destination = cluster.start_agent("node-b", "--store", bucket.url, "--restore-work-dir",
                                      str(cluster.tmp / f"work-{pod}"), "--import-prefix", str(SLOW_IMPORT), *extra)
    destination.proc.send_signal(signal.SIGSTOP)
    try:
        name = f"{pod}-move"
        cluster.create("podmigrations", name, "PodMigration",
                       {"podName": pod, "targetNode": "node-b", "retainOriginalPod": True})
        await eventually(lambda: _phase(cluster.get("podmigrations", name)) == "CheckpointComplete",
                         what="CheckpointComplete", state=lambda: f"{cluster.get('podmigrations', name)}\n"
                                                                 f"{source.tail()}")
        await asyncio.to_thread(server.kill)
    finally:
        destination.proc.send_signal(signal.SIGCONT)
    return bucket, source, destination, name


@pytest.mark.asyncio
async def test_a_bucket_away_during_the_restore_keeps_the_migration_restoring_and_it_goes_on_once_back(
        cluster: Cluster, own_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPM_TEST_IMPORT_SECONDS", "0")
    _, source, destination, name = await _restore_meets_the_bucket_away(cluster, own_server, "away-0")

    def state() -> str:
        return f"migration: {cluster.get('podmigrations', name).get('status')}\nnode-b:\n{destination.tail()}"

    # The migration waits, Restoring, saying why; the source pod runs on.
    waiting = await eventually(lambda: (m := cluster.get("podmigrations", name))["status"]["message"].startswith(
        "waiting for the store on node-b") and m, what="the restore to wait for the store", state=state)
    message = waiting["status"]["message"]
    assert _phase(waiting) == "Restoring", state()
    assert "unreachable or went away" in message and "trying again every 5 s for up to 600 s" in message, message
    assert cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/away-0")["metadata"].get(
        "deletionTimestamp") is None
    [first, *_] = destination.logs("store unavailable during the restore; trying again")
    assert first["migration"] == f"{cluster.namespace}/{name}", first

    await asyncio.to_thread(own_server.start)
    restored = await eventually(lambda: cluster.get("podmigrations", name)["status"].get("restoredPodName"),
                                what="the restored pod once the bucket is back", state=state)
    _report_running(cluster, restored)
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", name)) in ("Succeeded", "Failed") and m,
                            what="the migration to finish", state=state)
    assert _phase(done) == "Succeeded", state()
    assert destination.logs("restore failed") == [], state()
    # Tried again at its pace, not on every status write of its own: a few tries while the bucket was away.
    tries = destination.logs("store unavailable during the restore; trying again")
    assert len(tries) <= 1 + (tries[-1]["waitedSeconds"] / 5) + 1, tries
    for agent in (source, destination):
        assert agent.stop(signal.SIGTERM)[0] == 0, agent.tail()


@pytest.mark.asyncio
async def test_a_bucket_away_past_the_patience_fails_the_migration_saying_so_and_the_source_pod_runs_on(
        cluster: Cluster, own_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LPM_TEST_IMPORT_SECONDS", "0")
    _, source, destination, name = await _restore_meets_the_bucket_away(
        cluster, own_server, "gone-0", "--restore-store-patience", "3")
    done = await eventually(lambda: _phase(m := cluster.get("podmigrations", name)) in ("Succeeded", "Failed") and m,
                            what="the migration to fail", state=destination.tail)
    message = done["status"]["message"]
    assert _phase(done) == "Failed", done["status"]
    assert message.startswith("restore failed: the store failed on its side for "), message
    assert "s (--restore-store-patience 3); last: " in message and "unreachable or went away" in message, message
    # Tried again once at least before giving up, never restored, and the source pod is there, running on.
    assert destination.logs("store unavailable during the restore; trying again"), destination.tail()
    assert "restoredPodName" not in done["status"]
    pod = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/gone-0")
    assert pod["metadata"].get("deletionTimestamp") is None and pod["spec"]["nodeName"] == "node-a"
    assert "RestoreFailed" in [e["reason"] for e in cluster.events("gone-0")]
    for agent in (source, destination):
        assert agent.stop(signal.SIGTERM)[0] == 0, agent.tail()
