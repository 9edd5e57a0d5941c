"""Whether a migration may checkpoint, from the target's Lease: the table."""

from datetime import UTC, datetime, timedelta

import pytest

from watcher.cluster.admission import admit
from watcher.cluster.presence import lease_body
from watcher.runtime.capability import Capability, Verdict

NOW = datetime(2026, 12, 1, 18, 0, 0, tzinfo=UTC)
NS = "lpm-system"


def _lease(verdict: Verdict, reason: str, renewed: datetime = NOW) -> dict:
    # The Lease exactly as the target's agent writes it.
    return lease_body(NS, "node-b", Capability(verdict, "containerd", "2.3.7", reason), renewed)


@pytest.mark.parametrize("lease, allowed, reason", [
    (None, False, f"no lpm agent on node-b: no Lease {NS}/lpm-node-node-b"),
    (_lease(Verdict.CAPABLE, "containerd 2.3.7, x=true"), True, ""),
    (_lease(Verdict.NOT_CAPABLE, "containerd 2.4.2, containerd 2.4 removed restore"), False,
     "target node node-b cannot restore checkpoints: containerd 2.4.2, containerd 2.4 removed restore"),
    (_lease(Verdict.UNKNOWN, "no runtime name or version in the Node's status"), True,
     "target node node-b may not restore checkpoints: its capability is unknown "
     "(no runtime name or version in the Node's status)"),
    # Live: renewed within its 90 s (and 5 s of clock skew).
    (_lease(Verdict.CAPABLE, "ok", NOW - timedelta(seconds=94)), True, ""),
    (_lease(Verdict.CAPABLE, "ok", NOW - timedelta(seconds=96)), False,
     f"no live lpm agent on node-b: Lease {NS}/lpm-node-node-b last renewed 2026-12-01T17:58:24Z, over 90 s ago"),
    # Stale wins over what it says: a dead agent's last word is not evidence.
    (_lease(Verdict.NOT_CAPABLE, "x", NOW - timedelta(hours=1)), False,
     f"no live lpm agent on node-b: Lease {NS}/lpm-node-node-b last renewed 2026-12-01T17:00:00Z, over 90 s ago"),
    ({"metadata": {"name": "lpm-node-node-b"}, "spec": {}}, False,
     f"no live lpm agent on node-b: Lease {NS}/lpm-node-node-b has no renewTime"),
    # Someone else's Lease without lpm's annotations: alive, capability unknown.
    ({"metadata": {}, "spec": {"renewTime": "2026-12-01T17:59:59.000000Z", "leaseDurationSeconds": 40}}, True,
     "target node node-b may not restore checkpoints: its capability is unknown (no reason given)"),
])
def test_admission(lease, allowed, reason):
    admission = admit("node-b", NS, lease, NOW)
    assert admission.allowed is allowed, admission
    assert admission.reason == reason, admission
