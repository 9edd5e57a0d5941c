"""``lpm agent --standalone --restore --store s3://...`` as a real process: checkpoints addressed to its node are
read from a real S3 server (s3proxy) and imported into a real containerd, checked on the way; one whose dump was
changed in the bucket is refused, and leaves no image; one whose server went away mid-import is imported once
the server is back, not refused."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from lab.agent import AgentProcess
from lab.archives import ArchiveSpec, Pod, make_archive
from lab.s3server import S3Server
from tests.restore.containerd import run_containerd
from tests.restore.support import PODMAN_CONFIG
from tests.s3.conftest import Bucket
from tests.support import lpm


def _ingest(bucket: Bucket, directory: Path, name: str, memory: int = 2 << 20) -> str:
    """A podman-made archive into the bucket for node-b, by ``lpm ingest`` on node-a; its artifact URI."""
    pod = Pod(uid=f"uid-{name}", name=name, container="app")
    archive = make_archive(directory, ArchiveSpec(pod=pod, memory=memory, config=PODMAN_CONFIG))
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


def _held_ctr(directory: Path, ctr: Path) -> tuple[Path, Path, Path]:
    """A ctr whose first ``images import`` takes the archive's first MiB (so the dump's GET is streaming) and
    then holds, reading no more, until the gate file exists (the started file says it holds); it then imports
    all of it. Anything else, and every later import, is the real ctr's."""
    wrapper, started, gate = directory / "ctr", directory / "import-started", directory / "import-gate"
    first = directory / "import-first-mib"
    wrapper.write_text(f"""#!/bin/sh
case " $* " in *" images import "*)
    if [ ! -e {gate} ]; then
        head -c 1048576 > {first}
        touch {started}
        while [ ! -e {gate} ]; do sleep 0.05; done
        {{ cat {first}; cat; }} | {ctr} "$@"
        exit $?
    fi;;
esac
exec {ctr} "$@"
""")
    wrapper.chmod(0o755)
    return wrapper, started, gate


def test_a_server_gone_mid_import_is_tried_again_once_it_is_back_not_refused(
        own_server: S3Server, archive_dir: Path, tmp_path: Path) -> None:
    bucket = Bucket(own_server, "lpm-restore-outage")
    bucket.create()
    # About 32 MiB stored: far more than the pipes and socket buffers between the server and a held ctr, so
    # the GET that began before ctr held is still reading when the server dies.
    uri = _ingest(bucket, tmp_path, "cart-0", memory=96 << 20)
    checkpoint = "/".join(uri.removeprefix("shared://").split("/")[:2])
    work = tmp_path / "restore-work"
    with run_containerd() as containerd:
        ctr, started, gate = _held_ctr(tmp_path, containerd.ctr_binary)
        agent = AgentProcess("--node", "node-b", "--checkpoint-dir", str(archive_dir), "--store", bucket.url,
                             "--restore", "--restore-work-dir", str(work), "--marker-poll", "0.5",
                             "--importer", "containerd", "--containerd-address", containerd.address,
                             "--ctr", str(ctr))
        try:
            deadline = time.monotonic() + 60
            while not started.exists():
                assert time.monotonic() < deadline, f"no import began within 60 s:\n{agent.tail()}"
                time.sleep(0.05)
            own_server.kill()
            gate.touch()
            [away] = agent.wait_logged("store unavailable during the import; trying again next round", timeout=90)
            assert not (work / "imported").exists() or list((work / "imported").iterdir()) == [], agent.tail()
            own_server.start()
            [ready] = agent.wait_logged("checkpoint images ready to restore", timeout=120)
        finally:
            code, _ = agent.stop(signal.SIGTERM)
        images = containerd.ctr("images", "ls", "-q").stdout.split()
    assert code == 0, agent.tail()
    # The dump's own read failed mid-body, the GET having begun before the server died.
    assert away["checkpoint"] == checkpoint and "unreachable or went away" in away["reason"], away
    assert "/app/dump.tar.zst" in away["reason"], away
    assert agent.logs("checkpoint refused; it will not be restored here") == [], agent.tail()
    assert ready["checkpoint"] == checkpoint and ready["images"]["app"] in images, (ready, images)
    [record] = [json.loads(p.read_text()) for p in (work / "imported").iterdir()]
    assert record["outcome"] == "imported", record
