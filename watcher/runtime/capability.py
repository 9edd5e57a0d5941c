"""Can this node's container runtime restore a container from a checkpoint image? A pure decision.

What each runtime does, read from its own source:

- containerd restores through CRI ``CreateContainer`` from 2.1 (PR 10365) to 2.3.x; 2.4 removed it.
  Since 2.2.7 and 2.3.4 it does so only when the CRI runtime config says
  ``enable_experimental_restore_via_create = true`` (``[plugins."io.containerd.cri.v1.runtime"]``);
  before those releases the switch did not exist and restore was always on. ``Status`` with
  ``verbose`` returns the effective CRI config as JSON under the info key ``config``: the switch is
  its top-level ``enableExperimentalRestoreViaCreate`` (the runtime config is embedded in it), beside
  ``enableCRIU`` (``false`` turns checkpoint and restore off altogether). Checked in v2.3.7's
  ``internal/cri/config/config.go`` and ``internal/cri/server/status.go``.
- CRI-O restores from checkpoint images since 1.26. Its verbose ``Status`` info ``config`` holds
  ``{"sandboxImage": ..., "crio": <its [crio.runtime] table>}``, JSON keys being the Go field names:
  ``crio.EnableCriuSupport`` is false when CRIU support is off (or no ``criu`` is on its PATH, which
  CRI-O checks at start). Its newer ``[crio.checkpoint_restore] container_level_enabled`` (``none``,
  ``checkpoint_only``, ``checkpoint_restore``; unreleased as of 1.36.3, the newest release read) is
  not part of that table and so not reported: for releases that may have it lpm says "unknown".
- Anything else: "unknown", with the reason.

"Unknown" is not "no": the source agent lets such a migration go on with a warning, and refuses only a
positive "not capable" (or a node without a live lpm agent).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """The values of the Lease annotation ``lpm.my.domain/restore-capable``."""
    CAPABLE = "true"
    NOT_CAPABLE = "false"
    UNKNOWN = "unknown"


_WORDS = {Verdict.CAPABLE: "capable", Verdict.NOT_CAPABLE: "not capable", Verdict.UNKNOWN: "unknown"}


@dataclass(frozen=True)
class Capability:
    verdict: Verdict
    runtime: str
    """"containerd", "cri-o", what another runtime calls itself, or "" when nothing answered."""
    version: str
    reason: str
    """Why, for a person: what was read and what it means."""

    def summary(self) -> str:
        """The /readyz line's text: ``capable (containerd 2.3.7, enable_experimental_restore_via_create=true)``."""
        return f"{_WORDS[self.verdict]} ({self.reason})"


@dataclass(frozen=True)
class RuntimeFacts:
    """What the runtime said about itself."""
    name: str
    version: str
    config: Mapping[str, Any] | None
    """The verbose Status's ``config`` info, parsed; None when not seen (no CRI endpoint)."""
    origin: str
    """Where the facts come from, for the reason: "CRI" or "the Node's status"."""


_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")
_CONTAINERD_OPT_IN = "enable_experimental_restore_via_create"
# The newest CRI-O release read that has no [crio.checkpoint_restore] table: there, CRIU support on
# means restore on. Later ones (and backports) may default to checkpoint_only and do not report it.
_CRIO_BEFORE_LEVELS = (1, 36, 3)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """MAJOR.MINOR.PATCH, ignoring a leading v and what follows (a build from source says 2.3.7+unknown)."""
    match = _VERSION.match(text.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _shown(text: str, version: tuple[int, int, int] | None) -> str:
    return ".".join(map(str, version)) if version else text


def parse_config(info: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The verbose Status's ``config`` entry as JSON, or None when absent or not a JSON object."""
    try:
        config = json.loads(info["config"])
    except (KeyError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def from_node_info(container_runtime_version: str) -> RuntimeFacts:
    """The kubelet's ``status.nodeInfo.containerRuntimeVersion``, e.g. ``containerd://2.4.2``."""
    name, _, version = container_runtime_version.partition("://")
    return RuntimeFacts(name if version else "", version, None, "the Node's status")


def decide(facts: RuntimeFacts) -> Capability:
    name = facts.name.lower()
    if name == "containerd":
        return _containerd(facts)
    if name in ("cri-o", "crio"):
        return _crio(facts)
    if not name:
        return Capability(Verdict.UNKNOWN, "", "", f"no runtime name or version in {facts.origin}")
    return Capability(Verdict.UNKNOWN, facts.name, facts.version,
                      f"{facts.name} {facts.version}: lpm knows when containerd and CRI-O restore, not this runtime")


def _needs_opt_in(version: tuple[int, int, int]) -> bool:
    """Whether this containerd has the switch (and so restores only with it on)."""
    return (2, 2, 7) <= version < (2, 3, 0) or version >= (2, 3, 4)


def _containerd(facts: RuntimeFacts) -> Capability:
    version = parse_version(facts.version)
    shown = _shown(facts.version, version)
    label = f"containerd {shown}"

    def verdict(v: Verdict, why: str) -> Capability:
        return Capability(v, "containerd", shown, f"{label}, {why}")

    if version is None:
        return verdict(Verdict.UNKNOWN, f"version {facts.version!r} not understood")
    if version < (2, 1, 0):
        return verdict(Verdict.NOT_CAPABLE, "restore through CRI CreateContainer arrived in containerd 2.1")
    if version >= (2, 4, 0):
        return verdict(Verdict.NOT_CAPABLE, "containerd 2.4 removed restore through CRI CreateContainer")
    config = facts.config
    if config is not None and config.get("enableCRIU") is False:
        return verdict(Verdict.NOT_CAPABLE, "enable_criu=false")
    switch = None if config is None else config.get("enableExperimentalRestoreViaCreate")
    if isinstance(switch, bool):
        return verdict(Verdict.CAPABLE if switch else Verdict.NOT_CAPABLE,
                       f"{_CONTAINERD_OPT_IN}={'true' if switch else 'false'}")
    if not _needs_opt_in(version):
        return verdict(Verdict.CAPABLE, "restores through CRI CreateContainer by default (before 2.2.7 and 2.3.4)")
    if config is None:
        return verdict(Verdict.UNKNOWN, f"{_CONTAINERD_OPT_IN} unverified (read from {facts.origin}; "
                                        "no CRI endpoint answered)")
    return verdict(Verdict.UNKNOWN, f"its CRI config does not report {_CONTAINERD_OPT_IN}")


def _crio(facts: RuntimeFacts) -> Capability:
    version = parse_version(facts.version)
    shown = _shown(facts.version, version)
    label = f"CRI-O {shown}"

    def verdict(v: Verdict, why: str) -> Capability:
        return Capability(v, "cri-o", shown, f"{label}, {why}")

    if version is None:
        return verdict(Verdict.UNKNOWN, f"version {facts.version!r} not understood")
    if version < (1, 26, 0):
        return verdict(Verdict.NOT_CAPABLE, "restore from checkpoint images arrived in CRI-O 1.26")
    if facts.config is None:
        return verdict(Verdict.UNKNOWN, f"checkpoint/restore level unverified (read from {facts.origin}; "
                                        "no CRI endpoint answered)")
    runtime = facts.config.get("crio")
    criu = runtime.get("EnableCriuSupport") if isinstance(runtime, dict) else None
    if criu is False:
        return verdict(Verdict.NOT_CAPABLE, "enable_criu_support=false (or no criu on its PATH)")
    if criu is True and version <= _CRIO_BEFORE_LEVELS:
        return verdict(Verdict.CAPABLE, "enable_criu_support=true")
    return verdict(Verdict.UNKNOWN, "its CRI status does not report container_level_enabled "
                                    "(checkpoint_only refuses restore)")
