"""Helpers for tests: the real ``lpm`` command line, run as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def lpm(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lpm`` command line as an operator would."""
    result = subprocess.run([sys.executable, "-m", "watcher", *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and result.returncode != 0:
        raise AssertionError(f"lpm {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result
