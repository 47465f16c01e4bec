"""The hypervisor of each registered host, opened by its URI once and kept.

Every step on a desktop goes to the hypervisor of the desktop's own host (`Context.driver`), so
one control plane drives many libvirt hosts. The control plane's own host keeps the hypervisor
`main.py` wired (`Context.hypervisor`); every other host's is opened here on first use, and
opened again if an admin changes the host's URI. A host whose hypervisor cannot be opened is a
TemporaryError: its desktops wait, the others go on. The host's row is looked at again at most
every RECHECK_S: a pass makes a step on thousands of desktops, and each asks for its host's driver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from controlplane.db import hosts
from controlplane.db.engine import session_scope
from controlplane.domain.ports import Hypervisor
from controlplane.errors import ShiftDeskError, TemporaryError

log = logging.getLogger(__name__)
Connect = Callable[[str, str], Hypervisor]  # a host's name and URI -> its hypervisor


class Fleet:
    def __init__(self, engine: Engine, connect: Connect, *, retry_s: float = 30.0, recheck_s: float = 5.0) -> None:
        self.engine = engine
        self.connect = connect
        self.retry_s = retry_s
        self.recheck_s = recheck_s
        self._open: dict[int, tuple[str, Hypervisor]] = {}
        self._checked: dict[int, float] = {}  # host id -> when its row was last read (monotonic)
        self._lock = threading.Lock()
        self._on_change: Callable[[], None] | None = None

    def watch(self, on_change: Callable[[], None]) -> None:
        """`Hypervisor.watch` on every host's hypervisor, those opened now and those opened later."""
        with self._lock:
            self._on_change = on_change
            opened = [driver for _uri, driver in self._open.values()]
        for driver in opened:
            driver.watch(on_change)

    def driver(self, host_id: int) -> Hypervisor:
        """HOST_ID's hypervisor. TemporaryError if the host is unknown or cannot be reached."""
        with self._lock:
            known = self._open.get(host_id)
            if known is not None and time.monotonic() - self._checked.get(host_id, -1e9) < self.recheck_s:
                return known[1]
        with session_scope(self.engine) as session:
            row = hosts.get(session=session, host_id=host_id)
            name, uri = (row.name, row.uri) if row is not None else ("", None)
        if uri is None:
            raise TemporaryError(f"host {host_id} is not registered", delay=self.retry_s)
        with self._lock:
            known = self._open.get(host_id)
            if known is not None and known[0] == uri:
                self._checked[host_id] = time.monotonic()
                return known[1]
            try:
                driver = self.connect(name, uri)
            except ShiftDeskError as err:
                raise TemporaryError(f"host {name} ({uri}): {err}", delay=self.retry_s) from err
            self._open[host_id] = (uri, driver)
            self._checked[host_id] = time.monotonic()
            if self._on_change is not None:
                driver.watch(self._on_change)
            log.info("host %s: hypervisor opened at %s", name, uri)
            return driver
