"""The established TCP connections a checkpoint holds, read by the ingest that stores it (watcher/cluster/
sockets.py): on a real CRIU archive, in the ingest's single pass, and the warning made of them. On real nodes,
through a migration: tests/realstack/test_real_nodes.py."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from tests.inspect.fixtures import Archives
from watcher.cluster.sockets import Sockets, warning
from watcher.ingest import service
from watcher.inspect.model import TcpConnection
from watcher.store import fsio
from watcher.zstream import CompressionSettings


def test_the_ingest_finds_the_established_connections_of_a_real_checkpoint(archives: Archives, tmp_path: Path) -> None:
    kube_dir = tmp_path / "kubelet"
    kube_dir.mkdir()
    archive = Path(shutil.copy(archives.tcp, kube_dir))
    reading = Sockets(archive.name)
    root = fsio.open_root(tmp_path / "store", create=True)
    try:
        service.stage_archive(root, archive, "node-a", None, CompressionSettings(), threading.Event(),
                              also=reading.feed)
    finally:
        os.close(root)
    found = reading.connections()
    assert not isinstance(found, str), found
    # Both ends of nc -l <- nc over loopback, each in its own process.
    assert sorted((c.local_port == 7000, c.remote_port == 7000) for c in found) == [(False, True), (True, False)]
    # nc -l listens dual-stack: its end is the IPv4-mapped address.
    assert {c.local_address.removeprefix("::ffff:") for c in found} == {"127.0.0.1"}
    assert len({c.pid for c in found}) == 2
    said = warning({"talker": found})
    assert said is not None and said.startswith("the checkpoint holds 2 established TCP connections (talker: pid ")
    assert "127.0.0.1:7000" in said and said.endswith("a restore closes or breaks them, so their peers must reconnect")


def test_an_archive_the_reader_cannot_read_loses_the_warning_not_the_checkpoint() -> None:
    reading = Sockets("noise.tar")
    reading.feed(memoryview(os.urandom(4096)))
    assert isinstance(reading.connections(), str) and reading.failed


def _connection(port: int) -> TcpConnection:
    return TcpConnection(1, 3 + port, "IPV4", "10.0.0.5", 40000 + port, "10.0.0.9", 5432)


def test_the_warning_names_a_few_and_counts_the_rest() -> None:
    assert warning({}) is None and warning({"app": (), "db": "ArchiveError: not a tar"}) is None
    one = warning({"app": (_connection(0),)})
    assert one == ("the checkpoint holds 1 established TCP connection (app: pid 1 fd 3: 10.0.0.5:40000 -> "
                   "10.0.0.9:5432): a restore closes or breaks them, so their peers must reconnect")
    many = warning({"db": tuple(_connection(i) for i in range(4)), "app": tuple(_connection(i) for i in range(3))})
    assert many is not None and many.startswith("the checkpoint holds 7 established TCP connections (app: pid 1")
    assert many.count(" -> ") == 5 and " and 2 more): " in many
