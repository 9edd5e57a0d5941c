"""Which base images the destination pulls early (pure). The pulls themselves: tests/runtime/test_cri_containerd.py
(a real containerd's CRI image service) and tests/realstack/test_real_nodes.py (a migration between real nodes)."""

from watcher.restore.early import references

DIGEST = "sha256:" + "ab" * 32


def test_only_digest_references_are_pulled() -> None:
    pod = {"status": {"containerStatuses": [
        {"name": "app", "imageID": f"registry.example/shop/app@{DIGEST}"},
        {"name": "local", "imageID": DIGEST},  # known to the node by its ID only: pulled from nowhere
        {"name": "odd", "imageID": "registry.example/shop/odd@sha256:short"},
        {"name": "none"},
    ]}}
    assert references(pod) == {"app": f"registry.example/shop/app@{DIGEST}"}
    assert references({}) == {} and references({"status": {"containerStatuses": None}}) == {}
