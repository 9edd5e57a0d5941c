"""``lpm agent`` as a real child process of a test or a demo, its JSON log lines collected."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lab.controlplane import REPO


class AgentProcess:
    """``lpm agent`` (standalone unless made with ``cluster``) as a real child process, its JSON log lines collected."""

    def __init__(self, *args: str, standalone: bool = True, wrapper: Sequence[str] = ()) -> None:
        """``wrapper``: a command the agent runs under, e.g. setpriv dropping capabilities."""
        mode = ["--standalone"] if standalone else []
        # A local store of its own unless the caller names one: the default is the machine's /var/lib/lpm.
        # Removed once the agent has exited: nobody else knows where it is.
        self._own_local = None if "--local-store" in args else Path(tempfile.mkdtemp(prefix="lpm-local-store-"))
        local = [] if self._own_local is None else ["--local-store", str(self._own_local)]
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "watcher", "agent", *mode, *local, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
            # Health endpoints on a free port: several agents run at once, and 8080 may be taken.
            env={**os.environ, "PYTHONUNBUFFERED": "1", "LPM_HEALTH_PORT": "0"},
        )
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.raw.append(line)
                try:
                    self.lines.append(json.loads(line))
                except json.JSONDecodeError:
                    self.lines.append({"msg": "<not JSON>", "line": line})
                self._changed.notify_all()

    @classmethod
    def cluster(cls, *args: str) -> AgentProcess:
        return cls(*args, standalone=False)

    def died(self) -> str | None:
        """Why the agent is gone, with the end of its log; None while it runs."""
        if self.proc.poll() is None:
            return None
        return f"exited ({self.proc.returncode}); its log:\n" + "".join(self.raw[-20:])

    def tail(self, lines: int = 15) -> str:
        """The end of its log."""
        return "".join(self.raw[-lines:])

    def peak_rss(self) -> int:
        """Its resident set's high-water mark so far, in bytes (VmHWM; with no wrapper, the agent itself)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmHWM for pid {self.proc.pid}")

    def logs(self, msg: str) -> list[dict]:
        with self._changed:
            return [line for line in self.lines if line.get("msg") == msg]

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError("agent never logged what was awaited; its log:\n" + "".join(self.raw))
                self._changed.wait(min(left, 0.2))

    def wait_logged(self, msg: str, count: int = 1, timeout: float = 30) -> list[dict]:
        self.wait_for(lambda lines: sum(1 for line in lines if line.get("msg") == msg) >= count, timeout)
        return self.logs(msg)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Signal the agent; returns (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        elapsed = time.monotonic() - started
        self._reader.join(timeout=5)
        self._remove_own_local()
        return code, elapsed

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        self._remove_own_local()

    def _remove_own_local(self) -> None:
        if self._own_local is not None:
            shutil.rmtree(self._own_local, ignore_errors=True)

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._remove_own_local()
