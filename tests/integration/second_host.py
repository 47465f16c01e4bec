"""A second libvirt host on this machine, reached over TLS as a host on the network would be.

It has its own network namespace (10.254.2.2, behind a veth pair whose host end is 10.254.2.1),
its own mount namespace (its own /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt,
/var/log/libvirt, a tmpfs /run/libvirt, /run/shiftdesk, where its desktop network keeps its
DHCP and proxy state: ROOT/run-shiftdesk, which tests read, and its own DATA_DIR/hosts/host-b,
where its overlays, serial logs, join secrets, template save files and restore fifos are: what
the control plane sees at that path is another, empty directory, as for a host on the network),
and its own virtlogd and libvirtd, listening for TLS only. Certificates come from ShiftDesk's
local CA: the daemon's for 10.254.2.2, and a client certificate for the control plane; the
daemon admits only clients whose certificate names the control plane (`tls_allowed_dn_list`).
Stopping it (or `kill()`, a power cut) ends every process in its namespace, QEMU included, and
removes the namespace and the veth pair.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from controlplane.drivers.local_ca import CLIENT_NAME, ensure_libvirt_client, ensure_libvirt_server
from tests.conftest import database_env

ROOT = Path(__file__).resolve().parents[2]
NS = "sd-host2"
HOST_LEASE_TTL_S = 6  # its host agent's; short, so tests wait seconds for fencing, not minutes
HOST_END, NS_END = "sd-h2-host", "sd-h2-ns"
HOST_IP, ADDRESS = "10.254.2.1", "10.254.2.2"
STATE_DIRS = {"etc": "/etc/libvirt", "lib": "/var/lib/libvirt", "cache": "/var/cache/libvirt",
              "log": "/var/log/libvirt"}


@dataclass
class SecondHost:
    root: Path
    pki: Path

    @property
    def uri(self) -> str:
        return f"qemu+tls://{ADDRESS}/system?pkipath={self.pki}"

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", NS], capture_output=True, text=True, check=False).stdout
        return [int(p) for p in out.split()]

    def inside(self, *cmd: str) -> list[str]:
        """CMD, to run in the second host's mount namespace (it sees that host's own files)."""
        return ["nsenter", f"--mount=/proc/{self.pids()[0]}/ns/mnt", *cmd]

    def kill(self) -> None:
        """The host dies at once: libvirtd, virtlogd and every QEMU of it, with SIGKILL."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait(lambda: not self.pids(), 10, "the second host's processes did not die")


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)[:200]}: exit {done.returncode}: {done.stderr.strip()}")


def _wait(done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _listening() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((ADDRESS, 16514)) == 0


def _teardown() -> None:
    out = subprocess.run(["ip", "netns", "pids", NS], capture_output=True, text=True, check=False).stdout
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", HOST_END], capture_output=True, check=False)


def _config(root: Path, ca_dir: Path) -> None:
    for name in STATE_DIRS:
        (root / name).mkdir(mode=0o755, parents=True, exist_ok=True)  # as Debian has them: QEMU runs unprivileged
        (root / name).chmod(0o755)
    for conf in Path("/etc/libvirt").glob("*.conf"):  # settings only: no domain, pool or network of host 1
        shutil.copyfile(conf, root / "etc" / conf.name)
    server = ensure_libvirt_server(ca_dir, ADDRESS, root / "pki")
    (root / "etc" / "libvirtd.conf").write_text(
        "listen_tls = 1\nlisten_tcp = 0\n"
        f'listen_addr = "{ADDRESS}"\n'
        f'key_file = "{server.key}"\ncert_file = "{server.cert}"\nca_file = "{server.ca_cert}"\n'
        'auth_tls = "none"\n'  # the client certificate is the authentication
        f'tls_allowed_dn_list = ["O=ShiftDesk local CA,CN={CLIENT_NAME}"]\n'
        'unix_sock_group = "root"\nunix_sock_rw_perms = "0700"\n')


def agent_command(name: str, env: dict[str, str], log: Path) -> str:
    """The shell line that starts `shiftdesk host-agent NAME` in the background, with ENV."""
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    command = f"{shlex.quote(sys.executable)} -m controlplane.cli host-agent {shlex.quote(name)}"
    return f"cd {shlex.quote(str(ROOT))} && env {assignments} {command} >{shlex.quote(str(log))} 2>&1 &"


@contextlib.contextmanager
def second_host(root: Path, ca_dir: Path, agent: str = "", own: Path | None = None) -> Iterator[SecondHost]:
    """The second host; AGENT (agent_command's line), when given, runs in its namespaces too,
    beside its libvirtd, and dies with it. OWN, when given, is a directory of the control plane's
    that the second host has a private one of its own at (ROOT/own)."""
    _teardown()  # what a killed run left
    _config(root, ca_dir)
    host = SecondHost(root=root, pki=ensure_libvirt_client(ca_dir, root / "client"))
    try:
        _run("ip", "netns", "add", NS)
        _run("ip", "link", "add", HOST_END, "type", "veth", "peer", "name", NS_END)
        _run("ip", "link", "set", NS_END, "netns", NS)
        _run("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_END)
        _run("ip", "link", "set", HOST_END, "up")
        for cmd in (["ip", "addr", "add", f"{ADDRESS}/24", "dev", NS_END], ["ip", "link", "set", NS_END, "up"],
                    ["ip", "link", "set", "lo", "up"]):
            _run("ip", "netns", "exec", NS, *cmd)
        (root / "run-shiftdesk").mkdir(mode=0o755, exist_ok=True)
        Path("/run/shiftdesk").mkdir(mode=0o755, exist_ok=True)  # the mount point
        binds = [*STATE_DIRS.items(), ("run-shiftdesk", "/run/shiftdesk")]
        if own is not None:
            own.mkdir(mode=0o700, parents=True, exist_ok=True)  # the mount point
            (root / "own").mkdir(mode=0o700, exist_ok=True)
            binds.append(("own", str(own)))
        mounts = "\n".join(f"mount --bind {root / name} {shlex.quote(str(target))}" for name, target in binds)
        script = (f"set -e\n{mounts}\nmount -t tmpfs -o mode=0755 tmpfs /run/libvirt\n"
                  "virtlogd -d -p /run/libvirt/virtlogd.pid\nlibvirtd -d --listen -p /run/libvirt/libvirtd.pid\n"
                  f"{agent}\n")
        _run("ip", "netns", "exec", NS, "unshare", "-m", "--propagation", "private", "sh", "-c", script)
        _wait(_listening, 60, f"libvirtd of the second host does not listen on {ADDRESS}:16514")
        yield host
    finally:
        _teardown()


@contextlib.contextmanager
def second_host_with_agent(settings, **env: str) -> Iterator[SecondHost]:
    """The second host, with its host agent running beside its libvirtd (on SETTINGS' database,
    with ENV added to its environment)."""
    root = Path(tempfile.mkdtemp(prefix="shiftdesk-host2-", dir="/var/tmp"))
    env = {"SHIFTDESK_DATA_DIR": str(settings.data_dir), "SHIFTDESK_INSTANCE": settings.instance,
           "SHIFTDESK_LIBVIRT__URI": "qemu:///system", "SHIFTDESK_RECONCILER__HOST_LEASE_TTL_S": str(HOST_LEASE_TTL_S),
           # its consoles, relayed over TLS with the host's own certificate (the one its libvirtd has)
           "SHIFTDESK_CONSOLE__LISTEN": ADDRESS, "SHIFTDESK_CONSOLE__PKI_DIR": str(root / "pki"),
           **database_env(settings), **env}
    try:
        with second_host(root, settings.data_dir / "tls", agent_command("host-b", env, root / "agent.log"),
                         own=settings.data_dir / "hosts" / "host-b") as h:
            yield h
    finally:
        shutil.rmtree(root, ignore_errors=True)
