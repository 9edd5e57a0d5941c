"""A large checkpoint through ingest, ``store get`` and the streamed restore into a real containerd, with
memory flat: bench/large.py at 1 GiB against 64 MiB (the bench's own default is 8 GiB; its figures are in
the notes). Needs root for containerd; CI runs as root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_gibibyte_checkpoint_costs_no_more_memory_than_a_small_one(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(REPO / "bench" / "large.py"), "--size", "1G", "--baseline", "64M",
                          "--work", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-3000:]}"
    [verdict] = [line for line in run.stdout.splitlines() if line.startswith("peak RSS growth")]
    assert "(flat:" in verdict, run.stdout
    for step in ("ingest", "get", "import"):
        assert sum(f" MiB {step}: " in line for line in run.stdout.splitlines()) == 2, run.stdout  # both sizes
