"""``lpm agent --standalone --restore --store s3://...`` as a real process: checkpoints addressed to its node are
read from a real S3 server (s3proxy) and imported into a real containerd, checked on the way; one whose dump was
changed in the bucket is refused, and leaves no image."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, make_archive
from tests.restore.containerd import run_containerd
from tests.restore.support import PODMAN_CONFIG
from tests.s3.conftest import Bucket
from tests.support import lpm


def _ingest(bucket: Bucket, directory: Path, name: str) -> str:
    """A podman-made archive into the bucket for node-b, by ``lpm ingest`` on node-a; its artifact URI."""
    pod = Pod(uid=f"uid-{name}", name=name, container="app")
    archive = make_archive(directory, ArchiveSpec(pod=pod, memory=2 << 20, config=PODMAN_CONFIG))
    result = lpm("ingest", str(archive), "--store", bucket.url, "--node", "node-a", "--target-node", "node-b")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _flip_a_byte(bucket: Bucket, uri: str) -> None:
    key = "checkpoints/" + uri.removeprefix("shared://")
    data = bytearray(bucket.get(key))
    data[len(data) // 2] ^= 0xFF
    bucket.call("put_object", Key=key, Body=bytes(data))


def test_the_restorer_imports_from_the_bucket_and_refuses_a_changed_dump(
        bucket: Bucket, archive_dir: Path, tmp_path: Path) -> None:
    good = _ingest(bucket, tmp_path, "cart-0")
    changed = _ingest(bucket, tmp_path, "cart-1")
    _flip_a_byte(bucket, changed)
    work = tmp_path / "restore-work"
    with run_containerd() as containerd:
        agent = AgentProcess("--node", "node-b", "--checkpoint-dir", str(archive_dir), "--store", bucket.url,
                             "--restore", "--restore-work-dir", str(work), "--marker-poll", "0.5",
                             "--importer", "containerd", "--containerd-address", containerd.address,
                             "--ctr", str(containerd.ctr_binary))
        try:
            [ready] = agent.wait_logged("checkpoint images ready to restore", timeout=60)
            [refused] = agent.wait_logged("checkpoint refused; it will not be restored here", timeout=60)
        finally:
            code, _ = agent.stop(signal.SIGTERM)
        images = containerd.ctr("images", "ls", "-q").stdout.split()
    assert code == 0, agent.tail()
    good_uid, good_cid = good.removeprefix("shared://").split("/")[:2]
    assert ready["checkpoint"] == f"{good_uid}/{good_cid}", ready
    assert ready["images"]["app"] in images, (ready, images)
    assert refused["checkpoint"] == "/".join(changed.removeprefix("shared://").split("/")[:2]), refused
    # Where the flipped byte lands decides which check finds it first: the zstd checksum, or the stored SHA-256.
    assert refused["reason"].startswith(f"artifact {changed}: stored dump "), refused
    assert "not valid zstd" in refused["reason"] or "has sha256" in refused["reason"], refused
    assert [name for name in images if not name.startswith("sha256:")] == [ready["images"]["app"]], images
    records = {p.name: json.loads(p.read_text()) for p in (work / "imported").iterdir()}
    assert records[f"{good_uid}_{good_cid}.json"]["outcome"] == "imported", records
    assert [r["outcome"] for r in records.values()].count("refused") == 1, records
