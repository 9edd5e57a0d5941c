"""A throw-away certificate authority for the local control plane.

Every key is ECDSA P-256: generation takes microseconds (RSA-2048 takes tens of milliseconds each), and
kube-apiserver accepts EC keys for serving, client certificates and service-account token signing alike.
Private keys are written 0600; the caller owns the (0700) directory they go in.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for any test session or demo, short enough that a leaked file is soon worthless.
_VALIDITY = datetime.timedelta(days=2)
# Clock skew between the test process and the apiserver is zero, but keep a margin for "not yet valid".
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertFiles:
    """A PEM certificate and its PEM private key on disk."""

    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start: a chmod after writing would leave a window where the key is readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


class CertificateAuthority:
    """A self-signed CA that issues serving and client certificates into one directory."""

    def __init__(self, directory: Path, common_name: str = "lpm-test-ca") -> None:
        self._dir = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = _name(common_name)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = directory / "ca.crt"
        self.cert_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        # kube-controller-manager signs CSRs (the kubelets' serving certificates) with this CA, from files.
        self.key_file = directory / "ca.key"
        _write_private(self.key_file, _key_pem(self._key))

    def issue_serving(self, name: str, hosts: list[str]) -> CertFiles:
        """A TLS server certificate valid for ``hosts`` (IP addresses and DNS names)."""
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return self._issue(name, _name(hosts[0]), ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def issue_client(self, name: str, user: str, groups: tuple[str, ...] = ()) -> CertFiles:
        """A client certificate: kube-apiserver reads the user from CN and the groups from O."""
        return self._issue(name, _name(user, groups), ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _issue(
        self, name: str, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        files = CertFiles(cert=self._dir / f"{name}.crt", key=self._dir / f"{name}.key")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(files.key, _key_pem(key))
        return files


@dataclass(frozen=True)
class KeyPairFiles:
    """A bare PEM key pair, as kube-apiserver wants for signing and verifying service-account tokens."""

    public: Path
    private: Path


def write_signing_key_pair(directory: Path, name: str) -> KeyPairFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    files = KeyPairFiles(public=directory / f"{name}.pub", private=directory / f"{name}.key")
    files.public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    _write_private(files.private, _key_pem(key))
    return files
