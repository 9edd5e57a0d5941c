"""``kubectl lpm inspect``: the checkpoint a content object names, read from the shared store, gives what
``lpm inspect`` gives for the archive it was ingested from. Against the real kube-apiserver (the session's
control plane, no nodes)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from lab.controlplane import ControlPlane
from tests.inspect.fixtures import Archives
from tests.support import lpm
from watcher.cluster.objects import lpm_path

PLUGIN = str(Path(sys.executable).parent / "kubectl-lpm")


def subprocess_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_kubectl_lpm_inspect_reads_the_stored_checkpoint(control_plane: ControlPlane, archives: Archives,
                                                          tmp_path: Path) -> None:
    namespace = f"lpm-inspect-{uuid.uuid4().hex[:6]}"
    control_plane.create_namespace(namespace)
    store = tmp_path / "store"
    uri = lpm("ingest", str(archives.tcp), "--store", str(store), "--node", "node-a", check=True).stdout.strip()
    name = f"ccc-{uuid.uuid4().hex[:6]}"
    control_plane.admin.request("POST", lpm_path("ContainerCheckpointContent"), {
        "apiVersion": "lpm.my.domain/v1", "kind": "ContainerCheckpointContent", "metadata": {"name": name},
        "spec": {"containerCheckpointRef": {"name": "talker", "namespace": namespace}, "podNamespace": namespace,
                 "podName": "nettalk-5f7d9", "containerName": "talker", "sourceNode": "node-a", "artifactURI": uri,
                 "storageType": "shared", "checksumSHA256": "0" * 64, "compressedSize": 4096}})
    kubeconfig = str(control_plane.admin_kubeconfig)

    result = subprocess_run([PLUGIN, "--kubeconfig", kubeconfig, "inspect", name, "--store", str(store), "-o", "json"])
    assert result.returncode == 0, result.stderr
    (stored,) = json.loads(result.stdout)
    (archived,) = json.loads(lpm("inspect", str(archives.tcp), "-o", "json", check=True).stdout)
    assert stored["source"] == uri
    assert {**stored, "source": ""} == {**archived, "source": ""}

    text = subprocess_run([PLUGIN, "--kubeconfig", kubeconfig, "inspect", name, "--store", str(store)])
    assert text.returncode == 0 and "will not survive a restore" in text.stdout, (text.stdout, text.stderr)
    no_store = subprocess_run([PLUGIN, "--kubeconfig", kubeconfig, "inspect", name])
    assert no_store.returncode == 2 and "--store" in no_store.stderr, no_store.stderr
