"""Where an S3 store lives and the keys of its objects, as pure functions (docs/s3.md).

``s3://BUCKET/PREFIX`` holds the filesystem store's layout (ARCHITECTURE.md, "Store layout") under
``PREFIX/``: the same names, so every segment passes the same validators (``watcher.store.layout``)
before it becomes part of a key, and a key read from a listing is taken apart by the inverse,
which refuses anything no writer would have made.

    PREFIX/<podUID>/<checkpointID>/<container>/dump.tar.zst
    PREFIX/<podUID>/<checkpointID>/<container>/manifest.json
    PREFIX/<podUID>/<checkpointID>/.checkpoint-complete
    PREFIX/.ingest/<node>/staging/<token>                  a dump on its way in (no rename in S3)
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from watcher.errors import UnsafeNameError
from watcher.store import layout

SCHEME = "s3://"
STAGING_DIR = "staging"
# Bucket names as S3 documents them (3-63 characters, lowercase letters, digits, '.', '-'); the
# older, laxer names (uppercase, '_') are accepted by some servers too, so admit them.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
# A prefix segment: what a store directory's name could be, without dots leading (the store's own).
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class S3Location:
    """A store in a bucket: ``bucket`` and ``prefix`` (no leading or trailing '/', may be empty)."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, *segments: str) -> str:
        return "/".join((self.prefix, *segments)) if self.prefix else "/".join(segments)

    @property
    def root(self) -> str:
        """What every key of this store starts with ('' for a whole bucket)."""
        return f"{self.prefix}/" if self.prefix else ""

    def checkpoint_prefix(self, uid: str, cid: str) -> str:
        return self.key(layout.pod_uid(uid), layout.checkpoint_id(cid)) + "/"

    def marker_key(self, uid: str, cid: str) -> str:
        return self.key(layout.pod_uid(uid), layout.checkpoint_id(cid), layout.MARKER_FILE)

    def dump_key(self, ref: layout.ArtifactRef) -> str:
        return self.key(*ref.segments, layout.DUMP_FILE)

    def manifest_key(self, ref: layout.ArtifactRef) -> str:
        return self.key(*ref.segments, layout.MANIFEST_FILE)

    def collector_key(self, name: str) -> str:
        return self.key(layout.COLLECTOR_DIR, name)

    def staging_prefix(self, node: str) -> str:
        return self.key(layout.INGEST_LEDGER_DIR, layout.node_name(node), STAGING_DIR) + "/"

    def staging_key(self, node: str, token: str) -> str:
        if _TOKEN.fullmatch(token) is None:
            raise UnsafeNameError(f"staging token {token!r}: must be 32 hex digits")
        return self.staging_prefix(node) + token


def parse(text: str) -> S3Location:
    """``s3://BUCKET[/PREFIX]``, or UnsafeNameError naming the URL and what is wrong with it."""
    if not isinstance(text, str) or not text.startswith(SCHEME):
        raise UnsafeNameError(f"store URL {text!r}: must start with {SCHEME}")
    rest = text[len(SCHEME):]
    if "?" in rest or "#" in rest or "\0" in rest or "\n" in rest:
        raise UnsafeNameError(f"store URL {text!r}: no query, fragment, NUL or newline allowed")
    bucket, _, prefix = rest.partition("/")
    if _BUCKET.fullmatch(bucket) is None or ".." in bucket:
        raise UnsafeNameError(f"store URL {text!r}: bucket {bucket!r} is not a bucket name "
                              "(3-63 letters, digits, '.', '-' or '_')")
    prefix = prefix.strip("/")
    for segment in prefix.split("/") if prefix else ():
        if _PREFIX_SEGMENT.fullmatch(segment) is None or ".." in segment:
            raise UnsafeNameError(f"store URL {text!r}: prefix segment {segment!r} must be letters, digits, "
                                  "'.', '_' or '-', not start with '.' (the store's own names do)")
    return S3Location(bucket, prefix)


class ObjectKind(Enum):
    DUMP = "dump"
    MANIFEST = "manifest"
    MARKER = "marker"
    KEEP = "keep"
    STAGING = "staging"
    COLLECTOR = "collector"
    """The collector's own state (``.gc/``): not a checkpoint, never collected."""
    OTHER = "other"
    """A key below the prefix that no writer makes: reported, never deleted (unknown is not absent)."""


@dataclass(frozen=True)
class KeyInfo:
    """What a listed key is, by its place in the layout. ``uid``/``cid``/``container``/``node``/``name``
    as far as the kind has them."""

    kind: ObjectKind
    uid: str = ""
    cid: str = ""
    container: str = ""
    node: str = ""
    name: str = ""
    reason: str = ""


def classify(location: S3Location, key: str) -> KeyInfo:
    """Take a listed key apart (the inverse of the key builders above); OTHER, with the reason, for
    anything no writer makes."""
    if not key.startswith(location.root):
        return KeyInfo(ObjectKind.OTHER, reason="outside the store's prefix")
    parts = key[len(location.root):].split("/")
    try:
        if parts[0] == layout.COLLECTOR_DIR:
            return KeyInfo(ObjectKind.COLLECTOR, name="/".join(parts[1:]))
        if parts[0] == layout.INGEST_LEDGER_DIR:
            if len(parts) == 4 and parts[2] == STAGING_DIR and _TOKEN.fullmatch(parts[3]):
                return KeyInfo(ObjectKind.STAGING, node=layout.node_name(parts[1]), name=parts[3])
            return KeyInfo(ObjectKind.OTHER, reason="not a staging object")
        if len(parts) == 3 and parts[2] in (layout.MARKER_FILE, layout.KEEP_FILE):
            kind = ObjectKind.MARKER if parts[2] == layout.MARKER_FILE else ObjectKind.KEEP
            return KeyInfo(kind, layout.pod_uid(parts[0]), layout.checkpoint_id(parts[1]))
        if len(parts) == 4 and parts[3] in (layout.DUMP_FILE, layout.MANIFEST_FILE):
            kind = ObjectKind.DUMP if parts[3] == layout.DUMP_FILE else ObjectKind.MANIFEST
            return KeyInfo(kind, layout.pod_uid(parts[0]), layout.checkpoint_id(parts[1]),
                           layout.container_name(parts[2]))
    except UnsafeNameError as err:
        return KeyInfo(ObjectKind.OTHER, reason=str(err))
    return KeyInfo(ObjectKind.OTHER, reason="not a name of the store's layout")


def store_argument(text: str) -> Path | S3Location:
    """``--store`` of every command (argparse's ``type``): a directory, or ``s3://BUCKET/PREFIX``, refused with
    the reason when malformed."""
    if text.startswith(SCHEME):
        try:
            return parse(text)
        except UnsafeNameError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return Path(text)
