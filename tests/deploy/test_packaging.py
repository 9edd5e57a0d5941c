"""The image installs lpm with ``pip install .``: every package must be in pyproject's explicit list.

setuptools installs only the packages named there (``gc/`` is mapped to ``lpm_gc``), so a new
subpackage left out works in the editable venv and is missing from the image: ``lpm`` would fail
at import on the node.
"""

from __future__ import annotations

import tomllib

from tests.support import REPO


def test_every_package_is_listed_for_installation() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    watcher = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "watcher").rglob("__init__.py")}
    # CRIU's compiled definitions, written by scripts/setup and git-ignored, go in as watcher.inspect's data.
    generated = "watcher.inspect.criu_pb"
    assert set(setuptools["packages"]) == watcher - {generated} | {"lpm_gc"}
    assert "criu_pb/*.py" in setuptools["package-data"]["watcher.inspect"]
    assert setuptools["package-dir"] == {"lpm_gc": "gc"} and not list((REPO / "gc").glob("*/__init__.py"))
