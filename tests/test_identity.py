"""Archive identity from spec.dump: CRI-O and containerd, failing closed on anything doubtful."""

import json

import pytest

from lab.archives import Pod, archive_name, containerd_spec, crio_spec
from watcher.archive import names
from watcher.archive.identity import Identity, identify
from watcher.errors import IdentityError
from watcher.store.manifest import Runtime

POD = Pod()
NAME = names.parse(archive_name(POD))
EXPECTED = Identity(POD.uid, POD.namespace, POD.name, POD.container)


def spec(body) -> bytes:
    return json.dumps(body).encode()


def test_crio_identity():
    found = identify(spec(crio_spec(POD)), NAME, set())
    assert (found.identity, found.runtime) == (EXPECTED, Runtime.CRIO)


def test_containerd_identity():
    found = identify(spec(containerd_spec(POD)), NAME, {"status"})
    assert (found.identity, found.runtime) == (EXPECTED, Runtime.CONTAINERD)


def test_podman_archive_takes_identity_from_the_request():
    found = identify(spec({"annotations": {"io.container.manager": "libpod"}}), NAME, set(), hint=EXPECTED)
    assert (found.identity, found.runtime) == (EXPECTED, Runtime.PODMAN)


def _crio_labels(**changes) -> bytes:
    body = crio_spec(POD)
    labels = json.loads(body["annotations"]["io.kubernetes.cri-o.Labels"])
    for key, value in changes.items():
        labels[key.replace("_", ".")] = value
    body["annotations"]["io.kubernetes.cri-o.Labels"] = json.dumps(labels)
    return spec(body)


@pytest.mark.parametrize("data, reason", [
    (None, "no spec.dump"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (spec({"annotations": "x"}), "annotations are not an object"),
    (spec({"annotations": {}}), "no Kubernetes identity"),
    (spec({"annotations": {"io.kubernetes.cri-o.Labels": "{broken"}}),
     "io.kubernetes.cri-o.Labels in spec.dump is not valid JSON"),
    (spec({"annotations": {"io.kubernetes.cri.sandbox-uid": POD.uid}}), "partial"),
    (spec({"annotations": {**crio_spec(POD)["annotations"], **containerd_spec(POD)["annotations"]}}),
     "both CRI-O and containerd"),
    (_crio_labels(io_kubernetes_pod_uid="../../etc"), "unsafe identity"),
    (_crio_labels(io_kubernetes_pod_uid="a/b"), "unsafe identity"),
    (_crio_labels(io_kubernetes_container_name="x\0y"), "unsafe identity"),
    (_crio_labels(io_kubernetes_pod_namespace="ns\nother"), "unsafe identity"),
    (_crio_labels(io_kubernetes_pod_uid=42), "unsafe identity"),
    (_crio_labels(io_kubernetes_pod_name="another-pod"), "file name disagrees"),
    (_crio_labels(io_kubernetes_container_name="sidecar"), "file name disagrees"),
])
def test_doubtful_identity_is_refused_with_the_reason(data, reason):
    with pytest.raises(IdentityError, match=reason) as caught:
        identify(data, NAME, set())
    assert archive_name(POD) in str(caught.value)


def test_request_and_archive_must_agree():
    other = Identity("0000-other", POD.namespace, POD.name, POD.container)
    with pytest.raises(IdentityError, match="request was for"):
        identify(spec(crio_spec(POD)), NAME, set(), hint=other)
