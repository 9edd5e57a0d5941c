"""``kubectl lpm get``'s reading: one container's archive out of the shared store, checked against the API.

The content object is what the destination trusts (its ``checksumSHA256`` was written by the source's
agent, and only it may write it: docs/threat-model.md); the store's manifest is checked against it before
a byte is written, so a dump and manifest swapped in the store behind the API's back are refused, as a
restore would refuse them. Then ``retrieve.get`` writes the archive, verified again as it streams.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from watcher.errors import ChecksumMismatch
from watcher.s3 import retrieve as s3retrieve
from watcher.s3.store import S3Store
from watcher.store import catalog, fsio, layout, retrieve
from watcher.store.manifest import Manifest
from watcher.zstream import CompressionSettings


def write(store: Path, artifact: Mapping[str, Any], out: Path, settings: CompressionSettings) -> Manifest:
    """Write ``artifact``'s original archive (a content's container: ``artifactURI``, ``checksumSHA256``) from
    the shared ``store`` to ``out``; nothing is written unless its SHA-256 is the one the API recorded."""
    ref = layout.parse_uri(str(artifact.get("artifactURI", "")))
    root_fd = fsio.open_root(store, create=False)
    try:
        recorded = artifact.get("checksumSHA256")
        _check(catalog.find(root_fd, ref)[1], recorded)
        written = retrieve.get(root_fd, ref, out, settings, threading.Event())
        try:
            _check(written, recorded)  # swapped while it was read: what was written goes
        except ChecksumMismatch:
            out.unlink()
            raise
        return written
    finally:
        os.close(root_fd)


async def write_from_bucket(store: S3Store, artifact: Mapping[str, Any], out: Path,
                            settings: CompressionSettings) -> Manifest:
    """``write`` from a bucket."""
    ref = layout.parse_uri(str(artifact.get("artifactURI", "")))
    recorded = artifact.get("checksumSHA256")
    _check((await store.find(ref))[1], recorded)
    written = await s3retrieve.get(store, ref, out, settings, threading.Event())
    try:
        _check(written, recorded)  # replaced while it was read: what was written goes
    except ChecksumMismatch:
        await asyncio.to_thread(out.unlink)
        raise
    return written


def _check(manifest: Manifest, recorded: object) -> None:
    if recorded != manifest.checksum_sha256:
        raise ChecksumMismatch(f"artifact {manifest.ref.uri}: the store's manifest says SHA-256 "
                               f"{manifest.checksum_sha256}, the API recorded {recorded}: not the checkpoint its "
                               "source node announced; nothing written")
