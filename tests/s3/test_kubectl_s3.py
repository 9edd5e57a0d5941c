"""``kubectl lpm`` over a bucket (``--store s3://BUCKET/PREFIX``): the real apiserver's content objects, a
real checkpoint ingested into s3proxy by ``lpm ingest``. Pins are the key the collector reads there, and
``get`` writes the archive verified against what the API recorded, as over a directory."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from lab.archives import ArchiveSpec, Pod, make_archive
from lab.controlplane import ControlPlane
from tests.realstack import samples
from tests.realstack.test_kubectl import plugin
from tests.s3.conftest import Bucket
from tests.support import lpm
from watcher.cluster.objects import lpm_path

pytestmark = pytest.mark.realstack


def _content(control_plane: ControlPlane, namespace: str, artifact: dict[str, object]) -> str:
    body = samples.container_checkpoint_content(f"ccc-{uuid.uuid4().hex[:6]}", namespace)
    body["spec"].update(artifact, podNamespace=namespace)
    control_plane.admin.request("POST", lpm_path("ContainerCheckpointContent"), body)
    return str(body["metadata"]["name"])


def _pinned(control_plane: ControlPlane, namespace: str, bucket: Bucket) -> bool | None:
    listed = plugin(control_plane.admin_kubeconfig, "ls", "-n", namespace, "--store", bucket.url, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)["items"]
    return item["pinned"]


def test_kubectl_lpm_pins_and_gets_a_checkpoint_in_a_bucket(control_plane: ControlPlane, bucket: Bucket,
                                                            archive_dir: Path, tmp_path: Path) -> None:
    namespace = f"lpm-kubectl-s3-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(namespace)
    archive = make_archive(archive_dir, ArchiveSpec(pod=Pod(container="app"), memory=1 << 20))
    uri = lpm("ingest", str(archive), "--store", bucket.url, "--node", "node-a", check=True).stdout.strip()
    directory = uri.removeprefix("shared://").rsplit("/", 2)[0]
    manifest = json.loads(bucket.get(f"checkpoints/{directory}/app/manifest.json"))
    name = _content(control_plane, namespace, {"artifactURI": uri, "checksumSHA256": manifest["checksumSHA256"],
                                               "compressedSize": manifest["compressedSize"]})
    kubeconfig = control_plane.admin_kubeconfig
    keep = f"checkpoints/{directory}/.keep"

    # pin: the key the collector reads in the bucket; ls says so; a collector keeps the checkpoint.
    assert _pinned(control_plane, namespace, bucket) is False
    pinned = plugin(kubeconfig, "pin", name, "--store", bucket.url)
    assert (pinned.returncode, pinned.stdout) == (0, f"{name} pinned\n"), pinned.stderr
    assert keep in bucket.keys(), bucket.keys()
    assert plugin(kubeconfig, "pin", name, "--store", bucket.url).stdout == f"{name} was pinned already\n"
    assert _pinned(control_plane, namespace, bucket) is True
    time.sleep(1.1)  # older than the collector's retention below
    swept = [json.loads(line) for line in lpm("gc", "--store", bucket.url, "--standalone", "--once", "--retention",
                                              "1s", check=True).stdout.splitlines()]
    [summary] = [line for line in swept if line["event"] == "summary"]
    assert (summary["deleted"], summary["keptPinned"]) == (0, 1), swept
    unpinned = plugin(kubeconfig, "unpin", name, "--store", bucket.url)
    assert (unpinned.returncode, unpinned.stdout) == (0, f"{name} unpinned\n"), unpinned.stderr
    assert keep not in bucket.keys()
    assert plugin(kubeconfig, "unpin", name, "--store", bucket.url).stdout == f"{name} was not pinned\n"

    # get: the original archive, verified against the API's SHA-256 and the bucket's.
    out = tmp_path / "app.tar"
    done = plugin(kubeconfig, "get", name, "-o", str(out), "--store", bucket.url)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == archive.read_bytes()
    assert done.stdout == f"{out}: container app of {name}, {out.stat().st_size} bytes, SHA-256 verified\n"
    forged = _content(control_plane, namespace, {"artifactURI": uri, "checksumSHA256": "0" * 64})
    refused = plugin(kubeconfig, "get", forged, "-o", str(tmp_path / "x.tar"), "--store", bucket.url)
    assert refused.returncode == 1 and "the API recorded " + "0" * 64 in refused.stderr, refused.stderr
    assert not (tmp_path / "x.tar").exists()

    # A content naming a checkpoint the bucket does not hold: no pin key is made for it.
    absent = _content(control_plane, namespace, {})  # the sample's URI: nothing of it in this bucket
    missing = plugin(kubeconfig, "pin", absent, "--store", bucket.url)
    assert missing.returncode == 1 and "no complete checkpoint" in missing.stderr, missing.stderr
    assert not [key for key in bucket.keys() if key.endswith("/.keep")], bucket.keys()
    # inspect reads a mounted store: over a bucket it says how to get there instead.
    inspected = plugin(kubeconfig, "inspect", name, "--store", bucket.url)
    assert inspected.returncode == 2 and f"kubectl lpm get {name} -o FILE --store {bucket.url}" in inspected.stderr
