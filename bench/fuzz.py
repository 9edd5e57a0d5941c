"""Property-based fuzzing at scale: tests/fuzzing.py's targets, 10,000 cases each by default.

    .venv/bin/python bench/fuzz.py [--cases 10000] [--target NAME ...] [--seed 13]

Targets: the tar scanner (any chunking), identity from spec.dump and the archive name, the
store's manifest, marker and ledger parsing (through catalog.scan, catalog.find and the
ledger on a real store), artifact URI parsing, the layer writer (write_image on a real
file), and the whole ingest (a fuzzed kubelet archive into a real store). Every case must
end in success or one LpmError, never another exception, never a path outside the store,
never a partial commit. Prints, per target, the cases run, how many succeeded and how many
were refused, and the time; exits 1 at the first violation (hypothesis prints the shrunk input).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from tests.fuzzing import TARGETS, outcomes  # noqa: E402


def _counting(check, calls):  # type: ignore[no-untyped-def]
    def counted(case):  # type: ignore[no-untyped-def]
        calls["cases"] += 1
        check(case)
    return counted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    failed = False
    for name in args.target or list(TARGETS):
        strategy, check = TARGETS[name]
        calls = Counter[str]()
        counted = _counting(check, calls)

        before = Counter(outcomes)
        started = time.monotonic()
        run = seed(args.seed)(settings(max_examples=args.cases, deadline=None, database=None,
                                       phases=[Phase.explicit, Phase.generate, Phase.shrink],
                                       suppress_health_check=list(HealthCheck))(given(strategy)(counted)))
        try:
            run()
        except Exception as err:  # the violation, already printed with its input by hypothesis  # noqa: BLE001
            print(f"{name}: VIOLATION after {calls['cases']} cases: {type(err).__name__}: {err}", flush=True)
            failed = True
            continue
        seen = Counter(outcomes)
        seen.subtract(before)
        split = ", ".join(f"{key} {count}" for key, count in sorted(seen.items()) if count)
        print(f"{name}: {calls['cases']} cases in {time.monotonic() - started:.0f} s, no violation ({split})",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
