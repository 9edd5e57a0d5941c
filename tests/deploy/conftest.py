"""The deploy tests' kustomize: missing, it FAILS them (never skips), like the control plane."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.kustomize import locate_kustomize


@pytest.fixture(scope="session")
def kustomize() -> Path:
    try:
        return locate_kustomize()
    except FileNotFoundError as e:
        raise pytest.fail.Exception(str(e), pytrace=False) from None
