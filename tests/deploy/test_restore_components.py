"""deploy/components/restore-*: how each runtime's agents hand checkpoint images over, and what that costs.

Each overlay is parsed by lpm's real command line with the container's environment, so the importer it
builds is the one the pod would run; what each grants is held to exactly the set its comment justifies.
tests/image/test_image.py runs the image with those same grants against the real thing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lab.kustomize import render
from tests.deploy.kustomize import OVERLAYS, component_agent, find
from watcher.cli import build_parser, make_importer, runtime_endpoint
from watcher.restore.importer import ContainerdImporter, ContainersStorageImporter, RegistryImporter

BASE_HOST_PATHS = {"/var/lib/kubelet/checkpoints": "Directory", "/var/lib/lpm/local-store": "DirectoryOrCreate"}


@pytest.fixture(scope="module")
def rendered(kustomize: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: render(kustomize, OVERLAYS[name]) for name in ("base", "cri-o", "containerd", "registry")}


def _agent(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = find(objects, "DaemonSet", "lpm-agent")["spec"]["template"]["spec"]
    [agent] = [c for c in pod["containers"] if c["name"] == "agent"]
    return pod, agent


def _parsed(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    _, agent = _agent(objects)
    for key in [k for k in os.environ if k.startswith("LPM_")]:
        monkeypatch.delenv(key)
    for item in agent["env"]:
        value = item.get("value")
        if value is None and "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            value = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
        monkeypatch.setenv(item["name"], value if value is not None else "node-a")  # the downward API's part
    return build_parser().parse_args(agent["args"])


def _host_paths(pod: dict[str, Any]) -> dict[str, str]:
    return {v["hostPath"]["path"]: v["hostPath"]["type"] for v in pod["volumes"] if "hostPath" in v}


def _mounts(agent: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}


@pytest.mark.parametrize("overlay", ["base", "cri-o", "containerd", "registry"])
def test_restores_have_a_writable_scratch_directory(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pod, agent = _agent(rendered[overlay])
    args = _parsed(rendered[overlay], monkeypatch)
    assert agent["securityContext"]["readOnlyRootFilesystem"] is True
    volume = _mounts(agent)[str(args.restore_work_dir)]
    assert {v["name"]: v for v in pod["volumes"]}[volume] == {"name": volume, "emptyDir": {}}


def test_cri_o_writes_the_nodes_containers_storage_with_the_capabilities_skopeo_needs(
        rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    pod, agent = _agent(rendered["cri-o"])
    args = _parsed(rendered["cri-o"], monkeypatch)
    assert isinstance(make_importer(args), ContainersStorageImporter)
    assert _host_paths(pod) == {**BASE_HOST_PATHS, "/var/lib/containers/storage": "Directory",
                                "/run/containers/storage": "Directory", "/run/crio/crio.sock": "Socket"}
    assert _mounts(agent)["/var/lib/containers/storage"] and _mounts(agent)["/run/containers/storage"]
    # CRI-O's socket, where the agent asks whether this node restores.
    endpoint = runtime_endpoint(args.runtime_endpoint, args.importer, args.containerd_address)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[_mounts(agent)[endpoint.removeprefix("unix://")]]["hostPath"]["path"] == "/run/crio/crio.sock"
    assert agent["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "MKNOD", "SETFCAP",
                                                  "SYS_ADMIN", "SYS_CHROOT"]}}


def test_containerd_needs_its_socket_and_ctr_and_no_capability(rendered: dict[str, list[dict[str, Any]]],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pod, agent = _agent(rendered["containerd"])
    importer = make_importer(_parsed(rendered["containerd"], monkeypatch))
    assert isinstance(importer, ContainerdImporter)
    assert importer.namespace == "k8s.io"  # the CRI plugin's: where the kubelet's images are
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[_mounts(agent)[importer.address]]["hostPath"] == {"path": "/run/containerd/containerd.sock",
                                                                     "type": "Socket"}
    # The same socket is where the agent asks whether this node restores.
    args = _parsed(rendered["containerd"], monkeypatch)
    assert runtime_endpoint(args.runtime_endpoint, args.importer, args.containerd_address) == \
        f"unix://{importer.address}"
    assert volumes[_mounts(agent)[importer.ctr]]["hostPath"]["type"] == "File"
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_registry_needs_nothing_from_the_node(rendered: dict[str, list[dict[str, Any]]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pod, agent = _agent(rendered["registry"])
    importer = make_importer(_parsed(rendered["registry"], monkeypatch))
    assert isinstance(importer, RegistryImporter)
    assert importer.registry == "192.0.2.10:5000/lpm"  # registry.env, through the generated ConfigMap
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[_mounts(agent)[str(importer.cert_dir)]]["configMap"]["optional"] is True
    assert volumes[_mounts(agent)[str(importer.auth_file.parent)]]["secret"] == {
        "secretName": "lpm-registry-auth", "defaultMode": 0o400}
    assert _host_paths(pod) == BASE_HOST_PATHS
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_the_base_alone_grants_no_way_into_the_runtime(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod, agent = _agent(rendered["base"])
    assert _host_paths(pod) == BASE_HOST_PATHS
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "LPM_IMPORTER" not in {e["name"] for e in agent["env"]}


@pytest.mark.parametrize("component", ["restore-containers-storage", "restore-containerd", "restore-registry"])
def test_each_component_is_what_its_overlay_renders(rendered: dict[str, list[dict[str, Any]]],
                                                    component: str) -> None:
    overlay = {"restore-containers-storage": "cri-o", "restore-containerd": "containerd",
               "restore-registry": "registry"}[component]
    _, agent = _agent(rendered[overlay])
    patch = component_agent(component)
    assert agent["securityContext"]["capabilities"] == patch.get("securityContext", {}).get(
        "capabilities", {"drop": ["ALL"]})
    assert {e["name"] for e in patch["env"]} <= {e["name"] for e in agent["env"]}
