"""The lab approves a kubelet's serving-certificate CSR only for that node's own name and address.

Real CSRs, made with the same library the kubelet's would be parsed with; what a careless approver lets
through (another node's address, a name that is not the node's, a user outside system:nodes) is refused.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab.cluster import serving_csr_verdict
from lab.network import node_address

NODES = {"node-a": node_address("node-a", 0), "node-b": node_address("node-b", 1)}


def _csr(user: str = "system:node:node-a", groups: tuple[str, ...] = ("system:nodes", "system:authenticated"),
         cn: str | None = None, org: str = "system:nodes", ips: tuple[str, ...] = ("172.31.250.2",),
         dns: tuple[str, ...] = ("node-a",)) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn or user)]))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return {"spec": {"username": user, "groups": list(groups), "signerName": "kubernetes.io/kubelet-serving",
                     "request": base64.b64encode(pem).decode()}}


@pytest.mark.parametrize("csr, refusal", [
    (_csr(), None),
    (_csr(dns=()), None),
    (_csr(ips=("172.31.250.3",)), "beyond node-a's own name and address"),
    (_csr(dns=("node-b",)), "beyond node-a's own name and address"),
    (_csr(dns=("node-a", "kubernetes.default.svc")), "beyond node-a's own name and address"),
    (_csr(user="system:node:node-c", cn="system:node:node-c"), "not a lab node"),
    (_csr(user="system:serviceaccount:default:x"), "not a lab node"),
    (_csr(groups=("system:authenticated",)), "is not in system:nodes"),
    (_csr(cn="system:node:node-b"), "is not system:node:node-a"),
    (_csr(org="system:masters"), "is not system:node:node-a"),
    (_csr(ips=(), dns=()), "no subject alternative names"),
], ids=["own", "address-only", "other-address", "other-name", "extra-name", "unknown-node", "not-a-node",
        "no-group", "other-cn", "other-org", "no-sans"])
def test_serving_csr_verdict(csr: dict[str, Any], refusal: str | None) -> None:
    verdict = serving_csr_verdict(csr, NODES)
    if refusal is None:
        assert verdict is None
    else:
        assert verdict is not None and refusal in verdict, verdict
