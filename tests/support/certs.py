"""Test certificates made with `cryptography`: a CA and server certificates it signs, written as PEM files.

Keys are EC P-256 (fast to make). `write_server_files` covers the TLS layouts reTurn accepts: certificate and key in
separate files, the key inside the certificate file, and an encrypted key with a password.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path


@dataclass(frozen=True)
class ServerFiles:
    certificate: Path
    key: Path | None  # None: the key is inside the certificate file
    password: str
    serial: int


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str = "pyturn test CA") -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key, certificate)


def make_server_certificate(
    ca: CertificateAuthority, common_name: str = "localhost", ips: tuple[str, ...] = ("127.0.0.1", "::1")
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(common_name)]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return key, certificate


def write_server_files(
    ca: CertificateAuthority,
    directory: Path,
    *,
    stem: str = "server",
    key_in_certificate: bool = False,
    password: str = "",
    common_name: str = "localhost",
) -> ServerFiles:
    """Write a server certificate (and key) signed by `ca`; `password` encrypts the key (PKCS#8)."""
    key, certificate = make_server_certificate(ca, common_name)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    certificate_path = directory / f"{stem}.pem"
    if key_in_certificate:
        certificate_path.write_bytes(certificate_pem + key_pem)
        return ServerFiles(certificate_path, None, password, certificate.serial_number)
    key_path = directory / f"{stem}.key"
    certificate_path.write_bytes(certificate_pem)
    key_path.write_bytes(key_pem)
    return ServerFiles(certificate_path, key_path, password, certificate.serial_number)
