"""manifest.json (one per container) and .checkpoint-complete (one per checkpoint).

Both are JSON with camelCase keys as ARCHITECTURE.md fixes them. Decoding validates every
field that a reader will later turn into a path or compare with a hash, so a tampered or
truncated file is an error naming the file, never a crash or a path outside the store.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from watcher.crypt import keyring, seal
from watcher.errors import StoreError, UnsafeNameError
from watcher.jsonobj import json_object
from watcher.store import layout

FORMAT_VERSION = 1
SEALED_FORMAT_VERSION = 2
"""An encrypted dump's manifest (with ``encryption``): a reader that predates encryption refuses it by its
version rather than taking the sealed bytes for zstd. A plain dump's manifest stays version 1."""
MAX_TEXT = 1024  # a file name is at most 255 bytes; room for any, none for a megabyte-long field
MAX_SIZE = (1 << 63) - 1
_REASON_CHARS = 300
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Runtime(str, Enum):
    CRIO = "cri-o"
    CONTAINERD = "containerd"
    PODMAN = "podman"
    UNKNOWN = "unknown"


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, second precision, as Kubernetes prints times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Manifest:
    pod_uid: str
    pod_namespace: str
    pod_name: str
    container_name: str
    checkpoint_id: str
    creation_time: datetime
    source_node: str
    target_node: str | None
    runtime: Runtime
    kubelet_archive: str
    checksum_sha256: str
    compressed_size: int
    uncompressed_sha256: str
    uncompressed_size: int
    encryption: seal.Sealed | None = None
    """Set when dump.tar.zst is sealed (docs/encryption.md); the sums above stay the stored bytes' and the
    raw archive's."""

    @property
    def ref(self) -> layout.ArtifactRef:
        return layout.ArtifactRef(self.pod_uid, self.checkpoint_id, self.container_name)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "formatVersion": FORMAT_VERSION if self.encryption is None else SEALED_FORMAT_VERSION,
            "podUID": self.pod_uid,
            "podNamespace": self.pod_namespace,
            "podName": self.pod_name,
            "containerName": self.container_name,
            "checkpointID": self.checkpoint_id,
            "creationTime": rfc3339(self.creation_time),
            "sourceNode": self.source_node,
            "runtime": self.runtime.value,
            "kubeletArchive": self.kubelet_archive,
            "compression": "zstd",
            "checksumSHA256": self.checksum_sha256,
            "compressedSize": self.compressed_size,
            "uncompressedSHA256": self.uncompressed_sha256,
            "uncompressedSize": self.uncompressed_size,
            "artifactURI": self.ref.uri,
        }
        if self.target_node is not None:
            body["targetNode"] = self.target_node
        if self.encryption is not None:
            body["encryption"] = {
                "format": self.encryption.format,
                "keyID": self.encryption.key_id,
                "wrappedKey": base64.b64encode(self.encryption.wrapped_key).decode(),
            }
        return body

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> Manifest:
        try:
            version = raw.get("formatVersion")
            if version not in (FORMAT_VERSION, SEALED_FORMAT_VERSION) or isinstance(version, bool):
                raise ValueError(f"formatVersion {version!r} is not {FORMAT_VERSION} or {SEALED_FORMAT_VERSION}")
            if (version == SEALED_FORMAT_VERSION) != ("encryption" in raw):
                raise ValueError(f"formatVersion {version} goes with encryption only in version "
                                 f"{SEALED_FORMAT_VERSION}")
            if raw.get("compression") != "zstd":
                raise ValueError(f"compression {raw.get('compression')!r} is not zstd")
            manifest = cls(
                pod_uid=layout.pod_uid(raw["podUID"]),
                pod_namespace=layout.namespace(raw["podNamespace"]),
                pod_name=layout.pod_name(raw["podName"]),
                container_name=layout.container_name(raw["containerName"]),
                checkpoint_id=layout.checkpoint_id(raw["checkpointID"]),
                creation_time=parse_rfc3339(text_field(raw, "creationTime")),
                source_node=layout.node_name(raw["sourceNode"]),
                target_node=(
                    layout.node_name(raw["targetNode"]) if raw.get("targetNode") is not None else None
                ),
                runtime=Runtime(raw["runtime"]),
                kubelet_archive=text_field(raw, "kubeletArchive"),
                checksum_sha256=_sha256(raw, "checksumSHA256"),
                compressed_size=size_field(raw, "compressedSize"),
                uncompressed_sha256=_sha256(raw, "uncompressedSHA256"),
                uncompressed_size=size_field(raw, "uncompressedSize"),
                encryption=_sealed(raw["encryption"]) if "encryption" in raw else None,
            )
            if raw.get("artifactURI") != manifest.ref.uri:
                raise ValueError(f"artifactURI {raw.get('artifactURI')!r} does not match its fields")
        except (KeyError, TypeError, ValueError, UnsafeNameError) as err:
            raise StoreError(f"invalid manifest {where}: {field_error(err)}") from None
        return manifest


@dataclass(frozen=True)
class Marker:
    """The completion marker: its presence publishes the checkpoint."""

    checkpoint_id: str
    pod_uid: str
    containers: tuple[str, ...]
    completed_at: datetime
    target_node: str | None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "checkpointID": self.checkpoint_id,
            "podUID": self.pod_uid,
            "containers": list(self.containers),
            "completedAt": rfc3339(self.completed_at),
        }
        if self.target_node is not None:
            body["targetNode"] = self.target_node
        return body

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> Marker:
        try:
            containers = raw["containers"]
            if not isinstance(containers, list) or not containers:
                raise ValueError("containers must be a non-empty list")
            names = tuple(layout.container_name(name) for name in containers)
            if len(set(names)) != len(names):
                raise ValueError("containers lists a name twice")
            return cls(
                checkpoint_id=layout.checkpoint_id(raw["checkpointID"]),
                pod_uid=layout.pod_uid(raw["podUID"]),
                containers=names,
                completed_at=parse_rfc3339(text_field(raw, "completedAt")),
                target_node=(
                    layout.node_name(raw["targetNode"]) if raw.get("targetNode") is not None else None
                ),
            )
        except (KeyError, TypeError, ValueError, UnsafeNameError) as err:
            raise StoreError(f"invalid completion marker {where}: {field_error(err)}") from None


def encode(body: Mapping[str, Any]) -> bytes:
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def decode(data: bytes, where: str) -> dict[str, Any]:
    return json_object(data, where, StoreError)


def text_field(raw: Mapping[str, Any], key: str) -> str:
    """A one-line string of at most MAX_TEXT characters (a file name, a time): what lpm prints and logs."""
    value = raw[key]
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or "\0" in value or "\n" in value:
        raise ValueError(f"{key} must be a one-line string of at most {MAX_TEXT} characters")
    return value


def _sealed(raw: Any) -> seal.Sealed:
    if not isinstance(raw, dict):
        raise ValueError("encryption must be an object")
    if raw.get("format") != seal.FORMAT:
        raise ValueError(f"encryption format {str(raw.get('format'))[:_REASON_CHARS]!r} is not {seal.FORMAT}")
    key_id = raw.get("keyID")
    if not isinstance(key_id, str) or keyring.KEY_ID.fullmatch(key_id) is None:
        raise ValueError("encryption keyID must be a key ID (letters, digits, '.', '_', '-'; at most 128)")
    wrapped = raw.get("wrappedKey")
    try:
        if not isinstance(wrapped, str) or len(wrapped) > 4 * seal.WRAPPED_SIZE:
            raise ValueError
        key = base64.b64decode(wrapped, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("encryption wrappedKey must be base64") from None
    if len(key) != seal.WRAPPED_SIZE:
        raise ValueError(f"encryption wrappedKey must hold {seal.WRAPPED_SIZE} bytes")
    return seal.Sealed(key_id, key)


def _sha256(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or _SHA256.fullmatch(value) is None:
        raise ValueError(f"{key} must be 64 lowercase hex digits")
    return value


def size_field(raw: Mapping[str, Any], key: str) -> int:
    """A non-negative integer that fits the 64-bit fields files and the API have (st_size, int64)."""
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SIZE:
        raise ValueError(f"{key} must be an integer from 0 to {MAX_SIZE}")
    return value


def field_error(err: Exception) -> str:
    """The reason a field was refused, cut to a line: the refused value may be a megabyte long."""
    reason = f"missing field {err.args[0]}" if isinstance(err, KeyError) else str(err)
    return reason if len(reason) <= _REASON_CHARS else reason[:_REASON_CHARS] + "..."
