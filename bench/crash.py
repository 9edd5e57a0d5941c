"""SIGKILL crash trials at scale: tests/test_crash.py's check, run many more times than CI does.

    .venv/bin/python bench/crash.py [--trials 200] [--seed 20261125]

Each trial adds two ~48 MiB kubelet archives, starts the standalone agent, kills it with SIGKILL
at a random moment of an ingest, and checks the store: ``lpm store ls`` shows only complete
checkpoints, each byte-exact through ``lpm store get``. After the last trial one more agent
ingests the rest, and every archive must be in the store exactly once. Prints the trials run,
how many kills landed with a dump half-written, and the time taken; exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_crash import crash_trials  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20261125)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lpm-crash-") as tmp:
        root = Path(tmp)
        kube_dir = root / "kubelet-checkpoints"
        kube_dir.mkdir(mode=0o700)
        (root / "work").mkdir()
        try:
            killed = crash_trials(args.trials, kube_dir, root / "store", root / "work", args.seed)
        except AssertionError as err:
            print(f"crash trials: FAILED: {err}", file=sys.stderr)
            return 1
    print(f"crash trials: {args.trials} SIGKILLs, {killed} with a dump half-written; store consistent after "
          f"each, every archive stored exactly once at the end ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
