"""kustomize, the real one scripts/kube/build-kustomize.sh builds and caches, rendering a kustomization."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from lab.controlplane import REPO

VERSION_FILE = REPO / "scripts" / "kube" / "kustomize.version"


class KustomizeError(AssertionError):
    """kustomize is missing, or refused a kustomization; the message carries what it said."""


def locate_kustomize() -> Path:
    """The cached binary (``LPM_KUSTOMIZE`` overrides it); never builds it (scripts/setup --for-tests does)."""
    version = VERSION_FILE.read_text().strip()
    cache = Path(os.environ.get("LPM_CACHE_DIR", REPO / ".cache"))
    binary = Path(os.environ.get("LPM_KUSTOMIZE", cache / "kustomize" / version / "kustomize"))
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"kustomize not found at {binary} (build it: scripts/kube/build-kustomize.sh)")
    return binary


def render(kustomize: Path, directory: Path) -> list[dict[str, Any]]:
    """``kustomize build DIRECTORY``: every object it would have applied, in its order."""
    done = subprocess.run([str(kustomize), "build", str(directory)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise KustomizeError(f"kustomize build {directory} failed: {done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
