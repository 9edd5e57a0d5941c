"""``lpm agent --standalone --store s3://...`` as a real process against a real S3 server: an archive written
in place is ingested, verified back and removed; a server gone away is retried until it is back."""

from __future__ import annotations

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
