"""Server processes the harness starts (etcd, kube-apiserver, a registry, containerd): each on a free
loopback port or its own socket, its output in a log file, stopped in order, and killed by the kernel
if the process that started it dies first."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
_STOP_TIMEOUT = 10.0  # seconds of grace after SIGTERM before SIGKILL


class ServerError(Exception):
    """A server exited, or was not ready in time; the message carries the end of its log."""


def free_port() -> int:
    # The port is released before the server binds it; another process could take it in between, which on
    # a test machine is rare enough that a clear start-up error (with the log) is the right answer.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the starting process is killed (SIGKILL, OOM, a CI
    # timeout) the kernel kills the server too, instead of leaving it running for the next session.
    # (Strictly, when the *thread* that started it ends: start servers from a long-lived thread.)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ServerProcess:
    """One server process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.log_file = log_file
        self._log: IO[bytes] = log_file.open("wb")
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C in the terminal reaches the harness, which then stops us in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def check_running(self) -> None:
        code = self._proc.poll()
        if code is not None:
            raise ServerError(f"{self.name} exited with code {code}:\n{self.log_tail()}")

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_running()
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
