"""``lpm agent --standalone --store s3://...`` as a real process against a real S3 server: an archive written
in place is ingested, verified back and removed; one the ingest ledger knows is not read again after a restart;
a server gone away is retried until it is back."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, archive_bytes, archive_name, write_in_place
from lab.s3server import S3Server
from tests.s3.conftest import Bucket
from tests.support import lpm


def _agent(directory: Path, url: str, *extra: str) -> AgentProcess:
    return AgentProcess("--node", "node-a", "--checkpoint-dir", str(directory), "--store", url, "--debounce", "0.3",
                        *extra)


def test_the_agent_ingests_into_the_bucket_and_removes_the_verified_archive(
        bucket: Bucket, archive_dir: Path, tmp_path: Path) -> None:
    agent = _agent(archive_dir, bucket.url, "--delete-ingested")
    try:
        agent.wait_logged("agent starting")
        archive = archive_dir / archive_name(Pod())
        data = archive_bytes(ArchiveSpec(memory=4 << 20))
        write_in_place(archive, data, pieces=4, pause=0.1)
        [ingested] = agent.wait_logged("archive ingested")
        agent.wait_logged("kubelet archive removed after verified ingest")
        assert not archive.exists()
        uri = ingested["artifactURI"]
        assert ingested["store"] == bucket.url and uri.startswith(f"shared://{Pod().uid}/")
        assert not [k for k in bucket.keys() if "/.ingest/" in k] and bucket.uploads() == [], bucket.keys()
        out = tmp_path / "back.tar"
        lpm("store", "get", uri, "--store", bucket.url, "-o", str(out), check=True)
        assert out.read_bytes() == data
    finally:
        code, seconds = agent.stop(signal.SIGTERM)
    assert code == 0 and seconds < 5, (code, seconds, agent.tail())


def test_an_ingest_the_server_failed_is_retried_once_it_is_back(own_server: S3Server, archive_dir: Path) -> None:
    bucket = Bucket(own_server, "lpm-agent")
    bucket.create()
    agent = _agent(archive_dir, bucket.url)
    try:
        agent.wait_logged("agent starting")
        own_server.kill()
        archive = archive_dir / archive_name(Pod())
        write_in_place(archive, archive_bytes(ArchiveSpec(memory=1 << 20)), pieces=2, pause=0.05)
        [failed] = agent.wait_logged("ingest failed", timeout=90)
        assert "unreachable or went away" in failed["reason"], failed
        own_server.start()
        agent.wait_logged("archive ingested", timeout=120)
        assert archive.exists()  # no --delete-ingested: the kubelet's copy stays
        assert len([k for k in bucket.keys() if k.endswith(".checkpoint-complete")]) == 1, bucket.keys()
    finally:
        code, _ = agent.stop(signal.SIGTERM)
    assert code == 0, agent.tail()


def test_after_a_restart_an_archive_the_ledger_knows_is_not_read_or_uploaded_again(
        bucket: Bucket, archive_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "local-store"  # the node-local store, where the agent keeps its ingest ledger
    archive = archive_dir / archive_name(Pod())
    write_in_place(archive, archive_bytes(ArchiveSpec(memory=2 << 20)), pieces=2, pause=0.05)
    first = _agent(archive_dir, bucket.url, "--local-store", str(local))
    try:
        [ingested] = first.wait_logged("archive ingested")
    finally:
        assert first.stop(signal.SIGTERM)[0] == 0, first.tail()
    # The same name, size and mtime, but bytes no ingest would take: an agent that read the archive again
    # would refuse it (and a real re-read is a whole upload); one that trusts its ledger does not look.
    stat = archive.stat()
    archive.write_bytes(bytes(stat.st_size))
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = _agent(archive_dir, bucket.url, "--local-store", str(local))
    try:
        [known] = second.wait_logged("archive already in the store")
    finally:
        assert second.stop(signal.SIGTERM)[0] == 0, second.tail()
    assert known["artifactURI"] == ingested["artifactURI"], known
    assert second.logs("archive ingested") == [] and second.logs("archive refused") == [], second.tail()
    assert len([k for k in bucket.keys() if k.endswith("/.checkpoint-complete")]) == 1, bucket.keys()
