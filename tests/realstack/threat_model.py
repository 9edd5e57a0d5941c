"""The agent's permissions as docs/threat-model.md lists them: the table the RBAC tests hold deploy/ to."""

from __future__ import annotations

from lab.controlplane import REPO

THREAT_MODEL = REPO / "docs" / "threat-model.md"
HEADING = "## The agent's permissions"
CLUSTER = "cluster"  # granted in every namespace (ClusterRole lpm-agent)
LPM = "lpm"  # granted in lpm's namespace only (Role lpm-agent-leases)

Grant = tuple[str, str, str, str]
"""(apiGroup, resource[/subresource], verb, where): where is CLUSTER or LPM."""


def permissions(text: str | None = None) -> set[Grant]:
    """Every (group, resource, verb, where) the table under HEADING lists; ``text`` defaults to the page."""
    if text is None:
        text = THREAT_MODEL.read_text()
    _, found, rest = text.partition(f"\n{HEADING}\n")
    assert found, f"{THREAT_MODEL.name} has no section {HEADING!r}"
    rows = []
    for line in rest.splitlines():
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, separator, *body = rows
    assert header[:4] == ["group", "resource", "verbs", "where"], header
    assert set("".join(separator)) <= {"-", " "}, separator
    assert body, "the permissions table is empty"
    grants: set[Grant] = set()
    for group, resources, verbs, where, *_ in body:
        assert where in (CLUSTER, LPM), where
        for resource in resources.split(","):
            for verb in verbs.split(","):
                grants.add(("" if group == "core" else group, resource.strip(), verb.strip(), where))
    return grants
