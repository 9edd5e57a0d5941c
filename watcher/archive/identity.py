"""Which pod and container a checkpoint archive belongs to, from its ``spec.dump``.

``spec.dump`` is the container's OCI runtime spec; the runtimes record the Kubernetes
identity in its annotations:

- CRI-O: ``io.kubernetes.cri-o.Labels``, a JSON object holding ``io.kubernetes.pod.uid``,
  ``io.kubernetes.pod.name``, ``io.kubernetes.pod.namespace``, ``io.kubernetes.container.name``;
- containerd: ``io.kubernetes.cri.sandbox-uid``, ``...sandbox-name``, ``...sandbox-namespace``,
  ``io.kubernetes.cri.container-name``;
- podman records none: the request that made the archive has to supply it (a hint).

This fails closed: identity that is missing, partial, malformed, unsafe as a path segment,
or that disagrees between sources (two annotation sets, the hint, the file name) refuses the
archive. Storing a dump under the wrong pod would hand one workload's memory to another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from watcher.archive.names import ArchiveName
from watcher.errors import IdentityError, UnsafeNameError
from watcher.jsonobj import json_object
from watcher.store import layout
from watcher.store.manifest import Runtime

_CRIO_LABELS = "io.kubernetes.cri-o.Labels"
_CRIO_KEYS = (
    "io.kubernetes.pod.uid",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.pod.name",
    "io.kubernetes.container.name",
)
_CONTAINERD_KEYS = (
    "io.kubernetes.cri.sandbox-uid",
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.cri.container-name",
)


@dataclass(frozen=True)
class Identity:
    pod_uid: str
    namespace: str
    pod_name: str
    container: str

    @classmethod
    def checked(cls, uid: object, ns: object, pod: object, container: object) -> Identity:
        """Validate every field as the path segment or name it will become."""
        return cls(
            layout.pod_uid(uid), layout.namespace(ns), layout.pod_name(pod), layout.container_name(container)
        )


@dataclass(frozen=True)
class ArchiveIdentity:
    identity: Identity
    runtime: Runtime


def identify(
    spec_dump: bytes | None,
    archive: ArchiveName,
    top_level: set[str],
    hint: Identity | None = None,
) -> ArchiveIdentity:
    """Decide the archive's identity from its spec.dump, the request's hint and its name."""
    where = f"archive {archive.file_name!r}"
    annotations = _annotations(spec_dump, where) if spec_dump is not None else {}
    found: dict[Runtime, Identity] = {}
    try:
        crio = _crio(annotations, where)
        if crio is not None:
            found[Runtime.CRIO] = crio
        containerd = _from_keys(annotations, _CONTAINERD_KEYS, "containerd", where)
        if containerd is not None:
            found[Runtime.CONTAINERD] = containerd
    except UnsafeNameError as err:
        raise IdentityError(f"{where}: unsafe identity in spec.dump: {err}") from None
    if len(found) > 1:
        raise IdentityError(f"{where}: spec.dump carries both CRI-O and containerd identities")
    if found:
        runtime, identity = next(iter(found.items()))
        if hint is not None and hint != identity:
            raise IdentityError(
                f"{where}: spec.dump names {_show(identity)} but the request was for {_show(hint)}"
            )
    elif hint is not None:
        identity = hint
        runtime = Runtime.PODMAN if annotations.get("io.container.manager") == "libpod" else Runtime.UNKNOWN
    elif spec_dump is None:
        raise IdentityError(f"{where}: no spec.dump, so no Kubernetes identity")
    else:
        raise IdentityError(
            f"{where}: spec.dump has no Kubernetes identity (neither CRI-O nor containerd annotations)"
        )
    if runtime is Runtime.CRIO and "status" in top_level:
        runtime = Runtime.UNKNOWN  # a containerd-only entry in a CRI-O archive: do not guess
    if archive.pod_name != identity.pod_name or not archive.matches(identity.namespace, identity.container):
        raise IdentityError(
            f"{where}: file name disagrees with spec.dump, which names {_show(identity)}"
        )
    return ArchiveIdentity(identity, runtime)


def _annotations(spec_dump: bytes, where: str) -> dict[str, Any]:
    spec = json_object(spec_dump, f"{where}: spec.dump", IdentityError)
    annotations = spec.get("annotations", {})
    if not isinstance(annotations, dict):
        raise IdentityError(f"{where}: spec.dump annotations are not an object")
    return annotations


def _crio(annotations: Mapping[str, Any], where: str) -> Identity | None:
    if _CRIO_LABELS not in annotations:
        return None
    raw = annotations[_CRIO_LABELS]
    what = f"{where}: {_CRIO_LABELS} in spec.dump"
    if not isinstance(raw, str):
        raise IdentityError(f"{what} is not a JSON object")
    return _from_keys(json_object(raw, what, IdentityError), _CRIO_KEYS, "CRI-O", where)


def _from_keys(source: Mapping[str, Any], keys: tuple[str, ...], kind: str, where: str) -> Identity | None:
    present = [key for key in keys if key in source]
    if not present:
        return None
    if len(present) != len(keys):
        missing = ", ".join(key for key in keys if key not in source)
        raise IdentityError(f"{where}: {kind} identity in spec.dump is partial (missing {missing})")
    return Identity.checked(*(source[key] for key in keys))


def _show(identity: Identity) -> str:
    return f"{identity.namespace}/{identity.pod_name} (uid {identity.pod_uid}) container {identity.container}"
