"""``lpm inspect`` on checkpoints in lpm's store: the same answer as from the archive, read from the stored
``dump.tar.zst`` as it decompresses (sealed ones opened with their key), checked against the manifest; and
on an archive far larger than what inspect holds, in bounded memory."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import zstandard

from tests.inspect.fixtures import POD_UID, Archives
from tests.support import REPO, lpm
from watcher.inspect.model import TcpConnection
from watcher.inspect.sources import established_tcp_in_stored
from watcher.store import fsio, layout
from watcher.zstream import CompressionSettings


def _inspect(*args: str) -> list[dict[str, Any]]:
    result = lpm("inspect", *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    parsed: list[dict[str, Any]] = json.loads(result.stdout)
    return parsed


def _same(stored: dict[str, Any], archived: dict[str, Any]) -> None:
    assert stored["source"].startswith("shared://"), stored["source"]
    assert {**stored, "source": ""} == {**archived, "source": ""}


def _ingest(archive: Path, store: Path, *flags: str) -> str:
    return lpm("ingest", str(archive), "--store", str(store), "--node", "node-a", *flags, check=True).stdout.strip()


def test_a_stored_checkpoint_by_uri_id_and_path(archives: Archives, tmp_path):
    store = tmp_path / "store"
    uri = _ingest(archives.tcp, store)
    (archived,) = _inspect(str(archives.tcp))
    checkpoint_id = uri.removeprefix("shared://").split("/")[1]
    for name in (uri, checkpoint_id, f"{POD_UID}/{checkpoint_id}", f"{POD_UID}/{checkpoint_id}/talker"):
        (stored,) = _inspect(name, "--store", str(store))
        _same(stored, archived)


def test_the_agents_call_finds_the_established_connections_in_a_stored_dump(archives: Archives, tmp_path):
    store = tmp_path / "store"
    uri = _ingest(archives.tcp, store)
    root = fsio.open_root(store, create=False)
    try:
        connections = established_tcp_in_stored(root, layout.parse_uri(uri), CompressionSettings())
    finally:
        os.close(root)
    assert len(connections) == 2 and all(isinstance(c, TcpConnection) for c in connections), connections
    listener, client = sorted(connections, key=lambda c: c.local_port != 7000)
    assert (listener.local_port, client.remote_port, listener.remote_port) == (7000, 7000, client.local_port), \
        connections


def test_a_sealed_checkpoint_needs_its_key(archives: Archives, tmp_path):
    store, keys = tmp_path / "store", tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "k1").write_bytes(os.urandom(32))
    uri = _ingest(archives.tcp, store, "--encryption-keys", str(keys))
    without = lpm("inspect", uri, "--store", str(store))
    assert (without.returncode, without.stdout) == (1, ""), without
    assert "k1" in without.stderr and "key" in without.stderr, without.stderr
    (archived,) = _inspect(str(archives.tcp))
    (stored,) = _inspect(uri, "--store", str(store), "--encryption-keys", str(keys))
    _same(stored, archived)


def test_a_tampered_dump_gives_no_inspection(archives: Archives, tmp_path):
    store = tmp_path / "store"
    uri = _ingest(archives.tcp, store)
    dump = store.joinpath(*uri.removeprefix("shared://").split("/"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x55
    dump.write_bytes(bytes(data))
    result = lpm("inspect", uri, "--store", str(store), "-o", "json")
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr.startswith(f"lpm: artifact {uri}: "), result.stderr


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def test_memory_stays_bounded_whatever_the_pages(archives: Archives, tmp_path):
    """512 MiB more pages than the real archive has, as one more pages image: inspect counts them and never
    holds them (its peak resident set stays far below the archive)."""
    pages = 512 << 20
    big = tmp_path / "big.tar"
    with tarfile.open(archives.tcp) as tin, tarfile.open(big, "w", format=tarfile.PAX_FORMAT) as tout:
        for member in tin:
            tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo("checkpoint/pages-9999.img")
        info.size = pages
        tout.addfile(info, io.BufferedReader(_Zeros(pages), 1 << 20))
    code = ("import resource, sys; from watcher.cli import main; code = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")

    def peak(archive: Path) -> tuple[int, dict]:
        result = subprocess.run([sys.executable, "-c", code, "inspect", str(archive), "-o", "json"],
                                capture_output=True, text=True, timeout=300, cwd=REPO)
        assert result.returncode == 0, result.stderr
        (inspection,) = json.loads(result.stdout)
        return int(result.stderr.strip().splitlines()[-1]), inspection

    # Against the real archive read the same way: what the CLI's imports cost is the same in both.
    reference_kib, plain = peak(archives.tcp)
    peak_kib, inspection = peak(big)
    assert inspection["sizes"]["memoryPages"] == plain["sizes"]["memoryPages"] + pages, inspection["sizes"]
    assert inspection["sizes"]["archive"] == big.stat().st_size > pages
    assert peak_kib < reference_kib + (64 << 10), (
        f"peak resident set {peak_kib} KiB reading a {big.stat().st_size}-byte archive, {reference_kib} KiB reading "
        f"the {archives.tcp.stat().st_size}-byte one")


def test_a_compressed_archive_reads_as_the_plain_one(archives: Archives, tmp_path):
    """podman exports compressed archives too (--compress zstd|gzip): read through the decompressor."""
    (plain,) = _inspect(str(archives.tcp))
    data = archives.tcp.read_bytes()
    zst = tmp_path / "cp.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(data))
    gz = tmp_path / "cp.tar.gz"
    gz.write_bytes(gzip.compress(data))
    for compressed in (zst, gz):
        (inspection,) = _inspect(str(compressed))
        assert {**inspection, "source": ""} == {**plain, "source": ""}, compressed
    broken = tmp_path / "broken.tar.zst"
    broken.write_bytes(zst.read_bytes()[: zst.stat().st_size // 2])
    result = lpm("inspect", str(broken))
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr.startswith(f"lpm: archive {broken}: "), result.stderr
