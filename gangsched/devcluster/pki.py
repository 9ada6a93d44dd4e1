"""Certificates for a loopback control plane: a CA, the apiserver's serving cert, an admin client cert and the
service-account signing key. ECDSA P-256 keys: generated in milliseconds, accepted by every Go component."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is the devcluster extra: imported where certificates are made, not on import
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_crt(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, org: str | None = None) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          sans: list[x509.GeneralName] | None = None, usage: list[x509.ObjectIdentifier] | None = None
          ) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew between processes
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + VALIDITY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=not ca, key_cert_sign=ca,
                                      crl_sign=ca, content_commitment=False, data_encipherment=False,
                                      key_agreement=False, encipher_only=False, decipher_only=False),
                        critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if ca:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def generate(dir: Path, service_ip: str = "10.0.0.1") -> Pki:
    """Write a fresh CA and the certificates a single-host control plane needs into `dir`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(dir)
    pem = serialization.Encoding.PEM
    ca_key = _key()
    ca_name = _name("gangsched-devcluster-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    _write(pki.ca_crt, ca.public_bytes(pem))

    srv_key = _key()
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                    x509.IPAddress(ipaddress.ip_address(service_ip)), x509.DNSName("localhost"),
                                    *(x509.DNSName(n) for n in ("kubernetes", "kubernetes.default",
                                                                "kubernetes.default.svc",
                                                                "kubernetes.default.svc.cluster.local"))]
    srv = _cert(_name("kube-apiserver"), srv_key, ca_name, ca_key, sans=sans,
                usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    _write(pki.apiserver_crt, srv.public_bytes(pem))
    _write(pki.apiserver_key, _key_pem(srv_key), private=True)

    # O=system:masters: bound to cluster-admin by the apiserver's bootstrap RBAC, and bypasses authorization.
    adm_key = _key()
    adm = _cert(_name("gangsched-admin", "system:masters"), adm_key, ca_name, ca_key,
                usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _write(pki.admin_crt, adm.public_bytes(pem))
    _write(pki.admin_key, _key_pem(adm_key), private=True)

    sa_key = _key()
    _write(pki.sa_key, _key_pem(sa_key), private=True)
    _write(pki.sa_pub, sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


@dataclass(frozen=True)
class TlsPair:
    """A CA, a serving certificate for 127.0.0.1/localhost and a client certificate it signed (PEM files)."""

    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path


def generate_tls(dir: Path, name: str = "gangsched-extender") -> TlsPair:
    """Certificates for a loopback HTTPS server with client authentication (the extender and kube-scheduler's
    `tlsConfig`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    dir.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    pair = TlsPair(dir / "ca.crt", dir / "server.crt", dir / "server.key", dir / "client.crt", dir / "client.key")
    ca_key = _key()
    ca_name = _name(f"{name}-ca")
    _write(pair.ca, _cert(ca_name, ca_key, ca_name, ca_key, ca=True).public_bytes(pem))
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    for crt, key_path, cn, usage, alt in ((pair.server_crt, pair.server_key, name, ExtendedKeyUsageOID.SERVER_AUTH,
                                           sans), (pair.client_crt, pair.client_key, f"{name}-client",
                                                   ExtendedKeyUsageOID.CLIENT_AUTH, None)):
        key = _key()
        _write(crt, _cert(_name(cn), key, ca_name, ca_key, sans=alt, usage=[usage]).public_bytes(pem))
        _write(key_path, _key_pem(key), private=True)
    return pair
