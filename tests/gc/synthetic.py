"""Synthetic stores, fast: real directories, manifests the store's validators accept, markers.

For tests that need hundreds of checkpoints and for ``bench/gc_scale.py`` (100,000): going
through the real ingest would compress an archive per checkpoint. One manifest template is
filled in per checkpoint; nothing is fsynced. ``lpm store ls`` lists what this builds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

DAY = 86400.0

# One manifest as the ingest writes it, with placeholders for what varies per checkpoint.
_MANIFEST = json.dumps({
    "formatVersion": 1, "podUID": "@UID@", "podNamespace": "@NS@", "podName": "@POD@",
    "containerName": "@CTR@", "checkpointID": "@CID@", "creationTime": "@TIME@",
    "sourceNode": "node-a", "runtime": "cri-o", "kubeletArchive": "checkpoint-@POD@_@NS@-@CTR@.tar",
    "compression": "zstd", "checksumSHA256": "0" * 64, "compressedSize": 64,
    "uncompressedSHA256": "1" * 64, "uncompressedSize": 4096,
    "artifactURI": "shared://@UID@/@CID@/@CTR@/dump.tar.zst",
}, indent=2, sort_keys=True)
_DUMP = b"\x28\xb5\x2f\xfd" + bytes(60)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def pod_uid(index: int) -> str:
    return f"{index:08x}-0000-4000-8000-{index:012x}"


def build(root: Path, count: int, now: float, *, per_pod: int = 4, namespaces: int = 50,
          max_age: float = 3 * DAY, min_age: float = 0.0, incomplete_every: int = 0, pinned_every: int = 0,
          two_containers_every: int = 0) -> None:
    """``count`` checkpoints, ``per_pod`` to a pod, aged between ``min_age`` and ``max_age`` before ``now``.

    Every ``incomplete_every``-th has no marker, every ``pinned_every``-th a ``.keep``, every
    ``two_containers_every``-th two containers (0: none).
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    span = max(1, int(max_age - min_age))
    for index in range(count):
        pod_index, nth = divmod(index, per_pod)
        uid = pod_uid(pod_index)
        ns = f"ns-{pod_index % namespaces}"
        pod = f"pod-{pod_index}"
        created = now - min_age - (index * 7919 % span)
        cid = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(created))}-{index:08x}"
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
        if nth == 0:
            os.mkdir(root / uid, 0o700)
        base = f"{root}/{uid}/{cid}"
        os.mkdir(base, 0o700)
        containers = ["app", "sidecar"] if two_containers_every and index % two_containers_every == 0 else ["app"]
        for ctr in containers:
            os.mkdir(f"{base}/{ctr}", 0o700)
            _write(f"{base}/{ctr}/dump.tar.zst", _DUMP)
            manifest = (_MANIFEST.replace("@UID@", uid).replace("@NS@", ns).replace("@POD@", pod)
                        .replace("@CTR@", ctr).replace("@CID@", cid).replace("@TIME@", iso))
            _write(f"{base}/{ctr}/manifest.json", manifest.encode())
        if pinned_every and index % pinned_every == pinned_every - 1:
            _write(f"{base}/.keep", b"")
        if incomplete_every and index % incomplete_every == incomplete_every // 2:
            continue  # an abandoned write: no marker
        marker = {"checkpointID": cid, "podUID": uid, "containers": containers, "completedAt": iso}
        _write(f"{base}/.checkpoint-complete", json.dumps(marker).encode())
