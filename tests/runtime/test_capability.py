"""The restore-capability decision, table by table: what each runtime and version said → the verdict."""

import json

import pytest

from watcher.runtime.capability import RuntimeFacts, Verdict, decide, from_node_info, parse_config

OPT_IN = "enable_experimental_restore_via_create"


def _containerd(version: str, **config: object) -> RuntimeFacts:
    return RuntimeFacts("containerd", version, config, "CRI")


@pytest.mark.parametrize("facts, verdict, reason", [
    (_containerd("v2.0.6"), Verdict.NOT_CAPABLE,
     "containerd 2.0.6, restore through CRI CreateContainer arrived in containerd 2.1"),
    (_containerd("v1.7.27"), Verdict.NOT_CAPABLE, "arrived in containerd 2.1"),
    (_containerd("v2.1.0"), Verdict.CAPABLE, "containerd 2.1.0, restores through CRI CreateContainer by default"),
    (_containerd("v2.2.6"), Verdict.CAPABLE, "by default (before 2.2.7 and 2.3.4)"),
    (_containerd("v2.3.3"), Verdict.CAPABLE, "by default"),
    # The switch exists from 2.2.7 and 2.3.4 and defaults to off.
    (_containerd("v2.2.7", enableExperimentalRestoreViaCreate=False), Verdict.NOT_CAPABLE,
     f"containerd 2.2.7, {OPT_IN}=false"),
    (_containerd("v2.2.7", enableExperimentalRestoreViaCreate=True), Verdict.CAPABLE,
     f"containerd 2.2.7, {OPT_IN}=true"),
    (_containerd("v2.3.7", enableExperimentalRestoreViaCreate=True), Verdict.CAPABLE,
     f"containerd 2.3.7, {OPT_IN}=true"),
    (_containerd("v2.3.7", enableExperimentalRestoreViaCreate=False), Verdict.NOT_CAPABLE, f"{OPT_IN}=false"),
    (_containerd("v2.3.7", enableExperimentalRestoreViaCreate=True, enableCRIU=False), Verdict.NOT_CAPABLE,
     "enable_criu=false"),
    (_containerd("v2.3.7", enableExperimentalRestoreViaCreate=True, enableCRIU=None), Verdict.CAPABLE,
     f"{OPT_IN}=true"),
    (_containerd("v2.3.7"), Verdict.UNKNOWN, f"its CRI config does not report {OPT_IN}"),
    (RuntimeFacts("containerd", "v2.3.7", None, "the Node's status"), Verdict.UNKNOWN,
     f"containerd 2.3.7, {OPT_IN} unverified (read from the Node's status"),
    (RuntimeFacts("containerd", "2.2.2", None, "the Node's status"), Verdict.CAPABLE, "by default"),
    (_containerd("v2.4.0", enableExperimentalRestoreViaCreate=True), Verdict.NOT_CAPABLE,
     "containerd 2.4.0, containerd 2.4 removed restore through CRI CreateContainer"),
    (_containerd("v2.4.2"), Verdict.NOT_CAPABLE, "2.4 removed"),
    (_containerd("2.3.7+unknown", enableExperimentalRestoreViaCreate=True), Verdict.CAPABLE,
     f"containerd 2.3.7, {OPT_IN}=true"),
    (_containerd("main"), Verdict.UNKNOWN, "containerd main, version 'main' not understood"),
])
def test_containerd(facts, verdict, reason):
    capability = decide(facts)
    assert (capability.verdict, capability.runtime) == (verdict, "containerd"), capability
    assert reason in capability.reason, capability


def _crio(version: str, criu: object = None, config: bool = True) -> RuntimeFacts:
    runtime = {} if criu is None else {"EnableCriuSupport": criu}
    return RuntimeFacts("cri-o", version, {"sandboxImage": "pause", "crio": runtime} if config else None, "CRI")


@pytest.mark.parametrize("facts, verdict, reason", [
    (_crio("1.25.4", True), Verdict.NOT_CAPABLE, "CRI-O 1.25.4, restore from checkpoint images arrived in CRI-O 1.26"),
    (_crio("1.33.2", True), Verdict.CAPABLE, "CRI-O 1.33.2, enable_criu_support=true"),
    (_crio("1.36.3", True), Verdict.CAPABLE, "enable_criu_support=true"),
    (_crio("1.34.1", False), Verdict.NOT_CAPABLE, "enable_criu_support=false (or no criu on its PATH)"),
    # Releases that may have container_level_enabled (default checkpoint_only) do not report it.
    (_crio("1.37.0", True), Verdict.UNKNOWN, "does not report container_level_enabled"),
    (_crio("1.37.0", False), Verdict.NOT_CAPABLE, "enable_criu_support=false"),
    (_crio("1.34.1"), Verdict.UNKNOWN, "does not report container_level_enabled"),
    (_crio("1.34.1", config=False), Verdict.UNKNOWN, "checkpoint/restore level unverified"),
])
def test_crio(facts, verdict, reason):
    capability = decide(facts)
    assert (capability.verdict, capability.runtime) == (verdict, "cri-o"), capability
    assert reason in capability.reason, capability


def test_other_runtimes_and_nothing_at_all_are_unknown_with_why():
    other = decide(RuntimeFacts("docker", "28.0.1", {}, "CRI"))
    assert (other.verdict, other.reason) == (Verdict.UNKNOWN, "docker 28.0.1: lpm knows when containerd and "
                                                              "CRI-O restore, not this runtime")
    nothing = decide(from_node_info(""))
    assert (nothing.verdict, nothing.reason) == (Verdict.UNKNOWN, "no runtime name or version in the Node's status")


@pytest.mark.parametrize("reported, runtime, version, verdict", [
    ("containerd://2.4.2", "containerd", "2.4.2", Verdict.NOT_CAPABLE),
    ("containerd://2.1.4", "containerd", "2.1.4", Verdict.CAPABLE),
    ("containerd://2.3.7", "containerd", "2.3.7", Verdict.UNKNOWN),
    ("cri-o://1.34.1", "cri-o", "1.34.1", Verdict.UNKNOWN),
])
def test_the_nodes_runtime_version_is_the_fallback(reported, runtime, version, verdict):
    capability = decide(from_node_info(reported))
    assert (capability.runtime, capability.version, capability.verdict) == (runtime, version, verdict), capability


def test_the_summary_is_the_readyz_text():
    capable = decide(_containerd("v2.3.7", enableExperimentalRestoreViaCreate=True))
    assert capable.summary() == f"capable (containerd 2.3.7, {OPT_IN}=true)"
    assert decide(_containerd("v2.4.2")).summary().startswith("not capable (containerd 2.4.2, ")
    assert decide(_containerd("v2.3.7")).summary().startswith("unknown (containerd 2.3.7, ")


@pytest.mark.parametrize("info, parsed", [
    ({"config": json.dumps({"enableCRIU": True})}, {"enableCRIU": True}),
    ({"config": "[1]"}, None), ({"config": "{not json"}, None), ({}, None),
])
def test_the_status_config_is_parsed_or_absent(info, parsed):
    assert parse_config(info) == parsed
