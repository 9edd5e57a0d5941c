"""Helpers for tests: the real ``lpm`` command line, run as an operator runs it; real special files."""

from __future__ import annotations

import os
import pty
import select
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def lpm(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lpm`` command line as an operator would."""
    result = subprocess.run([sys.executable, "-m", "watcher", *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and result.returncode != 0:
        raise AssertionError(f"lpm {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


KINDS = ["fifo", "socket", "device", "directory", "symlink to a fifo", "symlink to a device"]
WORDS = {"fifo": "is a FIFO", "socket": "is a socket", "device": "is a character device",
         "directory": "is a directory", "symlink to a fifo": "is a symlink",
         "symlink to a device": "is a symlink"}


@contextmanager
def planted(path: Path, kind: str) -> Iterator[Path]:
    """Make ``path`` a ``kind`` (a real FIFO, a listening socket, /dev/null's device node...)."""
    listener = None
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "socket":
        # Bound under a short name (AF_UNIX paths are short) and moved into place.
        short = Path(tempfile.mkdtemp(prefix="lpm-"))
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(short / "s"))
        listener.listen()
        os.rename(short / "s", path)
        short.rmdir()
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    elif kind == "directory":
        path.mkdir(mode=0o700)
    elif kind == "symlink to a fifo":
        os.mkfifo(path.with_name(path.name + ".target"), 0o600)
        path.symlink_to(path.name + ".target")
    else:
        os.mknod(path.with_name(path.name + ".target"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        path.symlink_to(path.name + ".target")
    try:
        yield path
    finally:
        if listener is not None:
            listener.close()


def within(seconds: float, call: Callable[[], object]) -> object:
    """``call()`` in a thread; its result or exception, or an AssertionError if it is still blocked."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # handed to the test thread to judge  # noqa: BLE001
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]


def run_in_pty(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdout (stderr too), as a person at a shell would."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=max(1.0, deadline - time.monotonic())), output.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
