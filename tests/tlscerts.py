"""Certificates made at test time (``cryptography``, installed with twisted[tls]).

``make_ca(directory, name)`` writes a CA; ``ca.issue(directory, name, hosts)`` writes a
server certificate and key signed by it whose subjectAltName holds every host given
(IP addresses as IP entries, names as DNS entries), so hostname verification passes
for exactly those hosts.  Keys are EC P-256: fast to make.  Everything is written 0600
into the directory given and the paths are returned.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _write(path: str, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as handle:
        handle.write(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _validity(builder: x509.CertificateBuilder,
              expired: bool = False) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        return builder.not_valid_before(now - datetime.timedelta(days=3)).not_valid_after(
            now - datetime.timedelta(days=1))
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=2))


@dataclass(frozen=True)
class ServerCert:
    cert: str       # PEM certificate (leaf only)
    key: str        # PEM private key


@dataclass(frozen=True)
class CA:
    name: str
    cert: str       # PEM file holding the CA certificate alone (--cacert, cacert =)
    dir: str        # a directory holding only that file (trustRoots=, caCertsDir=)
    _key: ec.EllipticCurvePrivateKey
    _cert: x509.Certificate

    def issue(self, directory: str, name: str, hosts: tuple[str, ...] = LOCAL_HOSTS,
              expired: bool = False) -> ServerCert:
        os.makedirs(directory, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = _validity(
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number()),
            expired,
        )
        builder = (
            builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
        )
        cert = builder.sign(self._key, hashes.SHA256())
        return ServerCert(
            cert=_write(os.path.join(directory, f"{name}.crt"), _cert_pem(cert)),
            key=_write(os.path.join(directory, f"{name}.key"), _key_pem(key)),
        )


def make_ca(directory: str, name: str = "replicad-test-ca") -> CA:
    """A self-signed CA; its certificate alone in ``<directory>/<name>/ca.pem``."""
    ca_dir = os.path.join(directory, name)
    os.makedirs(ca_dir, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    path = _write(os.path.join(ca_dir, "ca.pem"), _cert_pem(cert))
    return CA(name=name, cert=path, dir=ca_dir, _key=key, _cert=cert)
