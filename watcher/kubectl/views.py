"""What ``kubectl lpm`` prints (pure): rows from raw API objects, and the ``-o`` formats.

``status`` prints PodMigrations; ``-o json|yaml`` gives the objects as the API returned them, as
``kubectl get -o json`` would. ``ls`` prints checkpoints: one row per PodCheckpointContent (a pod's
checkpoint, every container under one checkpoint ID) or ContainerCheckpointContent (one container's);
its ``-o json|yaml`` gives those rows, because ``pinned`` is read from the store, not from the objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from watcher.cluster.objects import GROUP, PLURALS
from watcher.errors import UnsafeNameError
from watcher.store import layout

Object = Mapping[str, Any]


class Output(str, Enum):
    TABLE = "table"
    WIDE = "wide"
    NAME = "name"
    JSON = "json"
    YAML = "yaml"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint as ``ls`` shows it."""

    name: str
    kind: str
    """PodCheckpointContent or ContainerCheckpointContent: the object ``pin``/``unpin`` take by name."""
    namespace: str
    pod: str
    node: str
    containers: tuple[str, ...]
    size: int | None
    """Bytes stored (the sum of the containers' ``compressedSize``); None when an object does not say."""
    storage: str
    """shared, local, or both (``shared,local``) while some of a pod's containers are still held locally."""
    created: str
    """The object's ``creationTimestamp`` (RFC 3339)."""
    target: str
    directory: tuple[str, str] | None
    """(pod UID, checkpoint ID): the checkpoint's directory in the store, from its artifact URIs; None when
    they name none (``_directory``)."""
    pinned: bool | None = None
    """Whether the directory holds the collector's ``.keep``; None when no store was read."""


def checkpoints(pod_contents: Iterable[Object], container_contents: Iterable[Object]) -> list[Checkpoint]:
    """The rows for both kinds, oldest first (pinned left unknown: the store says that, not the API)."""
    rows = [_row("PodCheckpointContent", obj, obj.get("spec", {}).get("containers") or [])
            for obj in pod_contents]
    rows += [_row("ContainerCheckpointContent", obj, [obj.get("spec", {})]) for obj in container_contents]
    return sorted(rows, key=lambda row: (row.created, row.name))


def _row(kind: str, obj: Object, artifacts: Sequence[Object]) -> Checkpoint:
    spec = obj.get("spec", {})
    sizes = [a.get("compressedSize") for a in artifacts]
    storages = sorted({a.get("storageType") or _storage_of(a.get("artifactURI", "")) for a in artifacts})
    return Checkpoint(
        name=obj["metadata"]["name"], kind=kind, namespace=spec.get("podNamespace", ""),
        pod=spec.get("podName", ""), node=spec.get("sourceNode", ""),
        containers=tuple(a.get("containerName", "") for a in artifacts),
        size=sum(s for s in sizes if isinstance(s, int)) if sizes and all(isinstance(s, int) for s in sizes)
        else None,
        storage=",".join(storages), created=obj["metadata"].get("creationTimestamp", ""),
        target=spec.get("targetNode", ""), directory=_directory(a.get("artifactURI", "") for a in artifacts))


def _storage_of(uri: str) -> str:
    return "shared" if uri.startswith(layout.URI_SCHEME) else "local"


def _directory(uris: Iterable[str]) -> tuple[str, str] | None:
    """The one (pod UID, checkpoint ID) in the shared store that every URI names. None when any is held in a
    node's local store (``file://``: not in the shared store yet) or they disagree."""
    found = set()
    for uri in uris:
        try:
            ref = layout.parse_uri(uri)
        except UnsafeNameError:
            return None
        found.add((ref.pod_uid, ref.checkpoint_id))
    return found.pop() if len(found) == 1 else None


def age(timestamp: str, now: datetime) -> str:
    """kubectl's short age: 45s, 12m, 3h, 5d."""
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def size(value: int | None) -> str:
    if value is None:
        return "<unknown>"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def _pinned(value: bool | None) -> str:
    return "<unknown>" if value is None else ("yes" if value else "no")


def checkpoint_table(rows: Sequence[Checkpoint], output: Output, all_namespaces: bool, now: datetime) -> str:
    if output is Output.NAME:
        return "".join(f"{PLURALS[row.kind].removesuffix('s')}.{GROUP}/{row.name}\n" for row in rows)
    if output in (Output.JSON, Output.YAML):
        items = [{"name": row.name, "kind": row.kind, "podNamespace": row.namespace, "podName": row.pod,
                  "sourceNode": row.node, "targetNode": row.target or None, "containers": list(row.containers),
                  "compressedSize": row.size, "storageType": row.storage, "creationTimestamp": row.created,
                  "pinned": row.pinned} for row in rows]
        return dump({"items": items}, output)
    header = ["NAME", "POD", "NODE", "CONTAINERS", "SIZE", "AGE", "STORAGE", "PINNED"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    if output is Output.WIDE:
        header += ["TARGET", "KIND", "CHECKPOINT"]
    table = []
    for row in rows:
        cells = [row.name, row.pod, row.node, ",".join(row.containers), size(row.size), age(row.created, now),
                 row.storage, _pinned(row.pinned)]
        if all_namespaces:
            cells.insert(0, row.namespace)
        if output is Output.WIDE:
            cells += [row.target or "<none>", row.kind, "/".join(row.directory) if row.directory else "<unknown>"]
        table.append(cells)
    return columns(header, table)


def migration_table(migrations: Sequence[Object], output: Output, all_namespaces: bool, now: datetime) -> str:
    if output is Output.NAME:
        return "".join(f"podmigration.{GROUP}/{m['metadata']['name']}\n" for m in migrations)
    if output in (Output.JSON, Output.YAML):
        if len(migrations) == 1:
            return dump(migrations[0], output)
        return dump({"apiVersion": "v1", "kind": "List", "items": list(migrations)}, output)
    header = ["NAME", "POD", "SOURCE", "TARGET", "PHASE", "AGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    if output is Output.WIDE:
        header += ["RESTORED", "MESSAGE"]
    table = []
    for m in migrations:
        spec, status = m.get("spec", {}), m.get("status", {})
        cells = [m["metadata"]["name"], spec.get("podName", ""), status.get("sourceNode") or "<none>",
                 spec.get("targetNode", ""), status.get("phase") or "Pending",
                 age(m["metadata"].get("creationTimestamp", ""), now)]
        if all_namespaces:
            cells.insert(0, m["metadata"].get("namespace", ""))
        if output is Output.WIDE:
            cells += [status.get("restoredPodName") or "<none>", status.get("message") or ""]
        table.append(cells)
    return columns(header, table)


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """kubectl's plain table: columns three spaces apart, no trailing blanks."""
    if not rows:
        return ""
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() + "\n"
                   for cells in [header, *rows])


def dump(value: Any, output: Output) -> str:
    if output is Output.JSON:
        return json.dumps(value, indent=4) + "\n"
    return yaml(value)


def yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for JSON values, every string (and key) double-quoted: none can turn into a number, a
    bool or a null. A YAML library would be a new dependency for this alone."""
    pad = " " * indent
    if isinstance(value, Mapping) and value:
        out = []
        for key, item in value.items():
            quoted = _quoted(str(key))
            # YAML allows an implicit key of at most 1024 characters before its ':'; a longer one (a pod's
            # annotation, say) is written as an explicit key, '? KEY' then ': VALUE' on a line of its own.
            head = f"{pad}{quoted}:" if len(quoted) < _IMPLICIT_KEY else f"{pad}? {quoted}\n{pad}:"
            if _nested(item):
                out.append(f"{head}\n{yaml(item, indent + 2)}")
            else:
                out.append(f"{head} {_scalar(item)}\n")
        return "".join(out)
    if isinstance(value, list) and value:
        out = []
        for item in value:
            if _nested(item):
                body = yaml(item, indent + 2)
                out.append(f"{pad}- {body[indent + 2:]}")
            else:
                out.append(f"{pad}- {_scalar(item)}\n")
        return "".join(out)
    return f"{pad}{_scalar(value)}\n"


_IMPLICIT_KEY = 1000
"""Below YAML's 1024-character bound on an implicit key, with room for the ': ' after it."""


def _nested(value: Any) -> bool:
    return isinstance(value, Mapping | list) and bool(value)


def _scalar(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    if isinstance(value, str):
        return _quoted(value)
    text = json.dumps(value)  # null, true/false and numbers read the same in YAML, but for:
    if isinstance(value, float) and "e" in text and "." not in text:
        text = text.replace("e", ".0e")  # YAML 1.1 (PyYAML) reads 1e+16 as a string, 1.0e+16 as a float
    return text


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar with everything but printable ASCII escaped. Not JSON's quoting: JSON
    writes a character beyond the BMP as a surrogate pair, which YAML reads as two characters, and
    YAML folds a raw NEL or line separator inside quotes into a space."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'
