"""``lpm inspect`` against the oracle, checkpointctl itself, on real archives made by the lab's CRIU.

Both read the same archive; checkpointctl (v1.5.0, built from the Go module proxy) extracts it and reads
CRIU's images with go-criu, lpm streams it once. They must agree on the process tree (pids, parents,
commands, command lines), every process's file descriptors (numbers, types, paths, cwd and root), its
sockets (protocol, state, addresses, ports) and the container's mounts, and on the sizes both report.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.inspect.fixtures import Archives
from tests.support import lpm
from watcher.inspect.model import established_tcp
from watcher.inspect.sources import inspect_archive


def _checkpointctl(binary: Path, archive: Path) -> dict[str, Any]:
    result = subprocess.run([str(binary), "inspect", "--ps-tree-cmd", "--files", "--sockets", "--mounts", "--stats",
                             "--format", "json", str(archive)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"checkpointctl inspect failed: {result.stderr}"
    (only,) = json.loads(result.stdout)
    return only


def _lpm(archive: Path, *flags: str) -> dict[str, Any]:
    result = lpm("inspect", str(archive), "-o", "json", *flags)
    assert result.returncode == 0, f"lpm inspect failed: {result.stderr}"
    (only,) = json.loads(result.stdout)
    return only


@pytest.fixture(scope="module")
def both(archives: Archives, checkpointctl: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return _lpm(archives.tcp), _checkpointctl(checkpointctl, archives.tcp)


def _tree(node: dict[str, Any], parent: int = 0) -> list[tuple[int, int, str, str]]:
    """checkpointctl's nested tree, flattened: (pid, parent, command, cmdline)."""
    rows = [(node["pid"], parent, node["command"], node.get("cmdline", ""))]
    for child in node.get("children", []):
        rows += _tree(child, node["pid"])
    return rows


def test_the_process_tree_agrees(both):
    ours, theirs = both
    expected = sorted(_tree(theirs["process_tree"]))
    # checkpointctl joins the arguments with a space after each (strings.Split on NUL, then Join).
    got = sorted((p["pid"], p["ppid"], p["command"], " ".join(p["cmdline"]) + " ") for p in ours["processes"])
    assert got == expected, f"lpm: {got}\ncheckpointctl: {expected}"
    assert len(got) >= 6, f"the workload has a shell, two nc, a sleep and the loop's subshell: {got}"
    assert all(p["state"] == "Alive" for p in ours["processes"]), ours["processes"]


def test_the_file_descriptors_agree(both):
    ours, theirs = both
    expected = {(node["pid"], f["fd"], f["type"], f["path"]) for node in theirs["file_descriptors"]
                for f in node["open_files"]}
    # checkpointctl's "fd" is "TYPE N" ("REG 3"), and plain "cwd" / "root" for those two.
    got = {(f["pid"], f"{f['type']} {f['fd']}".strip(), f["type"], f["path"]) for f in ours["files"]}
    assert got == expected, f"only lpm: {sorted(got - expected)}\nonly checkpointctl: {sorted(expected - got)}"
    paths = {f["path"] for f in ours["files"]}
    assert {"/data/log", "/data/received", "/dev/null"} <= paths, paths
    assert any(path.startswith("pipe[") for path in paths), paths


def _go_criu_ip(address: str) -> str:
    """The address as go-criu v8.2.0 renders it (crit/utils.go processIP): IPv4 right; IPv6 written over the
    first four bytes for each of its four words, so only the last word remains, at the front."""
    if ":" not in address:
        return address
    words = struct.unpack("<4I", socket.inet_pton(socket.AF_INET6, address))
    return socket.inet_ntop(socket.AF_INET6, struct.pack("<I", words[-1]) + bytes(12))


def test_the_sockets_agree_and_established_tcp_is_flagged(both):
    ours, theirs = both
    expected = sorted((node["pid"], s["protocol"], s["data"]["state"], s["data"]["src"], s["data"]["src_port"],
                       s["data"]["dst"], s["data"]["dst_port"]) for node in theirs["sockets"]
                      for s in node["open_sockets"])
    got = sorted((s["pid"], s["protocol"], s["state"], _go_criu_ip(s["source"]), s["sourcePort"],
                  _go_criu_ip(s["destination"]), s["destinationPort"]) for s in ours["sockets"])
    assert got == expected, f"lpm: {got}\ncheckpointctl: {expected}"
    established = [s for s in ours["sockets"] if s["state"] == "ESTABLISHED" and s["protocol"] == "TCP"]
    assert len(established) == 2, ours["sockets"]  # both ends of the loopback connection
    assert all(s["establishedTCP"] and not s["survivesRestore"] for s in established), established
    assert sorted((c["localPort"], c["remotePort"]) for c in ours["establishedTCP"]) == \
        sorted((s["sourcePort"], s["destinationPort"]) for s in established), ours["establishedTCP"]
    assert 7000 in {c["localPort"] for c in ours["establishedTCP"]}, ours["establishedTCP"]


def test_the_mounts_agree(both):
    ours, theirs = both
    expected = [(m["destination"], m["type"], m["source"]) for m in theirs["mounts"]]
    got = [(m["destination"], m["type"], m["source"]) for m in ours["mounts"]]
    assert got == expected and "/proc" in {m[0] for m in got}, f"lpm: {got}\ncheckpointctl: {expected}"


def test_the_container_and_sizes_agree(both, archives):
    ours, theirs = both
    assert (ours["container"], ours["image"], ours["containerID"], ours["runtime"], ours["engine"]) == \
        (theirs["container_name"], theirs["image"], theirs["id"], theirs["runtime"], theirs["engine"]), (ours, theirs)
    sizes = theirs["checkpoint_size"]
    assert (ours["sizes"]["memoryPages"], ours["sizes"]["rootfsDiff"]) == \
        (sizes["memory_pages_size"], sizes["root_fs_diff_size"]), (ours["sizes"], sizes)
    assert ours["sizes"]["archive"] == archives.tcp.stat().st_size
    # Every dumped page is some process's: the pagemaps' pages add up to the pages images.
    assert sum(p["memory"]["bytes"] for p in ours["processes"]) == ours["sizes"]["memoryPages"], ours["processes"]
    assert ours["criu"]["imageVersion"] == 2, ours["criu"]
    stats, theirs_stats = ours["statistics"], theirs["statistics"]
    assert (stats["freezingTime"], stats["frozenTime"], stats["memdumpTime"], stats["memwriteTime"],
            stats["pagesScanned"], stats["pagesWritten"]) == \
        (theirs_stats["freezing_time"], theirs_stats["frozen_time"], theirs_stats["memdump_time"],
         theirs_stats["memwrite_time"], theirs_stats["pages_scanned"], theirs_stats["pages_written"]), (stats, theirs)
    assert stats["pagesWritten"] * 4096 == ours["sizes"]["memoryPages"], (stats, ours["sizes"])


def test_the_rootfs_diff_lists_what_the_container_changed(both):
    ours, _ = both
    diff = ours["rootfsDiff"]
    changed = {c["path"]: c for c in diff["changed"]}
    assert changed["data/greeting"] == {"path": "data/greeting", "kind": "file", "size": 6}, diff
    assert "data/log" in changed and changed["data"]["kind"] == "directory", diff
    assert diff["deleted"] == ["/etc/motd"], diff


def test_environment_and_memory_only_when_asked(archives):
    plain = lpm("inspect", str(archives.tcp), "-o", "json")
    text = lpm("inspect", str(archives.tcp))
    for output in (plain.stdout, text.stdout):
        assert "hunter2" not in output and "HOSTNAME=" not in output, output[-3000:]
    assert "environment" not in plain.stdout and '"memory": [' not in plain.stdout
    with_env = _lpm(archives.tcp, "--env")
    shell = next(p for p in with_env["processes"] if p["pid"] == 1)
    assert "LPM_TEST_SECRET=hunter2-do-not-print" in shell["environment"], shell
    nc = next(p for p in with_env["processes"] if p["cmdline"][1:3] == ["nc", "-l"])
    dumped = _lpm(archives.tcp, "--memory", str(nc["pid"]), "--memory-limit", str(nc["memory"]["bytes"]))
    regions = [r for r in dumped["memory"] if r["pid"] == nc["pid"]]
    contents = b"".join(base64.b64decode(r["base64"]) for r in regions)
    assert len(contents) == nc["memory"]["bytes"], (len(contents), nc["memory"])
    # Its own stack holds its arguments, as the kernel laid them out.
    assert b"nc\0-l\0-p\x007000\0" in contents, len(contents)
    assert all("environment" not in p for p in dumped["processes"]), "--memory must not bring --env along"
    nobody = _lpm(archives.tcp, "--memory", "99999")
    assert "memory" not in nobody and nobody["notes"] == [
        "pid 99999: no memory read for --memory (no such process, or no pages of it dumped)"], nobody["notes"]


def test_the_library_call_gives_the_established_connections(archives):
    inspection = inspect_archive(archives.tcp)
    connections = established_tcp(inspection)
    assert len(connections) == 2, connections
    listener = next(c for c in connections if c.local_port == 7000)
    client = next(c for c in connections if c.remote_port == 7000)
    # The two ends of one connection, each seen from its own process.
    assert listener.remote_port == client.local_port and listener.pid != client.pid, connections
    assert (client.local_address, client.remote_address) == ("127.0.0.1", "127.0.0.1"), client
    assert str(listener) == f"pid {listener.pid} fd {listener.fd}: [::ffff:127.0.0.1]:7000 -> " \
                            f"[::ffff:127.0.0.1]:{client.local_port}", str(listener)


def test_the_text_form_reads_as_a_report(archives):
    result = lpm("inspect", str(archives.tcp))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("container    talker", "engine       Podman, runtime crun", "processes", "open files",
                     "sockets", "will not survive a restore", "2 established TCP connection(s)", "mounts",
                     "root-filesystem diff", "deleted              /etc/motd", "nc -l -p 7000"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
