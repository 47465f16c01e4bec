"""A network lab on this host, for the egress tests and bench/enforcement.py: a small internet in
a network namespace, and desktops that are network namespaces plugged into the host's desktop
bridge through ports named and addressed exactly as a desktop's NIC would be.

The internet (`Internet`) has public-looking addresses reached only through a veth from the
host (a route for 93.184.216.32/29 via the namespace, removed with the veth): an upstream DNS
server (dnsmasq), a web server on port 80, a TLS server on SHARED:443 (files, or an echo for a
long-lived connection),
a UDP listener on 443 (QUIC) and one on TCP 853 (DNS-over-TLS). Every name the lab uses:

    crm.example.com -> CRM        shop.example.com, forbidden.example.org -> SHARED (one CDN address)
    other.example.com -> ELSEWHERE    rebind.example.com -> the host's own veth address

Everything is named after an installation tag, so bench/cleanup.py can sweep what a killed run left.
One lab at a time on a host: they share the route to the lab's addresses (a second one fails to
start, saying the route exists).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from controlplane.domain.network import DesktopNetwork, DesktopNic
from controlplane.drivers.netfilter.proxy import self_signed_pem

CRM, SHARED, ELSEWHERE = "93.184.216.34", "93.184.216.35", "93.184.216.36"
LAB_ROUTE = "93.184.216.32/29"


# TLS on SHARED:443 only (the CRM speaks plain HTTP: a browser's HTTPS-First attempt fails fast and
# falls back): "GET /NAME" gets the file NAME from the web directory (HTTP/1.0); anything else is
# echoed back, for as long as the connection lives
TLS_SERVER = """import os, socket, ssl, threading
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); tls.load_cert_chain(PEM)
s = socket.create_server((SHARED, 443))
def serve(c):
    try:
        c = tls.wrap_socket(c, server_side=True)
        first = c.recv(4096)
        if first.startswith(b'GET /'):
            path = os.path.join(WWW, os.path.basename(first.split()[1].decode()))
            c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % os.path.getsize(path))
            with open(path, 'rb') as fh:
                while (chunk := fh.read(1 << 20)):
                    c.sendall(chunk)
            c.close()
            return
        data = first
        while data:
            c.sendall(data)
            data = c.recv(100)
    except OSError:
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def sh(*cmd: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=stdin)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done


@dataclass
class FakeDesktop:
    """A namespace whose eth0 is the far end of a port named like the desktop's tap."""

    ns: str
    nic: DesktopNic

    def plug(self, net: DesktopNetwork, *, default_route: bool = False) -> None:
        """Create the namespace and its port; the bridge must exist (host network synced)."""
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.nic.tap, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "link", "set", self.nic.tap, "master", net.bridge, "up")
        self.run("ip", "link", "set", "eth0", "address", self.nic.mac)
        self.run("ip", "addr", "add", f"{self.nic.ipv4}/{net.subnet.prefixlen}", "dev", "eth0")
        self.run("ip", "link", "set", "eth0", "up")
        self.run("ip", "link", "set", "lo", "up")
        if default_route:
            self.run("ip", "route", "add", "default", "via", str(net.host))
            resolv = Path("/etc/netns") / self.ns / "resolv.conf"  # `ip netns exec` mounts it
            resolv.parent.mkdir(parents=True, exist_ok=True)
            resolv.write_text(f"nameserver {net.host}\noptions timeout:2 attempts:1\n")

    def unplug(self) -> None:
        sh("ip", "netns", "del", self.ns, check=False)
        sh("ip", "link", "del", self.nic.tap, check=False)
        shutil.rmtree(Path("/etc/netns") / self.ns, ignore_errors=True)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *cmd, check=check)

    def python(self, code: str) -> str:
        return self.run("python3", "-c", code).stdout.strip()

    def udp(self, host: IPv4Address, port: int, source: IPv4Address | None = None) -> str | None:
        """Send one datagram from the namespace and return the echo, or None within 1.5 s."""
        bind = f"s.bind(('{source}', 0))" if source else ""
        return self.python(f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); {bind}\n"
                           f"s.settimeout(1.5); s.sendto(b'ping', ('{host}', {port}))\n"
                           "try: print(s.recv(100).decode())\nexcept OSError: print('')") or None

    def tcp(self, host: IPv4Address, port: int) -> bool:
        return self.python(f"import socket; s = socket.socket(); s.settimeout(1.5)\n"
                           f"try: s.connect(('{host}', {port})); print('open')\nexcept OSError: print('')") == "open"

    def fetch(self, url: str) -> str:
        """GET URL (names through the namespace's resolv.conf: the host's resolver)."""
        return self.python(f"import urllib.request\ntry: print(urllib.request.urlopen('{url}', timeout=3).read()"
                           ".decode())\nexcept Exception as e: print('ERROR', type(e).__name__, e)")

    def tls(self, address: str, sni: str) -> str:
        """A TLS handshake to ADDRESS:443 naming SNI, then one echo: 'echo' or the error."""
        return self.python("import socket, ssl\nctx = ssl.create_default_context(); ctx.check_hostname = False\n"
                           "ctx.verify_mode = ssl.CERT_NONE\ntry:\n"
                           f" s = ctx.wrap_socket(socket.create_connection(('{address}', 443), timeout=3), "
                           f"server_hostname='{sni}')\n s.sendall(b'echo'); print(s.recv(10).decode())\n"
                           "except Exception as e: print('ERROR', type(e).__name__)")

    def lookup(self, name: str) -> str:
        return self.python(f"import socket\ntry: print(socket.gethostbyname('{name}'))\n"
                           "except OSError as e: print('ERROR', e)")


@dataclass
class Internet:
    tag: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ns, self.up = f"{self.tag}-inet", f"{self.tag}-up"
        third = secrets.randbelow(200) + 20
        self.host_side, self.far_side = f"10.232.{third}.1", f"10.232.{third}.2"
        self.www = Path(f"/run/shiftdesk/{self.tag}/www")

    def _spawn(self, *cmd: str) -> None:
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))

    def start(self, big_file_mib: int = 0) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.up, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_side}/30", "dev", self.up)
        sh("ip", "link", "set", self.up, "up")
        inside = ["ip", "netns", "exec", self.ns]
        sh(*inside, "ip", "addr", "add", f"{self.far_side}/30", "dev", "eth0")
        sh(*inside, "ip", "link", "set", "eth0", "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        for address in (CRM, SHARED, ELSEWHERE):
            sh(*inside, "ip", "addr", "add", f"{address}/32", "dev", "lo")
        sh("ip", "route", "add", LAB_ROUTE, "via", self.far_side)
        self.www.mkdir(parents=True, exist_ok=True)
        (self.www / "index.html").write_text(  # orange: what the e2e test looks for on the desktop's screen
            '<!doctype html><html><body style="background:#d35400;color:#fff"><h1>CRM</h1></body></html>\n')
        if big_file_mib:
            with (self.www / "big.bin").open("wb") as fh:
                fh.truncate(big_file_mib << 20)
        self._spawn("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                    f"--listen-address={self.far_side}", "--bind-interfaces", "--user=root", "--local-ttl=300",
                    f"--address=/crm.example.com/{CRM}", f"--address=/shop.example.com/{SHARED}",
                    f"--address=/forbidden.example.org/{SHARED}", f"--address=/other.example.com/{ELSEWHERE}",
                    f"--address=/rebind.example.com/{self.host_side}")
        self._spawn("python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", str(self.www))
        self._spawn("python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    "s.bind(('0.0.0.0', 443))\nwhile True:\n d, p = s.recvfrom(100); s.sendto(d, p)")
        self._spawn("python3", "-c", "import socket; s = socket.create_server(('0.0.0.0', 853))\n"
                    "while True:\n c, _ = s.accept(); c.sendall(b'dot'); c.close()")
        _self_signed(self.www / "tls.pem")
        self._spawn("python3", "-c", TLS_SERVER.replace("PEM", repr(str(self.www / "tls.pem")))
                    .replace("WWW", repr(str(self.www))).replace("SHARED", repr(SHARED)))
        time.sleep(1.0)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        sh("ip", "route", "del", LAB_ROUTE, check=False)
        sh("ip", "link", "del", self.up, check=False)
        sh("ip", "netns", "del", self.ns, check=False)
        shutil.rmtree(self.www, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.www.parent.rmdir()  # /run/shiftdesk/TAG, unless a desktop network of TAG still uses it


def _self_signed(path: Path) -> None:
    """The lab's web servers' certificate (clients in the lab do not verify it)."""
    path.write_bytes(self_signed_pem("lab.example.com", 1))


def purge(tag: str) -> None:
    """Everything of TAG's lab and desktop network, whatever is left (a killed run)."""
    for ns in sh("ip", "netns", "list", check=False).stdout.split():
        if ns.startswith(f"{tag}-"):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
    links = sh("ip", "-o", "link", "show", check=False).stdout.splitlines()
    for line in links:
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(f"{tag}-") or name == f"sd-{tag}":
            sh("ip", "link", "del", name, check=False)
    sh("ip", "route", "del", LAB_ROUTE, check=False)
    for family in ("bridge", "inet"):
        sh("nft", "delete", "table", family, f"sd_{tag}", check=False)
    sh("pkill", "-9", "-f", f"/run/shiftdesk/{tag}/", check=False)  # dnsmasq, squid and its helpers
    shutil.rmtree(Path("/run/shiftdesk") / tag, ignore_errors=True)
