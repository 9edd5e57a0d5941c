"""The CRI probe against a real containerd v2.3.7 (scripts/restore/build-containerd.sh), with and without
the restore opt-in in its CRI config: what the agent reports is what the daemon itself says."""

import asyncio
import re

import pytest

from lab.images import write_oci_archive
from tests.restore.containerd import run_containerd
from watcher.runtime import cri, images
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


def test_an_image_is_pulled_only_when_the_runtime_lacks_it_and_a_failed_pull_names_image_and_runtime(tmp_path):
    """The destination's early pull (watcher.restore.early) through a real containerd's CRI image service."""
    archive = write_oci_archive(tmp_path / "held.tar", "localhost/lpm/held:1", b"#!/bin/true\n", ["/bin/true"])
    with run_containerd() as daemon:
        endpoint = f"unix://{daemon.address}"
        daemon.ctr("images", "import", str(archive))
        assert asyncio.run(images.pull_if_absent(endpoint, "localhost/lpm/held:1", timeout=30)) is False
        # Not held, and nowhere to pull it from: the runtime's own reason, with the image and where it was asked.
        missing = f"127.0.0.1:9/lpm/none@sha256:{'0' * 64}"
        with pytest.raises(images.PullFailed, match=rf"image {re.escape(missing)} on the runtime at "
                                                    rf"{re.escape(endpoint)}: \w+: .*"):
            asyncio.run(images.pull_if_absent(endpoint, missing, timeout=30))
    with pytest.raises(images.PullFailed, match="UNAVAILABLE"):
        asyncio.run(images.pull_if_absent(f"unix://{tmp_path / 'no.sock'}", "localhost/lpm/held:1", timeout=2))
