"""libvirt's event loop, run once per process, so that connections to other hosts keep alive.

A connection to a host on the network (qemu+tls://) whose host dies would otherwise hang every
call, and even its close, until TCP gives up (many minutes). With the event loop running, the
client sends keepalive probes (`virConnectSetKeepAlive`) and closes a connection whose peer has
not answered INTERVAL x COUNT seconds; its calls then fail at once and the host is "down".
The loop must be registered before the first connection is opened.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

import libvirt

log = logging.getLogger(__name__)
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
_started = threading.Lock()
_thread: threading.Thread | None = None


def ensure_running() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once per process)."""
    global _thread
    with _started:
        if _thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _thread = threading.Thread(target=_run, name="libvirt-events", daemon=True)
        _thread.start()


def _run() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            log.exception("libvirt event loop iteration failed")


def remote(uri: str) -> bool:
    """A URI that reaches libvirtd over the network (a transport in its scheme: qemu+tls, qemu+ssh)."""
    return "+" in uri.partition(":")[0]


def remote_address(uri: str) -> str | None:
    """The host a network URI names (qemu+tls://10.0.0.2/system: 10.0.0.2); None for a libvirt
    of this machine (qemu:///system, qemu+unix:///system, test:///default)."""
    scheme = uri.partition(":")[0]
    if not remote(uri) or scheme.endswith("+unix"):
        return None
    host = urlsplit(uri).hostname
    return host or None


def keep_alive(conn: libvirt.virConnect) -> None:
    """Probe the peer every KEEPALIVE_INTERVAL_S; give the connection up after KEEPALIVE_COUNT misses."""
    conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
