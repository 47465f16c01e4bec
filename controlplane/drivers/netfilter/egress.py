"""The firewall side of egress: (desktop, address) pairs in the `allowed` set of our inet table,
each with a timeout, through libnftables in-process (a fraction of a millisecond per change:
the resolver opens an address before it answers, on the path of every new lookup).

Closing a pair also deletes the desktop's conntrack entries to that address, so a connection
its new policy forbids is cut at once rather than when it ends by itself."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Collection
from ipaddress import IPv4Address

import nftables  # Debian's python3-nftables (libnftables); the venv links it in (Makefile)

from controlplane.drivers.netfilter.ruleset import table_name
from controlplane.errors import TemporaryError


class NftEgressFirewall:
    def __init__(self, instance: str) -> None:
        self.table = table_name(instance)
        self._nft = nftables.Nftables()
        self._lock = threading.Lock()  # one libnftables context: one command at a time

    def _cmd(self, script: str) -> None:
        with self._lock:
            rc, _, err = self._nft.cmd(script)
        if rc != 0:
            raise TemporaryError(f"nft: {err.strip()[:300]}", delay=1)

    def open(self, desktop: IPv4Address, address: IPv4Address, seconds: int) -> None:
        """Let DESKTOP open connections to ADDRESS for SECONDS from now (a pair already open gets
        the new timeout: added, deleted and added again in one transaction)."""
        element = f"{{ {desktop} . {address} timeout {int(seconds)}s }}"
        bare = f"{{ {desktop} . {address} }}"
        self._cmd(f"add element inet {self.table} allowed {bare}\n"
                  f"delete element inet {self.table} allowed {bare}\n"
                  f"add element inet {self.table} allowed {element}")

    def restore(self, pairs: Collection[tuple[IPv4Address, IPv4Address, int]]) -> None:
        """`add` leaves an element that is there untouched (its timeout runs on) and puts back one
        that is missing, all in one transaction."""
        if pairs:
            elements = ", ".join(f"{d} . {a} timeout {max(int(s), 1)}s" for d, a, s in sorted(pairs))
            self._cmd(f"add element inet {self.table} allowed {{ {elements} }}")

    def close(self, desktop: IPv4Address, addresses: Collection[IPv4Address]) -> None:
        """No new connections from DESKTOP to ADDRESSES, and the open ones cut."""
        if not addresses:
            return
        pairs = ", ".join(f"{desktop} . {a}" for a in sorted(addresses))
        self._cmd(f"add element inet {self.table} allowed {{ {pairs} }}\n"
                  f"delete element inet {self.table} allowed {{ {pairs} }}")
        for address in addresses:
            subprocess.run(["conntrack", "-D", "-s", str(desktop), "-d", str(address)],
                           capture_output=True, timeout=10, check=False)  # none open: exit 1, fine
