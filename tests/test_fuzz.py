"""Property-based fuzzing of every parser of untrusted input: a few hundred cases per target in CI.

The targets and their contract are in tests/fuzzing.py; bench/fuzz.py runs 10,000+ per target.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.fuzzing import TARGETS, outcomes

CASES = int(os.environ.get("LPM_FUZZ_CASES", "300"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_input_ends_in_success_or_one_lpm_error(target: str) -> None:
    strategy, check = TARGETS[target]
    before = sum(n for key, n in outcomes.items() if key.startswith(target.split("+")[0]))
    run = settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
                   phases=[Phase.explicit, Phase.generate, Phase.shrink],
                   suppress_health_check=list(HealthCheck))(given(strategy)(check))
    run()
    seen = {key: n for key, n in outcomes.items() if key.startswith(target.split("+")[0])}
    # Not vacuous: both ends reached (every target has inputs that succeed and inputs refused).
    assert any(k.endswith(" ok") for k in seen) and any(k.endswith(" refused") for k in seen), seen
    assert sum(seen.values()) - before >= CASES
