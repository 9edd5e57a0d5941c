"""The README's run command, end to end: ``scripts/run --standalone``.

The live path of ``scripts/run`` (scripts/demo_live.py) runs lab/live.py, as tests/realstack/test_real_nodes.py does.
"""

from __future__ import annotations

import subprocess

from tests.support import REPO

RUN = str(REPO / "scripts" / "run")


def test_standalone_demo_ingests_and_reads_back() -> None:
    result = subprocess.run([RUN, "--standalone", "--memory-mib", "8"], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no live migration here" not in result.stderr  # forced, so no reason is given
    assert '"msg": "archive ingested"' in result.stdout
    assert "== agent exited 0" in result.stdout
    assert "byte-identical to the kubelet archive" in result.stdout

