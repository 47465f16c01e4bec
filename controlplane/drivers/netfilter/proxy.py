"""Squid (Debian's squid-openssl) as the desktops' web gate: every TCP connection a desktop opens
to port 80 or 443 of an address the resolver opened for it is redirected here (nftables), and
Squid lets it through only when the name inside agrees with the desktop's policy too: the TLS
client hello's SNI (peeked, then spliced: no interception CA in the guest, nothing decrypted)
or the HTTP Host header. An address shared by a permitted and a forbidden name (a CDN) so
carries only the permitted one. Connections without an acceptable name are terminated.

The decision is made by controlplane/resolver/proxy_helper.py from the allowlists the resolver
publishes; Squid runs as `proxy`, caches nothing and logs no URLs.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.domain.network import DesktopNetwork
from controlplane.drivers.netfilter import daemons
from controlplane.errors import PermanentError, TemporaryError

FORWARD_PORT, HTTP_PORT, TLS_PORT = 3128, 3129, 3130
PROXY_USER = "proxy"
CERTGEN = "/usr/lib/squid/security_file_certgen"
# Squid runs the helper as `proxy`: with Debian's Python (a venv's interpreter may live where
# `proxy` cannot go) and only the standard library and controlplane/domain, which are pure
HELPER_PYTHON = "/usr/bin/python3"
HELPER = Path(__file__).resolve().parents[2] / "resolver" / "proxy_helper.py"


class SquidProxy:
    def __init__(self, network: DesktopNetwork, state_dir: Path, upstream_dns: list[str]) -> None:
        self.network, self.dir, self.upstream_dns = network, state_dir / "squid", upstream_dns

    @property
    def allowlists_file(self) -> Path:
        return self.dir / "allowlists.json"

    @property
    def refusals_file(self) -> Path:
        return self.dir / "refusals.log"

    def config(self) -> str:
        host, d = self.network.host, self.dir
        helper = f"{HELPER_PYTHON} -s {HELPER} {self.allowlists_file} {self.refusals_file}"
        return "\n".join([
            "# ShiftDesk: the desktops' web gate (drivers/netfilter/proxy.py writes this file)",
            f"http_port {host}:{FORWARD_PORT} name=forward",  # Squid insists on one; nobody may use it
            f"http_port {host}:{HTTP_PORT} intercept name=web",
            f"https_port {host}:{TLS_PORT} intercept ssl-bump tls-cert={d / 'proxy.pem'} name=tls",
            f"pid_filename {d / 'squid.pid'}",
            f"cache_log {d / 'cache.log'}",
            "access_log none", "cache deny all", "cache_mem 8 MB", "logfile_rotate 0", "read_ahead_gap 1 MB",
            f"coredump_dir {d}", f"cache_effective_user {PROXY_USER}",
            f"sslcrtd_program {CERTGEN} -s {d / 'ssl_db'} -M 4MB", "sslcrtd_children 1 startup=0 idle=1",
            "visible_hostname shiftdesk-egress", "via off", "forwarded_for delete", "httpd_suppress_version_string on",
            f"dns_nameservers {' '.join(self.upstream_dns)}" if self.upstream_dns else "",
            "host_verify_strict on",  # an HTTP Host must resolve to the address the desktop dialled
            f"external_acl_type sd_sni ttl=0 negative_ttl=0 children-max=4 children-startup=1 concurrency=50 "
            f"%>a %ssl::>sni {helper} sni",
            f"external_acl_type sd_host ttl=0 negative_ttl=0 children-max=4 children-startup=1 concurrency=50 "
            f"%>a %>rd {helper} host",
            "acl tls myportname tls", "acl web myportname web",
            "acl sni_ok external sd_sni", "acl host_ok external sd_host",
            "acl step1 at_step SslBump1",
            "ssl_bump peek step1", "ssl_bump splice sni_ok", "ssl_bump terminate all",
            "http_access allow tls",  # the TLS decision is ssl_bump's, on the name the client sent
            "http_access allow web host_ok",
            "http_access deny all",
            "",
        ])

    def ensure(self) -> None:
        """Squid running with the current config (restarted when it changed). Idempotent."""
        conf = self.dir / "squid.conf"
        text = self.config()
        if conf.exists() and conf.read_text() == text and self.pid() is not None:
            return
        self.stop()
        self._prepare(text)
        done = subprocess.run(["squid", "-f", str(conf)], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise TemporaryError(f"squid: {done.stderr.strip()[-300:]}", delay=5)
        for _ in range(100):
            if self.pid() is not None:
                return
            time.sleep(0.05)
        raise TemporaryError(f"squid did not start; see {self.dir / 'cache.log'}", delay=5)

    def _prepare(self, text: str) -> None:
        try:
            user = pwd.getpwnam(PROXY_USER)
        except KeyError as err:
            raise PermanentError(f"network: no user {PROXY_USER!r} (install squid-openssl)") from err
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.chown(self.dir, 0, user.pw_gid)
        self.dir.chmod(0o770)
        if not (self.dir / "proxy.pem").exists():
            _write_cert(self.dir / "proxy.pem", user.pw_gid)
        for path in (self.refusals_file, self.dir / "cache.log"):
            path.touch()
            os.chown(path, user.pw_uid, user.pw_gid)
        if not (self.dir / "ssl_db").exists():  # the certificate store ssl-bump wants, unused by splicing
            subprocess.run(["runuser", "-u", PROXY_USER, "--", CERTGEN, "-c", "-s", str(self.dir / "ssl_db"),
                            "-M", "4MB"], capture_output=True, check=True, timeout=30)
        if not self.allowlists_file.exists():
            self.allowlists_file.write_text("{}")
            self.allowlists_file.chmod(0o644)
        (self.dir / "squid.conf").write_text(text)

    def pid(self) -> int | None:
        return daemons.pid_of(self.dir / "squid.pid", str(self.dir / "squid.conf").encode())

    def stop(self) -> None:
        daemons.stop(self.pid(), signal.SIGINT)  # Squid's "shut down now" (SIGTERM waits for clients)


def self_signed_pem(common_name: str, days: int) -> bytes:
    """A new EC key and a self-signed certificate for it, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)


def _write_cert(path: Path, gid: int) -> None:
    """Squid wants a certificate on an ssl-bump port even though it only peeks and splices: a
    throwaway self-signed one that no client is ever shown."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "wb") as fh:
        fh.write(self_signed_pem("shiftdesk-egress (never presented)", 3650))
    os.chown(path, 0, gid)
