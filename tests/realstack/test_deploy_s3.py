"""deploy/overlays/s3 as users install it, on two real nodes (kubelet + containerd + runc + CRIU): the
DaemonSet's agents migrate a pod through a real S3 server, and take a checkpoint the kubelet's API made into
it, removing the kubelet's archive once the bucket's copy reads back; no volume but the nodes' own.

The server is s3proxy (lab/s3server.py) serving HTTPS on the lab bridge's gateway, its certificate from a
throw-away CA that reaches the pods only through the Secret `lpm-s3`, as the overlay documents: the agent's
readiness (the bucket answers a HEAD) already proves the pod verified TLS and signed with the credentials.
The overlay is rendered by the real kustomize; the test sets only what an operator sets: s3.env's values,
the Secret, the image's name, and where the nodes' ctr is (as lab/deploy does: /opt/lpm/containerd/ctr).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.cluster import RealCluster
from lab.deployed import PodAgent, deploy, pods_report
from lab.kustomize import locate_kustomize, render
from lab.live import NAMESPACE, SOURCE, TARGET, migrate, run_pod
from lab.lpmimage import REFERENCE
from lab.manifests import AGENT_NAMESPACE
from lab.network import GATEWAY
from lab.s3server import CREDENTIAL, IDENTITY, REGION, S3Server
from tests.deploy.kustomize import OVERLAYS
from tests.s3.conftest import Bucket
from tests.support import lpm

STORE = "s3://lpm-lab/checkpoints"
NODE_CTR = "/opt/lpm/containerd/ctr"
_INGEST_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    with RealCluster((SOURCE, TARGET)) as real:
        real.control_plane.create_namespace(NAMESPACE)
        yield real


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3proxy"), host=GATEWAY)
    server.start()
    Bucket(server, "lpm-lab").create()
    yield server
    server.stop()


def _secret(server: S3Server) -> dict[str, Any]:
    """The Secret `lpm-s3` as deploy/README.md has the operator make it: the AWS files, and the private CA."""
    files = {
        "credentials": f"[default]\naws_access_key_id = {IDENTITY}\naws_secret_access_key = {CREDENTIAL}\n",
        "config": "[default]\ns3 =\n    addressing_style = path\n",
        "ca.pem": server.ca.cert_file.read_text(),
    }
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lpm-s3", "namespace": AGENT_NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in files.items()}}


def _as_the_operator_sets_it(objects: list[dict[str, Any]], server: S3Server) -> list[dict[str, Any]]:
    for obj in objects:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("lpm-s3"):
            obj["data"].update({"LPM_STORE": STORE, "AWS_ENDPOINT_URL_S3": server.endpoint, "AWS_REGION": REGION,
                                "AWS_CA_BUNDLE": "/etc/lpm/s3/ca.pem"})
        spec = obj.get("spec", {})
        pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            if container["image"].startswith("lpm:"):
                container["image"] = REFERENCE  # imported into the node's containerd, never pulled
        for volume in pod.get("volumes", []):
            if volume["name"] == "node-ctr":
                volume["hostPath"]["path"] = NODE_CTR
    return [*objects, _secret(server)]


@pytest.fixture(scope="module")
def agents(cluster: RealCluster, s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, PodAgent]:
    objects = _as_the_operator_sets_it(render(locate_kustomize(), OVERLAYS["s3"]), s3)
    return deploy(cluster, tmp_path_factory.mktemp("lpm-image"), objects)


def test_an_agent_takes_a_checkpoint_the_kubelets_api_made_into_the_bucket(
        cluster: RealCluster, s3: S3Server, agents: dict[str, PodAgent], monkeypatch: pytest.MonkeyPatch) -> None:
    cp = cluster.control_plane
    asyncio.run(run_pod(cluster, "counter", ("count",), SOURCE))
    # The kubelet's own checkpoint API, as anyone allowed nodes/checkpoint would call it.
    answer = cp.admin.request("POST", f"/api/v1/nodes/{SOURCE}/proxy/checkpoint/{NAMESPACE}/counter/count")
    archive = Path(answer["items"][0]).name
    kubelet_dir = cluster.nodes[SOURCE].checkpoint_dir
    bucket = Bucket(s3, "lpm-lab")

    def explain() -> str:
        return (f"bucket: {bucket.keys()}\nkubelet directory: {sorted(p.name for p in kubelet_dir.iterdir())}\n"
                f"agent:\n{agents[SOURCE].tail(20)}\n{pods_report(cluster)}")

    # Stored and committed in the bucket, then the kubelet's archive removed (only after the read-back).
    deadline = time.monotonic() + _INGEST_TIMEOUT
    while not ([k for k in bucket.keys() if k.endswith("/.checkpoint-complete")]
               and not (kubelet_dir / archive).exists()):
        assert agents[SOURCE].died() is None, explain()
        assert time.monotonic() < deadline, f"the checkpoint {archive} was not taken into the bucket\n{explain()}"
        time.sleep(0.5)
    [ingested] = agents[SOURCE].logs("archive ingested")
    assert (ingested["archive"], ingested["store"], ingested["pod"]) == (archive, STORE, f"{NAMESPACE}/counter")

    # What an operator then sees from outside the cluster: the checkpoint, whole.
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    listing = lpm("store", "ls", "--store", STORE, "--json", check=True).stdout
    listed = [json.loads(line) for line in listing.splitlines()]
    assert [(e["podName"], e["containers"]) for e in listed] == [("counter", ["count"])], listed
    verified = lpm("store", "verify", "--store", STORE)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.asyncio
async def test_the_daemonsets_agents_migrate_a_counter_through_the_bucket(
        cluster: RealCluster, s3: S3Server, agents: dict[str, PodAgent]) -> None:
    await run_pod(cluster, "mover", ("count",), SOURCE)
    outcome = await migrate(cluster, agents, "mover", ("count",), print)
    cp = cluster.control_plane
    restored = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{outcome.restored_pod}")
    assert restored["spec"]["nodeName"] == TARGET
    # Through the bucket: the checkpoint's content names it as shared, and its marker is there.
    [migration] = [m for m in cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations")
                   ["items"] if m["spec"]["podName"] == "mover"]
    checkpoint = cp.admin.request("GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podcheckpoints/"
                                         f"{migration['status']['podCheckpointRef']['name']}")
    content = cp.admin.request("GET", "/apis/lpm.my.domain/v1/podcheckpointcontents/"
                                      f"{checkpoint['status']['boundContentName']}")
    [stored] = content["spec"]["containers"]
    assert stored["storageType"] == "shared", stored
    keys = await asyncio.to_thread(Bucket(s3, "lpm-lab").keys)
    assert "checkpoints/" + stored["artifactURI"].removeprefix("shared://") in keys, keys
