"""What holds for a running domain until it stops: its tag, and whether its serial line said ready.

Every reconcile pass observes every domain of every host. Reading a domain's tag is a call to its
libvirtd (over the network for another host) and its serial readiness a read of its log file, and
neither changes while the domain runs: the tag a running domain reports is its live copy, fixed at
start (the one edit, `_booted_not_restored`, changes the persistent copy of a stopped domain), and
a boot that said ready stays ready until it stops. So each is asked once per boot.

A boot is keyed by the domain's UUID and its ID: libvirt gives a domain a new ID at every start
and -1 while it is stopped, and the listing carries it, so telling boots apart costs no call.
Stopped domains are never cached (their persistent tag can change). Boots a listing no longer
shows are forgotten, and everything is when the connection is opened again (a restarted libvirtd
may number domains afresh).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from controlplane.drivers.libvirt.domxml import Tag

Boot = tuple[str, int]  # (UUID, domain ID) of a running domain


class BootFacts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tags: dict[Boot, Tag | None] = {}
        self._ready: set[Boot] = set()

    def tag(self, boot: Boot, read: Callable[[], Tag | None]) -> Tag | None:
        """BOOT's tag, READ once per boot."""
        with self._lock:
            if boot in self._tags:
                return self._tags[boot]
        tag = read()
        with self._lock:
            self._tags[boot] = tag
        return tag

    def said_ready(self, boot: Boot) -> bool:
        with self._lock:
            return boot in self._ready

    def note_ready(self, boot: Boot) -> None:
        with self._lock:
            self._ready.add(boot)

    def keep_only(self, boots: Iterable[Boot]) -> None:
        """Forget every boot but BOOTS (the ones a full listing of the host just showed)."""
        keep = set(boots)
        with self._lock:
            self._tags = {b: t for b, t in self._tags.items() if b in keep}
            self._ready &= keep

    def clear(self) -> None:
        with self._lock:
            self._tags.clear()
            self._ready.clear()
