"""``lpm inspect``'s two outputs, from an ``Inspection``: JSON for scripts, text for people. No I/O but the
string returned; the CLI and the kubectl plugin print it.

The JSON is a list, one object per container archive inspected (as ``checkpointctl inspect --format json``
prints one). Keys are stable: scripts rely on them. ``environment`` and ``memory`` appear only when the
caller asked for them (``--env``, ``--memory PID``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from watcher.inspect.model import Inspection, Process, established_tcp

TEXT_FILE_LIMIT = 50
"""Changed files listed in the text form (all of them are in the JSON)."""


def to_json(inspections: Sequence[Inspection]) -> str:
    return json.dumps([as_dict(inspection) for inspection in inspections], indent=2, sort_keys=False)


def as_dict(inspection: Inspection) -> dict[str, Any]:
    diff = inspection.rootfs_diff
    result: dict[str, Any] = {
        "source": inspection.source,
        "engine": inspection.engine,
        "runtime": inspection.runtime,
        "container": inspection.container,
        "containerID": inspection.container_id,
        "image": inspection.image,
        "created": inspection.created,
        "checkpointed": inspection.checkpointed,
        "criu": {"version": inspection.criu_version, "imageVersion": inspection.criu_image_version},
        "sizes": {"archive": inspection.archive_size, "memoryPages": inspection.memory_pages_size,
                  "rootfsDiff": diff.size if diff is not None else 0},
        "processes": [_process(process) for process in inspection.processes],
        "files": [{"pid": f.pid, "fd": f.fd, "type": f.type, "path": f.path} for f in inspection.files],
        "sockets": [{
            "pid": s.pid, "fd": s.fd, "kind": s.kind, "family": s.family, "type": s.type, "protocol": s.protocol,
            "state": s.state, "source": s.source, "sourcePort": s.source_port, "destination": s.destination,
            "destinationPort": s.destination_port, "inode": s.inode,
            "establishedTCP": s.established_tcp, "survivesRestore": not s.established_tcp,
        } for s in inspection.sockets],
        "establishedTCP": [{
            "pid": c.pid, "fd": c.fd, "family": c.family, "localAddress": c.local_address, "localPort": c.local_port,
            "remoteAddress": c.remote_address, "remotePort": c.remote_port,
        } for c in established_tcp(inspection)],
        "mounts": [{"destination": m.destination, "type": m.type, "source": m.source} for m in inspection.mounts],
        "rootfsDiff": None if diff is None else {
            "size": diff.size,
            "changed": [{"path": c.path, "kind": c.kind, "size": c.size} for c in diff.changed],
            "deleted": list(diff.deleted),
        },
        "statistics": None if inspection.statistics is None else {
            "freezingTime": inspection.statistics.freezing_time, "frozenTime": inspection.statistics.frozen_time,
            "memdumpTime": inspection.statistics.memdump_time, "memwriteTime": inspection.statistics.memwrite_time,
            "pagesScanned": inspection.statistics.pages_scanned, "pagesWritten": inspection.statistics.pages_written,
        },
        "notes": list(inspection.notes),
    }
    if inspection.memory:
        result["memory"] = [{"pid": r.pid, "address": r.address, "size": len(r.data),
                             "base64": base64.b64encode(r.data).decode()} for r in inspection.memory]
    return result


def _process(process: Process) -> dict[str, Any]:
    memory = process.memory
    result: dict[str, Any] = {
        "pid": process.pid, "ppid": process.ppid, "pgid": process.pgid, "sid": process.sid,
        "command": process.command, "state": process.state,
        "cmdline": list(process.arguments) if process.arguments is not None else None,
        "memory": None if memory is None else {"pages": memory.pages, "bytes": memory.bytes, "vmas": memory.vmas,
                                               "virtualBytes": memory.virtual_bytes},
    }
    if process.environment is not None:
        result["environment"] = list(process.environment)
    return result


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # not reached


def to_text(inspections: Sequence[Inspection]) -> str:
    return "\n".join(_text(inspection) for inspection in inspections)


def _text(inspection: Inspection) -> str:
    lines = [f"{inspection.source}",
             f"  container    {inspection.container or '-'} ({inspection.container_id or 'no id'})",
             f"  image        {inspection.image or '-'}",
             f"  engine       {inspection.engine or 'unknown'}, runtime {inspection.runtime or 'unknown'}",
             f"  created      {inspection.created or '-'}"]
    if inspection.checkpointed:
        lines.append(f"  checkpointed {inspection.checkpointed}")
    criu_version = inspection.criu_version or "not recorded in the archive"
    lines.append(f"  CRIU         {criu_version}, image format {inspection.criu_image_version}")
    stats = inspection.statistics
    if stats is not None:
        lines.append(f"  dump         frozen {stats.frozen_time / 1000:.1f} ms (freezing "
                     f"{stats.freezing_time / 1000:.1f} ms, memory dump {stats.memdump_time / 1000:.1f} ms, write "
                     f"{stats.memwrite_time / 1000:.1f} ms), {stats.pages_written} of {stats.pages_scanned} pages "
                     "scanned written")
    diff = inspection.rootfs_diff
    lines.append(f"  size         {size(inspection.archive_size)} archive, {size(inspection.memory_pages_size)} "
                 f"memory pages, {size(diff.size) if diff else 'no'} root-filesystem diff")

    lines.append("")
    lines.append(f"processes\n  {'PID':<7} {'STATE':<7} {'MEMORY (DUMPED)':<22} COMMAND")
    children: dict[int, list[Process]] = {}
    pids = {process.pid for process in inspection.processes}
    for process in inspection.processes:
        children.setdefault(process.ppid if process.ppid in pids else 0, []).append(process)

    def tree(ppid: int, depth: int) -> None:
        for process in children.get(ppid, []):
            memory = process.memory
            used = f"{memory.pages} pages ({size(memory.bytes)})" if memory else "no memory"
            command = " ".join(process.arguments) if process.arguments is not None else f"[{process.command}]"
            # The tree shows in the command column: children indented under their parent.
            lines.append(f"  {process.pid:<7} {process.state:<7} {used:<22} {'  ' * depth}{command}")
            for variable in process.environment or ():
                lines.append(f"  {'':<7} {'':<7} {'env':<22} {'  ' * depth}{variable}")
            tree(process.pid, depth + 1)

    tree(0, 0)

    lines.append("")
    lines.append("open files")
    for file in inspection.files:
        lines.append(f"  pid {file.pid:<6} {file.fd:>5}  {file.type or '-':<8} {file.path}")

    lines.append("")
    lines.append("sockets")
    if not inspection.sockets:
        lines.append("  none")
    for sock in inspection.sockets:
        where = sock.source + (f":{sock.source_port}" if sock.source_port else "")
        if sock.destination:
            where += f" -> {sock.destination}:{sock.destination_port}"
        flag = "  ! established TCP: will not survive a restore" if sock.established_tcp else ""
        lines.append(f"  pid {sock.pid:<6} {sock.fd:>5}  {sock.protocol or sock.family:<6} {sock.state:<12} "
                     f"{where}{flag}")
    connections = established_tcp(inspection)
    if connections:
        lines.append(f"  {len(connections)} established TCP connection(s): a restore closes or breaks them")

    lines.append("")
    lines.append("mounts")
    for mount in inspection.mounts:
        lines.append(f"  {mount.destination:<30} {mount.type:<8} {mount.source}")

    lines.append("")
    if diff is None:
        lines.append("root-filesystem diff: none in the archive")
    else:
        lines.append(f"root-filesystem diff: {size(diff.size)}, {len(diff.changed)} changed, {len(diff.deleted)} "
                     "deleted")
        for change in diff.changed[:TEXT_FILE_LIMIT]:
            lines.append(f"  {change.kind:<9} {change.size:>10}  {change.path}")
        if len(diff.changed) > TEXT_FILE_LIMIT:
            lines.append(f"  ... {len(diff.changed) - TEXT_FILE_LIMIT} more (-o json lists them all)")
        for path in diff.deleted:
            lines.append(f"  deleted              {path}")

    for region in inspection.memory:
        lines.append("")
        lines.append(f"memory of pid {region.pid} at {region.address:#x} ({len(region.data)} bytes)")
        for offset in range(0, len(region.data), 16):
            row = region.data[offset : offset + 16]
            printable = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
            lines.append(f"  {region.address + offset:016x}  {row.hex(' '):<47}  {printable}")

    for note in inspection.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"
