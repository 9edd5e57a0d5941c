"""The session-wide real control plane, with lpm's CRDs and RBAC applied.

The top-level ``tests/conftest.py`` re-exports this with ``from tests.realstack.fixtures import *``.
A missing etcd or kube-apiserver FAILS the tests that need them, never skips them: CI must always run
them, and a skip would let a machine without the control plane report green.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.controlplane import ControlPlane, ControlPlaneError, locate_binaries
from lab.manifests import install_lpm

__all__ = ["control_plane"]

@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver with lpm's CRDs Established and the agent's RBAC in place."""
    try:
        binaries = locate_binaries()
    except ControlPlaneError as e:
        # pytest.fail's own exception, raised without the lookup error chained to it: one clear line.
        raise pytest.fail.Exception(f"the real control plane is missing: {e}", pytrace=False) from None
    with ControlPlane(binaries) as cp:
        install_lpm(cp.admin)
        yield cp
