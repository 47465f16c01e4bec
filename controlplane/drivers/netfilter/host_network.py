"""The host side of the desktop network: a Linux bridge, the nftables tables of ruleset.py,
dnsmasq as the DHCP server that hands each known MAC its one address, and (with egress) the
Squid web gate of proxy.py.

Declarative and idempotent, the way the reconciler likes it: `sync(nics)` makes the host admit
exactly NICS, whatever it found (a missing bridge, a flushed ruleset, a dead dnsmasq, ports of
desktops that are gone), and does nothing when all is already as wanted. `admit(nic)` adds one
desktop before its NIC comes up, without waiting for the next pass.

dnsmasq runs as its own unprivileged user (it parses what untrusted guests send), serves DHCP
only (`port=0`: the resolver is another process) and answers only the MACs in its hosts file.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import signal
import subprocess
import threading
from collections.abc import Collection
from ipaddress import IPv4Network
from pathlib import Path

from controlplane.domain.network import DesktopNetwork, DesktopNic
from controlplane.drivers.netfilter import daemons, ruleset
from controlplane.drivers.netfilter.proxy import SquidProxy
from controlplane.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)
DIGEST = re.compile(r'comment "shiftdesk digest=([0-9a-f]{16})"')
DHCP_USER = "dnsmasq"


def _run(*cmd: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise TemporaryError(f"{cmd[0]} {' '.join(cmd[1:3])}: {result.stderr.strip()[:300]}", delay=5)
    return result


def nft(script: str) -> None:
    """Load an nft script atomically: all of it or nothing."""
    _run("nft", "-f", "-", stdin=script)


class LinuxHostNetwork:
    def __init__(self, instance: str, network: DesktopNetwork, state_dir: Path,
                 proxy: SquidProxy | None = None) -> None:
        self.instance, self.network, self.state_dir, self.proxy = instance, network, state_dir, proxy
        self._lock = threading.Lock()
        self._wanted: dict[str, DesktopNic] = {}
        self._applied: frozenset[DesktopNic] | None = None  # what the host was last given

    # --- the port --------------------------------------------------------------------------

    def sync(self, nics: Collection[DesktopNic]) -> None:
        with self._lock:
            self._wanted = {nic.name: nic for nic in nics}
            self._converge()

    def admit(self, nic: DesktopNic) -> None:
        """Between two syncs (which check the whole host), only the new port is applied."""
        with self._lock:
            self._wanted[nic.name] = nic
            if self._applied is None:
                self._converge()
            else:
                self._apply_ports()

    def remove(self) -> None:
        """Take the whole desktop network off the host (tests, uninstall): tables, DHCP, bridge."""
        with self._lock:
            nft(ruleset.delete_tables(self.instance))
            self._stop_dhcp()
            if self.proxy is not None:
                self.proxy.stop()
            _run("ip", "link", "del", self.network.bridge, check=False)
            self._applied = None

    # --- converging --------------------------------------------------------------------------

    def _converge(self) -> None:
        if self._ensure_bridge() | self._ensure_tables():
            self._applied = None  # a new bridge or table holds no ports yet
        self._apply_ports()
        self._ensure_dhcp()
        if self.proxy is not None:
            self.proxy.ensure()

    def _apply_ports(self) -> None:
        wanted = frozenset(self._wanted.values())
        if wanted != self._applied:
            nft(ruleset.port_elements(self.instance, list(wanted)))
            self._write_hosts(wanted)
            self._applied = wanted

    def _ensure_bridge(self) -> bool:
        """The bridge, up, with the host's address and no IPv6. True when anything was missing."""
        br, net = self.network.bridge, self.network
        changed = False
        if _run("ip", "link", "show", "dev", br, check=False).returncode != 0:
            _run("ip", "link", "add", br, "type", "bridge")
            changed = True
        ipv6 = Path(f"/proc/sys/net/ipv6/conf/{br}/disable_ipv6")
        if ipv6.exists() and ipv6.read_text().strip() != "1":
            ipv6.write_text("1\n")
        address = f"{net.host}/{net.subnet.prefixlen}"
        if address not in _run("ip", "-o", "-4", "addr", "show", "dev", br).stdout:
            _run("ip", "addr", "replace", address, "dev", br)
            changed = True
        _run("ip", "link", "set", br, "up")
        # desktops reach what their policy allows through the host; the forward chain of our
        # table decides what a desktop may send, so forwarding is on for IPv4 (never for IPv6)
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        if forward.read_text().strip() != "1":
            forward.write_text("1\n")
        return changed

    def _ensure_tables(self) -> bool:
        """Both tables as ruleset.py says. A table missing or out of date is replaced (atomically),
        and only that one: the other keeps its sets (the resolver's opened addresses)."""
        stale = []
        for table in ruleset.tables(self.instance, self.network):
            listing = _run("nft", "list", "table", table.family, table.name, check=False).stdout
            found = DIGEST.search(listing)
            if found is None or found.group(1) != table.digest:
                stale.append(table)
        if stale:
            log.info("desktop network: loading nftables tables %s", ", ".join(t.family for t in stale))
            nft(ruleset.replace_tables(stale))
        return bool(stale)

    # --- DHCP --------------------------------------------------------------------------------

    @property
    def _dhcp_dir(self) -> Path:
        return self.state_dir / "dhcp"

    def _write_hosts(self, nics: Collection[DesktopNic]) -> None:
        lines = sorted(f"{nic.mac},{nic.ipv4}\n" for nic in nics)
        _atomic_write(self.state_dir / "dhcp-hosts", "".join(lines), 0o644)
        pid = self._dhcp_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)  # dnsmasq re-reads its hosts file

    def _config(self) -> str:
        net, d = self.network, self._dhcp_dir
        return "".join(f"{line}\n" for line in (
            "port=0", f"interface={net.bridge}", "bind-interfaces", "except-interface=lo",
            f"dhcp-range={net.first},static,{net.subnet.netmask},1h",
            f"dhcp-hostsfile={self.state_dir / 'dhcp-hosts'}", f"dhcp-leasefile={d / 'leases'}",
            f"dhcp-option=option:router,{net.host}", f"dhcp-option=option:dns-server,{net.host}",
            "dhcp-authoritative", "dhcp-ignore=tag:!known", "no-resolv", "no-hosts", "no-ping",
            f"user={DHCP_USER}", f"pid-file={d / 'dnsmasq.pid'}", f"log-facility={d / 'dnsmasq.log'}",
            "log-dhcp",
        ))

    def _ensure_dhcp(self) -> None:
        conf = self.state_dir / "dnsmasq.conf"
        text = self._config()
        if conf.exists() and conf.read_text() == text and self._dhcp_pid() is not None:
            return
        self._stop_dhcp()
        self.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._dhcp_dir.mkdir(mode=0o700, exist_ok=True)
        try:
            user = pwd.getpwnam(DHCP_USER)
        except KeyError as err:
            raise PermanentError(f"network: no user {DHCP_USER!r} (install dnsmasq-base)") from err
        os.chown(self._dhcp_dir, user.pw_uid, user.pw_gid)
        _atomic_write(conf, text, 0o644)
        if not (self.state_dir / "dhcp-hosts").exists():
            self._write_hosts(self._applied or ())
        _run("dnsmasq", f"--conf-file={conf}")

    def _dhcp_pid(self) -> int | None:
        """dnsmasq's pid when it is ours and alive (its command line names our config)."""
        return daemons.pid_of(self._dhcp_dir / "dnsmasq.pid", str(self.state_dir / "dnsmasq.conf").encode())

    def _stop_dhcp(self) -> None:
        daemons.stop(self._dhcp_pid())


def host_addresses() -> list[IPv4Network]:
    """The host's own IPv4 addresses (as /32s): no DNS answer may point a desktop at them."""
    out = _run("ip", "-o", "-4", "addr", "show").stdout
    return [IPv4Network(f"{fields[3].split('/')[0]}/32") for fields in (line.split() for line in out.splitlines())
            if len(fields) > 3 and fields[2] == "inet"]


def resolv_conf_servers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's own resolvers, for the desktops' resolver to ask."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [parts[1] for parts in (line.split() for line in lines) if len(parts) > 1 and parts[0] == "nameserver"
            and ":" not in parts[1]]


def _atomic_write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)
