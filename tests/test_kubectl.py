"""``kubectl lpm``'s pure parts: what it prints, the completion scripts, and its krew manifest.
Its commands against the real API server: tests/realstack/test_kubectl.py."""

from __future__ import annotations

import json
import subprocess
import tomllib
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.support import REPO
from watcher.kubectl import completion, progress, views
from watcher.kubectl.main import build_parser

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@given(json_values)
@example({"size": 1e16, "tiny": 1e-7, "\u2028": "\x85\U0001f600", "list": [[], {}, [1]]})
# A key past YAML's 1024-character bound on implicit keys (hypothesis found it: a flat one and a nested one).
@example({"": None, "0" * 35 + "\x1f" + "\u0100" * 200: None})
@example({"k" * 1100: {"a": [1, {"b" * 1030: "c"}]}, "list": [{"d" * 1050: {}}]})
def test_yaml_reads_back_as_the_json_it_was_made_from(value: Any) -> None:
    assert yaml.safe_load(views.yaml(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize(("created", "shown"), [
    ("2026-12-02T11:59:15Z", "45s"), ("2026-12-02T11:58:00Z", "2m"), ("2026-12-02T10:30:00Z", "90m"),
    ("2026-12-02T09:00:00Z", "3h"), ("2026-11-27T12:00:00Z", "5d"), ("2026-12-02T12:00:09Z", "0s"),
    ("garbage", "<unknown>")])
def test_age_reads_as_kubectls(created: str, shown: str) -> None:
    assert views.age(created, NOW) == shown


@pytest.mark.parametrize(("size", "shown"), [(None, "<unknown>"), (512, "512B"), (8192, "8.0KiB"),
                                             (3 * 2**30, "3.0GiB"), (5000 * 2**30, "5000.0GiB")])
def test_sizes(size: int | None, shown: str) -> None:
    assert views.size(size) == shown


def _content(uris: list[str], sizes: list[int | None]) -> dict[str, Any]:
    containers = [{"containerName": f"c{i}", "artifactURI": uri} | ({"compressedSize": s} if s is not None else {})
                  for i, (uri, s) in enumerate(zip(uris, sizes, strict=True))]
    return {"metadata": {"name": "x", "creationTimestamp": "2026-12-02T11:00:00Z"},
            "spec": {"podNamespace": "ns", "podName": "p", "sourceNode": "n", "containers": containers}}


UID, CID = "0f6d7c8e-1a2b-4c3d-8e9f-0123456789ab", "20261125T120000Z-0123abcd"


@pytest.mark.parametrize(("uris", "sizes", "storage", "directory", "total"), [
    ([f"shared://{UID}/{CID}/c0/dump.tar.zst", f"shared://{UID}/{CID}/c1/dump.tar.zst"], [1, 2], "shared",
     (UID, CID), 3),
    # one container still in its node's local store: no directory in the shared store to pin
    ([f"shared://{UID}/{CID}/c0/dump.tar.zst", f"file:///var/lib/lpm/local-store/{UID}/{CID}/c1/dump.tar.zst"],
     [1, None], "local,shared", None, None),
    ([f"shared://{UID}/{CID}/c0/dump.tar.zst", f"shared://{UID}/20261125T120001Z-0123abcd/c1/dump.tar.zst"],
     [1, 1], "shared", None, 2),
    (["shared://../../etc/c0/dump.tar.zst"], [1], "shared", None, 1),
])
def test_a_checkpoints_row(uris: list[str], sizes: list[int | None], storage: str,
                           directory: tuple[str, str] | None, total: int | None) -> None:
    [row] = views.checkpoints([_content(uris, sizes)], [])
    assert (row.storage, row.directory, row.size) == (storage, directory, total)
    assert row.containers == tuple(f"c{i}" for i in range(len(uris)))


def _seen(phase: str, handover: str = "", message: str = "") -> progress.Seen:
    return progress.seen({"spec": {"targetNode": "node-b"},
                          "status": {"phase": phase, "handover": handover, "message": message}})


def test_the_bar_counts_phases_and_the_lines_say_the_stage() -> None:
    assert progress.bar(_seen("Pending"), 1.2) == "[####----------------] 1/5 Pending  1s"
    assert progress.bar(_seen("Restoring", "Adopted"), 30) == "[################----] 4/5 Restoring (Adopted)  30s"
    assert progress.bar(_seen("Failed"), 3).startswith("[--------------------] 0/5 Failed")
    assert progress.line(_seen("Checkpointing", message="dumping"), 2.25) == "    2.2s  Checkpointing: dumping"
    assert progress.seen({}).phase == "Pending"  # no status yet: no agent has taken it on


def _moving(**status: Any) -> progress.Seen:
    return progress.seen({"spec": {"targetNode": "node-b"}, "status": {"phase": "Checkpointing", **status}})


def test_bytes_draw_the_bar_the_rate_and_the_eta_while_checkpointing() -> None:
    writing = _moving(progress=[{"containerName": "app", "bytesCheckpointed": 100 * 2**20,
                                 "bytesStored": 30 * 2**20, "bytesPerSecond": 50 * 2**20, "done": False}])
    # The runtime is still writing: no total, so no ETA and an empty bar, but the bytes and the rate.
    assert progress.bar(writing, 4) == ("[--------------------] app: 100.0 MiB checkpointed, 30.0 MiB stored, "
                                        "50.0 MiB/s, the runtime is still writing  4s")
    known = _moving(progress=[
        {"containerName": "app", "bytesCheckpointed": 2**30, "bytesStored": 2**28, "bytesTotal": 2**30,
         "bytesPerSecond": 2**28, "done": True},
        {"containerName": "db", "bytesCheckpointed": 256 * 2**20, "bytesStored": 64 * 2**20,
         "bytesTotal": 1024 * 2**20, "bytesPerSecond": 128 * 2**20, "done": False}])
    # The bar follows the first container still going: db, a quarter done, 768 MiB left at 128 MiB/s.
    assert progress.bar(known, 9) == ("[#####---------------] db: 256.0 of 1024.0 MiB checkpointed, 64.0 MiB "
                                      "stored, 128.0 MiB/s, ETA 6.0s  9s")
    # Piped, a line for each container whose bytes moved since the last read, none for one that did not.
    before = _moving(progress=[{"containerName": "app", "bytesCheckpointed": 2**30, "bytesStored": 2**28,
                               "bytesTotal": 2**30, "bytesPerSecond": 2**28, "done": True}])
    assert progress.progress_lines(known, before, 9.04) == [
        "    9.0s  Checkpointing: db: 256.0 of 1024.0 MiB checkpointed, 64.0 MiB stored, 128.0 MiB/s, ETA 6.0s"]
    assert [item.eta for item in known.progress] == [0.0, 6.0]
    # Once every container is done, the bar counts phases again.
    finished = _moving(progress=[{"containerName": "app", "bytesCheckpointed": 1, "done": True}])
    assert progress.bar(finished, 2).startswith("[########------------] 2/5 Checkpointing")


def test_malformed_progress_and_freeze_window_are_read_as_unknown_not_a_crash() -> None:
    odd = _moving(progress=[{"containerName": "app", "bytesCheckpointed": "lots", "bytesTotal": -1,
                             "bytesPerSecond": True}, "not an object"], freezeWindow={"seconds": "soon"})
    assert odd.progress == (progress.Bytes("app", 0, 0, None, None, False),) and odd.freeze is None
    assert progress.transfer(odd.progress[0]) == (
        "app: 0.0 MiB checkpointed, 0.0 MiB stored, the runtime is still writing")


def test_the_summary_gives_the_freeze_window_the_agents_published() -> None:
    status = {"phase": "Succeeded", "sourceNode": "node-a", "restoredPodName": "web-x",
              "startTime": "2026-12-02T10:00:00Z", "completionTime": "2026-12-02T10:00:09Z",
              "freezeWindow": {"seconds": 4.215, "checkpointSeconds": 2.1, "handoverSeconds": 0.305,
                               "restoreSeconds": 1.81}}
    done = progress.seen({"spec": {"targetNode": "node-b"}, "status": status})
    assert progress.summary(done) == [
        "pod runs on node-b as web-x (moved from node-a)",
        "freeze window: 4.21s (checkpoint requested to restored pod running: checkpoint 2.10s, handover 0.30s, "
        "restore 1.81s)"]
    del status["freezeWindow"]  # an older agent: only the whole-second ends
    assert progress.summary(progress.seen({"spec": {"targetNode": "node-b"}, "status": status}))[1] == (
        "checkpoint to restored pod running: 9s (status startTime to completionTime, whole seconds)")


@pytest.mark.parametrize(("phase", "outcome"), [
    ("Pending", progress.Outcome.RUNNING), ("Restoring", progress.Outcome.RUNNING),
    ("Succeeded", progress.Outcome.SUCCEEDED), ("Failed", progress.Outcome.FAILED)])
def test_outcomes(phase: str, outcome: progress.Outcome) -> None:
    assert progress.outcome(_seen(phase)) is outcome
    assert progress.outcome(None) is progress.Outcome.DELETED


def _complete(script: str, words: list[str]) -> list[str]:
    """COMPREPLY for the command line ``words`` (the last being completed), from bash itself."""
    line = " ".join(f"'{w}'" for w in words)
    program = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _kubectl_lpm\n"
               'printf "%s\\n" "${COMPREPLY[@]}"')
    return subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize("shell", sorted(completion.SHELLS))
def test_completion_scripts_parse(shell: str) -> None:
    script = completion.script(build_parser(), shell)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_bash_completes_subcommands_flags_and_values() -> None:
    script = completion.script(build_parser(), "bash")
    assert _complete(script, ["kubectl-lpm", "mi"]) == ["migrate"]
    assert set(_complete(script, ["kubectl-lpm", "migrate", "web", "--"])) >= {"--to", "--wait", "--no-wait",
                                                                                "--timeout", "--namespace"}
    assert _complete(script, ["kubectl-lpm", "ls", "-o", ""]) == ["wide", "name", "json", "yaml"]
    assert _complete(script, ["kubectl-lpm", "completion", ""]) == ["bash", "zsh", "-h", "--help"]


def test_the_krew_manifest_names_the_installed_binary() -> None:
    manifest = yaml.safe_load((REPO / "deploy" / "krew" / "lpm.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert manifest["kind"] == "Plugin" and manifest["metadata"]["name"] == "lpm"
    assert manifest["spec"]["version"] == f"v{project['version']}"
    assert {platform["bin"] for platform in manifest["spec"]["platforms"]} == {"kubectl-lpm"}
    assert project["scripts"]["kubectl-lpm"] == "watcher.kubectl.main:main"


@pytest.mark.parametrize(("argv", "timeout"), [(["--timeout", "90"], 90.0), (["--timeout", "30s"], 30.0),
                                               (["--timeout", "5m"], 300.0), (["--timeout", "1.5h"], 5400.0),
                                               ([], None)])
def test_timeouts_read_as_durations(argv: list[str], timeout: float | None) -> None:
    args = build_parser().parse_args(["-n", "shop", "migrate", "web", "--to", "node-b", *argv])
    assert (args.timeout, args.namespace, args.wait) == (timeout, "shop", None)


@pytest.mark.parametrize("bad", ["0", "-5m", "5d", "soon", ""])
def test_a_bad_timeout_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["migrate", "web", "--to", "node-b", f"--timeout={bad}"])
    assert exited.value.code == 2 and "duration" in capsys.readouterr().err


def test_flags_after_the_subcommand_do_not_undo_those_before_it() -> None:
    args = build_parser().parse_args(["--context", "prod", "-n", "shop", "status", "-A"])
    assert (args.context, args.namespace, args.all_namespaces) == ("prod", "shop", True)
    assert not hasattr(build_parser().parse_args(["ls"]), "namespace")  # the context's, decided later
