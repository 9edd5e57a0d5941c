"""The pure parts of lpm inspect, table by table: CRIU's framing, and which sockets a restore breaks."""

from __future__ import annotations

import struct

import pytest

from watcher.inspect import criu
from watcher.inspect.model import Inspection, Socket, TcpConnection, established_tcp


def _image(kind: str, *messages: bytes, common: bool = True) -> bytes:
    head = (struct.pack("<I", criu.magic("IMG_COMMON")) if common else b"") + struct.pack("<I", criu.magic(kind))
    return head + b"".join(struct.pack("<I", len(m)) + m for m in messages)


def _pstree(pid: int, ppid: int) -> bytes:
    entry = criu.message("pstree", "pstree_entry")(pid=pid, ppid=ppid, pgid=1, sid=1)
    data: bytes = entry.SerializeToString()
    return data


def test_an_image_decodes_into_its_entries():
    cls = criu.message("pstree", "pstree_entry")
    for common in (True, False):
        entries = criu.decode("t", _image("PSTREE", _pstree(1, 0), _pstree(7, 1), common=common), "PSTREE", cls)
        assert [(e.pid, e.ppid) for e in entries] == [(1, 0), (7, 1)]
    assert criu.decode("t", _image("PSTREE"), "PSTREE", cls) == []


def test_the_pagemap_head_comes_first():
    head = criu.message("pagemap", "pagemap_head")(pages_id=3).SerializeToString()
    entry = criu.message("pagemap", "pagemap_entry")(vaddr=0x1000, compat_nr_pages=2, nr_pages=2).SerializeToString()
    first, second = criu.decode("t", _image("PAGEMAP", head, entry), "PAGEMAP",
                                criu.message("pagemap", "pagemap_entry"), criu.message("pagemap", "pagemap_head"))
    assert (first.pages_id, second.vaddr, second.nr_pages) == (3, 0x1000, 2)


@pytest.mark.parametrize("data, words", [
    (b"\x01\x02", "too short for a CRIU image"),
    (struct.pack("<I", 0x54564319), "ends inside its magic"),
    (_image("CORE", b""), "is not CRIU's PSTREE"),
    (_image("PSTREE") + b"\x05\x00", "ends inside the length of entry 0"),
    (_image("PSTREE") + struct.pack("<I", 100) + b"x" * 10, "entry 0 is cut short (10 of 100 bytes)"),
    (_image("PSTREE") + struct.pack("<I", criu.ENTRY_CAP + 1), "over the"),
    (_image("PSTREE") + struct.pack("<I", 3) + b"\xff\xff\xff", "is not a valid pstree_entry"),
])
def test_damaged_images_are_named(data, words):
    with pytest.raises(criu.ImageDecodeError, match="^where: ") as err:
        criu.decode("where", data, "PSTREE", criu.message("pstree", "pstree_entry"))
    assert words in str(err.value)


def _inspection(*sockets: Socket) -> Inspection:
    return Inspection("t", "", "", "", "", "", "", "", "", None, 0, 0, (), (), tuple(sockets), (), None)


@pytest.mark.parametrize("sock, breaks", [
    (Socket(1, 3, "INETSK", "IPv4", "STREAM", "TCP", "ESTABLISHED", "10.0.0.1", 40000, "10.0.0.2", 443), True),
    (Socket(1, 3, "INETSK", "IPv6", "STREAM", "TCP", "ESTABLISHED", "::1", 40000, "::1", 80), True),
    (Socket(1, 3, "INETSK", "IPv4", "STREAM", "TCP", "LISTEN", "0.0.0.0", 80), False),
    (Socket(1, 3, "INETSK", "IPv4", "STREAM", "TCP", "CLOSE_WAIT", "10.0.0.1", 40000, "10.0.0.2", 443), False),
    # A connected UDP socket reports state 1 too: there is no connection to lose.
    (Socket(1, 3, "INETSK", "IPv4", "DGRAM", "UDP", "ESTABLISHED", "10.0.0.1", 5353, "10.0.0.2", 53), False),
    (Socket(1, 3, "UNIXSK", "UNIX", "STREAM", "", "ESTABLISHED", "/run/x.sock"), False),
])
def test_only_established_tcp_connections_break(sock, breaks):
    connections = established_tcp(_inspection(sock))
    expected = [TcpConnection(1, 3, sock.family, sock.source, sock.source_port, sock.destination,
                              sock.destination_port)] if breaks else []
    assert connections == expected
    assert sock.established_tcp is breaks


def test_a_connection_prints_its_endpoints():
    assert str(TcpConnection(7, 4, "IPv6", "::1", 5000, "::ffff:10.0.0.2", 443)) == \
        "pid 7 fd 4: [::1]:5000 -> [::ffff:10.0.0.2]:443"
    assert str(TcpConnection(7, 4, "IPv4", "10.0.0.1", 5000, "10.0.0.2", 443)) == \
        "pid 7 fd 4: 10.0.0.1:5000 -> 10.0.0.2:443"
