"""A local certificate authority for federation between homeservers on one machine.

Federation is TLS only, and Synapse verifies the peer's certificate. In
production each organisation's federation endpoint has a certificate from a
public CA (or the reverse proxy in front of it does). To run two or three
organisations on one laptop, their platforms share a *local CA*: a directory
with ``ca.pem`` (the CA certificate every peer trusts) and ``ca.key`` (mode
0600, only the platforms on this machine read it). Each homeserver gets a
certificate signed by it for the host of its server name, ``localhost`` and
``127.0.0.1``::

    <ca_dir>/ca.pem  ca.key            made once, by the first platform that needs it
    <hs dir>/tls/cert.pem  key.pem     per homeserver; renewed when the CA changes,
                                       the names change or 30 days before expiry

Concurrent first starts of several platforms on the same CA directory are safe:
the CA is created under an exclusive file lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datarooms._fs import atomic_write, private_dir
from datarooms.errors import ConfigError
from datarooms.ids import server_host

if TYPE_CHECKING:
    from cryptography import x509

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
_CA_DAYS = 3650
_CERT_DAYS = 365
_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class ServerCertificate:
    """Where a homeserver's federation certificate, its key and the trusted CA are."""

    cert: Path
    key: Path
    ca: Path


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_ca(ca_dir: Path) -> Path:
    """The local CA's certificate in ``ca_dir``, created if missing; returns ``ca.pem``."""
    ca_dir = private_dir(Path(ca_dir))
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    with _exclusive(ca_dir / ".ca.lock"):
        if cert_path.exists() and key_path.exists():
            return cert_path
        if cert_path.exists() != key_path.exists():
            raise ConfigError(
                f"the local CA in {ca_dir} is incomplete (one of {CA_CERT}, {CA_KEY} is "
                "missing); restore it, or remove both to make a new CA (every peer's "
                "certificate is then renewed on its next start)"
            )
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "datarooms local federation CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        atomic_write(key_path, _key_pem(key), mode=0o600)
        atomic_write(cert_path, _cert_pem(cert))
        return cert_path


def ensure_server_certificate(
    tls_dir: Path, ca_dir: Path, hostnames: list[str]
) -> ServerCertificate:
    """A certificate for ``hostnames`` (DNS names or IP literals) signed by the local CA in
    ``ca_dir``, kept in ``tls_dir``; reissued when missing, for other names, signed by
    another CA, or near expiry."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert_path = ensure_ca(ca_dir)
    tls_dir = private_dir(Path(tls_dir))
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    names = sorted(set(hostnames))
    if cert_path.exists() and key_path.exists() and _still_good(cert_path, ca_cert, names):
        return ServerCertificate(cert_path, key_path, ca_cert_path)

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ca_key = load_pem_private_key((Path(ca_dir) / CA_KEY).read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"the local CA key in {ca_dir} is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write(key_path, _key_pem(key), mode=0o600)
    atomic_write(cert_path, _cert_pem(cert))
    return ServerCertificate(cert_path, key_path, ca_cert_path)


def _still_good(cert_path: Path, ca_cert: object, names: list[str]) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    assert isinstance(ca_cert, x509.Certificate)
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, Exception):
        return False
    if sorted(_names_of(san)) != names:
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > _RENEW_BEFORE


def _san(names: list[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _names_of(san: object) -> list[str]:
    from cryptography import x509

    assert isinstance(san, x509.SubjectAlternativeName)
    return [*san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _key_pem(key: object) -> bytes:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())  # type: ignore[attr-defined, no-any-return]


def _cert_pem(cert: object) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


host_of = server_host
