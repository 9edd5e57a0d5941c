"""The locks (lock/*.txt, written by scripts/lock) against what the project declares and what the suite runs.

scripts/setup installs lock/dev.txt with ``--require-hashes`` and the Dockerfile lock/image.txt. These
tests fail when the two drift apart from pyproject.toml: a dependency added or changed without
re-running scripts/lock, a floor declared that the suite does not test, an image that would run other
versions than the suite ran. No network: the resolution itself is scripts/lock's (uv's) business.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from lab import lpmimage
from tests.support import REPO


def _pins(lock: Path) -> dict[str, tuple[Requirement, list[str]]]:
    """Each locked requirement by its canonical name, with its hashes."""
    text = re.sub(r"\s*\\\n", " ", lock.read_text())  # join the continuation lines
    pins: dict[str, tuple[Requirement, list[str]]] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = re.split(r"\s+--hash=", line)
        req = Requirement(requirement)
        pins[canonicalize_name(req.name)] = (req, options)
    return pins


def _version(req: Requirement) -> Version:
    [spec] = req.specifier
    assert spec.operator == "==", f"{req} is not pinned to one version"
    return Version(spec.version)


def _declared() -> list[tuple[str, Requirement]]:
    """Every requirement lpm's and lab's pyproject.toml declare, with where."""
    lpm = tomllib.loads((REPO / "pyproject.toml").read_text())
    lab = tomllib.loads((REPO / "lab" / "pyproject.toml").read_text())
    declared = [("lpm", r) for r in lpm["project"]["dependencies"]]
    declared += [(f"lpm[{extra}]", r) for extra, rs in lpm["project"]["optional-dependencies"].items() for r in rs]
    declared += [("lpm-lab", r) for r in lab["project"]["dependencies"]]
    declared += [(f"{name} build-system", r) for name, doc in (("lpm", lpm), ("lpm-lab", lab))
                 for r in doc["build-system"]["requires"]]
    return [(where, Requirement(r)) for where, r in declared]


DEV = _pins(REPO / "lock" / "dev.txt")
IMAGE = _pins(REPO / "lock" / "image.txt")


def test_every_locked_requirement_is_one_version_with_sha256_hashes() -> None:
    for lock in (DEV, IMAGE):
        assert lock
        for name, (req, hashes) in lock.items():
            _version(req)
            assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (name, hashes)


def test_every_declared_dependency_is_locked_and_its_floor_is_the_tested_major_minor() -> None:
    """A declared minimum is one the suite runs: the floor (``>=`` or ``~=``) is the locked version's
    major.minor (or the locked version itself). Raising a floor, or re-locking onto a newer minor, moves
    both together."""
    for where, req in _declared():
        name = canonicalize_name(req.name)
        assert name in DEV, f"{where} needs {req}, missing from lock/dev.txt: run scripts/lock"
        locked = _version(DEV[name][0])
        assert req.specifier.contains(locked, prereleases=True), \
            f"{where} needs {req}, lock/dev.txt has {locked}: run scripts/lock"
        [floor] = [Version(s.version) for s in req.specifier if s.operator in (">=", "~=")]
        assert floor.release[:2] == locked.release[:2] and floor <= locked, \
            f"{where} declares {req} but the suite tests {locked}: raise the floor to >={locked.major}.{locked.minor}"


def test_the_image_lock_is_lpms_dependencies_at_the_versions_the_suite_tests() -> None:
    runtime = {canonicalize_name(Requirement(r).name)
               for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert runtime <= IMAGE.keys(), f"missing from lock/image.txt: {sorted(runtime - IMAGE.keys())}"
    assert "setuptools" in IMAGE  # the build backend, installed without build isolation
    for name, (req, _) in IMAGE.items():
        assert name in DEV and _version(DEV[name][0]) == _version(req), \
            f"lock/image.txt has {req}, lock/dev.txt {DEV.get(name, (None,))[0]}: run scripts/lock"


def test_the_venv_running_this_suite_holds_the_locked_versions() -> None:
    """What makes "tested" true: scripts/setup installed lock/dev.txt into this venv."""
    for name, (req, _) in DEV.items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        assert Version(metadata.version(name)) == _version(req), f"{name}: run scripts/setup"


def test_the_dockerfile_builds_from_the_lock_on_a_base_pinned_by_digest() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    [base] = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert re.fullmatch(r"debian:trixie[\w.-]*@sha256:[0-9a-f]{64}", base), base
    assert "--require-hashes -r lock/image.txt" in dockerfile
    assert "--no-deps --no-build-isolation ." in dockerfile
    assert "lock/image.txt" in lpmimage.CONTEXT  # the lab's image builds copy it into the context
