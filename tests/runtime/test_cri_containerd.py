"""The CRI probe against a real containerd v2.3.7 (scripts/restore/build-containerd.sh), with and without
the restore opt-in in its CRI config: what the agent reports is what the daemon itself says."""

import asyncio

import pytest

from tests.restore.containerd import run_containerd
from watcher.runtime import cri
from watcher.runtime.capability import RuntimeFacts, Verdict, decide, parse_config, parse_version

pytestmark = pytest.mark.realstack
OPT_IN = "enable_experimental_restore_via_create"


def _assess(address: str) -> tuple[cri.RuntimeReport, object]:
    report = asyncio.run(cri.query(f"unix://{address}"))
    return report, decide(RuntimeFacts(report.name, report.version, parse_config(report.info), "CRI"))


@pytest.mark.parametrize("opt_in, verdict, reason", [
    (True, Verdict.CAPABLE, f"containerd 2.3.7, {OPT_IN}=true"),
    (False, Verdict.NOT_CAPABLE, f"containerd 2.3.7, {OPT_IN}=false"),
    (None, Verdict.NOT_CAPABLE, f"containerd 2.3.7, {OPT_IN}=false"),  # the default is off
])
def test_containerd_says_whether_it_restores_through_create(opt_in, verdict, reason):
    with run_containerd(restore_via_create=opt_in) as daemon:
        report, capability = _assess(daemon.address)
    # A release says v2.3.7; built from the module (no version ldflags) it says 2.3.7+unknown.
    assert (report.name, parse_version(report.version)) == ("containerd", (2, 3, 7)), report
    config = parse_config(report.info)
    assert config is not None and config.get("enableExperimentalRestoreViaCreate") is bool(opt_in), report.info
    assert (capability.verdict, capability.reason) == (verdict, reason), capability  # type: ignore[attr-defined]


def test_a_socket_nobody_serves_is_unreachable_with_where(tmp_path):
    missing = tmp_path / "no.sock"
    with pytest.raises(cri.RuntimeUnreachable, match=f"CRI at unix://{missing}: UNAVAILABLE"):
        asyncio.run(cri.query(f"unix://{missing}", timeout=2))
