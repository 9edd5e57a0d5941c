"""Kubeconfig files for the local control plane: one cluster, one user, one context.

The cluster entry always names the CA file, so every client built from these files verifies the
apiserver's certificate; there is deliberately no way to turn that verification off here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def _write(path: Path, server: str, ca_file: Path, user: dict[str, Any]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lpm-local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "lpm-user", "user": user}],
        "contexts": [{"name": "lpm-local", "context": {"cluster": "lpm-local", "user": "lpm-user"}}],
        "current-context": "lpm-local",
    }
    # A kubeconfig is a credential: 0600 from creation on.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def write_cert_kubeconfig(path: Path, server: str, ca_file: Path, cert_file: Path, key_file: Path) -> Path:
    """A kubeconfig that authenticates with a client certificate."""
    return _write(path, server, ca_file, {"client-certificate": str(cert_file), "client-key": str(key_file)})


def write_token_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> Path:
    """A kubeconfig that authenticates with a bearer token (a ServiceAccount's, from TokenRequest)."""
    return _write(path, server, ca_file, {"token": token})
