"""A local certificate authority for the embedded default: one CA, server certificates it signs.

Used when no real certificates are configured (the portal and API over HTTPS) and by tests that
need LDAPS with real validation (a Samba DC presenting a certificate our CA signed). Keys are
written with mode 0600 in a 0700 directory (looser ones are tightened) and never logged.
Existing files are reused, so restarts keep identities.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.private_files import private_dir, write_private


@dataclass(frozen=True)
class ServerFiles:
    ca_cert: Path
    cert: Path
    key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ShiftDesk local CA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ensure_ca(directory: Path, days: int = 3650) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    private_dir(directory)  # the CA's directory is root's alone, whatever the umask or an older version left
    if cert_path.exists() and key_path.exists():
        for path in (cert_path, key_path):
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name("ShiftDesk local CA")).issuer_name(_name("ShiftDesk local CA"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _pem_key(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def ensure_server_cert(directory: Path, names: list[str], days: int = 825) -> ServerFiles:
    """A server certificate for NAMES (DNS names or IP addresses), signed by the local CA."""
    return issue(directory, names, ExtendedKeyUsageOID.SERVER_AUTH, directory / "server.pem", directory / "server.key",
                 days)


def issue(ca_dir: Path, names: list[str], purpose: x509.ObjectIdentifier, cert_path: Path, key_path: Path,
          days: int = 825) -> ServerFiles:
    """A certificate for NAMES (the first is its common name; DNS names or IP addresses become its
    subject alternative names) for PURPOSE (server or client authentication), signed by the local
    CA in CA_DIR. Existing files are kept."""
    ca_cert, ca_key = ensure_ca(ca_dir)
    files = ServerFiles(ca_cert=ca_dir / "ca.pem", cert=cert_path, key=key_path)
    if files.cert.exists() and files.key.exists():
        if files.key.stat().st_mode & 0o077:
            files.key.chmod(0o600)
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # libvirt (GnuTLS) refuses a certificate whose usage leaves out key encipherment, whatever the key
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    private_dir(key_path.parent)
    write_private(files.key, _pem_key(key))
    write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


CLIENT_NAME = "shiftdesk-control-plane"  # what a libvirt host admits (its tls_allowed_dn_list)


def ensure_libvirt_client(ca_dir: Path, out: Path, name: str = CLIENT_NAME) -> Path:
    """A libvirt client `pkipath` directory (cacert.pem, clientcert.pem, clientkey.pem): the local
    CA and a client certificate named NAME, with which the control plane reaches its hosts over
    qemu+tls://. Existing files are kept."""
    files = issue(ca_dir, [name], ExtendedKeyUsageOID.CLIENT_AUTH, out / "clientcert.pem", out / "clientkey.pem")
    if not (out / "cacert.pem").exists():
        write_private(out / "cacert.pem", files.ca_cert.read_bytes())
    return out


def ensure_libvirt_server(ca_dir: Path, address: str, out: Path) -> ServerFiles:
    """What a libvirt host presents over TLS (its certificate for ADDRESS, a DNS name or an IP
    address), signed by the local CA the control plane's client certificate comes from."""
    files = issue(ca_dir, [address], ExtendedKeyUsageOID.SERVER_AUTH, out / "servercert.pem", out / "serverkey.pem")
    if not (out / "cacert.pem").exists():
        write_private(out / "cacert.pem", files.ca_cert.read_bytes())
    return ServerFiles(ca_cert=out / "cacert.pem", cert=files.cert, key=files.key)
