"""The host end of each desktop's host channel: connect, read, check, bound, quarantine.

QEMU listens on a root-only Unix socket per desktop (domxml.HostChannel); the control plane is
the only client. What the guest says is untrusted input: one reader thread decodes it with
`guest_channel.Decoder` (at most one 16 KiB frame held per guest), a token bucket bounds
messages and bytes per second, and the first violation (bad framing, a schema error, a flood,
an identity that does not match what was sent) quarantines the guest: its socket is closed and
stays closed, and the desktop never reports ready again. The reconciler and the broker only
ever read `GuestState` snapshots; nothing the guest sends is acted on beyond those fields.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from controlplane.domain import guest_channel as ch
from controlplane.domain.token_bucket import TokenBucket

log = logging.getLogger(__name__)
READ_CHUNK = 4096


SILENCE_S = 60.0  # a confirmed guest's agent heartbeats every 5 s: a minute of silence is not a hiccup
APPLY_S = 120.0  # to apply an app allowlist (apply-apps' start and fapolicyd's reload, under TCG)
DENIED_PATHS = 64  # distinct denied paths a guest may report between two drains; the rest count as one
OTHER_PATHS = "(other paths)"


@dataclass(frozen=True)
class Budget:
    """Per guest: sustained messages and bytes per second, and the burst allowed above them."""

    messages_per_s: float = 20.0
    message_burst: float = 60.0
    bytes_per_s: float = 64 * 1024
    byte_burst: float = 128 * 1024


@dataclass(frozen=True)
class GuestState:
    """What the host knows about one guest, from this connection's messages only."""

    connected: bool = False
    agent: str | None = None  # from hello
    confirmed: bool = False  # the guest applied the identity we sent on this connection
    ready: bool = False  # a `ready` arrived after the confirmation: the session shows its window
    last_seen: float | None = None  # monotonic time of the last valid message
    quarantined: str | None = None  # why the host stopped listening to this guest, for good
    messages: int = 0
    page: str | None = None  # last page the guest says it shows
    rng_probe: str | None = None  # what its RNG gave right after the reseed (unique per desktop)
    apps_sent: int | None = None  # revision of the last app allowlist sent on this connection
    apps_applied: int | None = None  # the latest revision the guest says it applies
    # the guest still enforces its image's first allowlist (restored here, no list applied since)
    # and that list is within the one the host last offered it: it runs nothing it may not
    first_list_allowed: bool = False

    @property
    def apps_current(self) -> bool:
        """The guest applies the allowlist last sent (vacuously, if none was)."""
        return self.apps_sent == self.apps_applied


@dataclass
class _Expected:
    nonce: str
    hostname: str
    machine_id: str


class _Link:
    def __init__(self, sock: socket.socket, budget: Budget, clock: Callable[[], float]) -> None:
        self.sock = sock
        self.decoder = ch.Decoder(ch.Side.GUEST)
        self.state = GuestState(connected=True)
        self.expected: _Expected | None = None
        self.messages = TokenBucket(budget.messages_per_s, budget.message_burst, clock)
        self.bytes = TokenBucket(budget.bytes_per_s, budget.byte_burst, clock)
        self.send_lock = threading.Lock()
        self.apps_sent: dict[int, float] = {}  # revisions sent -> when (the latest few)
        self.denials: dict[str, int] = {}  # path -> executions denied since the last drain


Dial = Callable[[str, Path], socket.socket]  # a desktop and its channel's path -> a connected socket


def dial_unix(_name: str, path: Path) -> socket.socket:
    """The channel's Unix socket on this machine (OSError if it cannot be connected)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


class GuestLinks:
    """Every host-channel connection of one hypervisor, read by one background thread."""

    def __init__(self, budget: Budget = Budget(), clock: Callable[[], float] = time.monotonic,
                 policy_key: bytes = bytes(32), dial: Dial | None = None) -> None:
        self.budget = budget
        self.dial = dial or dial_unix  # another host's channels: through its relay (drivers/console_relay.py)
        self.policy_key = policy_key  # the public key guests pin to check app allowlists
        self.clock = clock
        self._links: dict[str, _Link] = {}
        self._quarantined: dict[str, str] = {}
        self._probes: dict[str, str] = {}  # rng_probe -> desktop that reported it
        # desktops restored here whose guests applied no list since: the image's first allowlist
        self._first_lists: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._on_change: Callable[[], None] | None = None

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ON_CHANGE whenever a guest's readiness changes: it says ready, applies an
        allowlist, or is quarantined (from the thread that saw it: the reader, or an observation
        that found the guest overdue). Heartbeats change nothing. One watcher; a second replaces
        the first."""
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # --- what the driver calls -----------------------------------------------------------------

    def ensure(self, name: str, path: Path) -> GuestState:
        """Connected to NAME's channel (connecting now if need be); its state. Never raises."""
        with self._lock:
            if name in self._quarantined:
                return GuestState(quarantined=self._quarantined[name])
            link = self._links.get(name)
            if link is not None:
                return link.state
        try:
            sock = self.dial(name, path)
        except OSError:
            return GuestState()
        with self._lock:
            if name in self._links:  # another thread connected meanwhile
                sock.close()
                return self._links[name].state
            self._links[name] = _Link(sock, self.budget, self.clock)
            self._start()
        os.write(self._wake_w, b"x")
        return GuestState(connected=True)

    def state(self, name: str, *, heartbeats: bool = True) -> GuestState:
        """NAME's state. With HEARTBEATS, a guest that confirmed its identity and then fell silent
        for SILENCE_S (its agent heartbeats every 5 s) is quarantined now: its agent died or was
        stopped. (A template is paused while it is saved: its silence means nothing.)"""
        return self.states([name], heartbeats=heartbeats)[name]

    def states(self, names: list[str], *, heartbeats: bool = True) -> dict[str, GuestState]:
        """`state()` of each of NAMES under one lock (a host's observation asks for every desktop)."""
        out: dict[str, GuestState] = {}
        overdue: list[tuple[str, str]] = []
        with self._lock:
            for name in names:
                link = self._links.get(name)
                if name in self._quarantined:
                    out[name] = GuestState(quarantined=self._quarantined[name])
                elif link is None:
                    out[name] = GuestState()
                elif (why := self._overdue(link) if heartbeats else None) is None:
                    out[name] = link.state
                else:
                    overdue.append((name, why))
        for name, why in overdue:
            self.quarantine(name, why)
            out[name] = self.state(name)
        return out

    def _overdue(self, link: _Link) -> str | None:
        """Why a confirmed guest is no longer trusted by now, if it is not: silence, or an app
        allowlist it has not applied in APPLY_S (called with the lock held)."""
        state, now = link.state, self.clock()
        if state.confirmed and state.last_seen is not None and now - state.last_seen > SILENCE_S:
            return f"no heartbeat for more than {SILENCE_S:.0f} s"
        sent = state.apps_sent
        if sent is not None and not state.apps_current and now - link.apps_sent[sent] > APPLY_S:
            return f"apps revision {sent} not applied within {APPLY_S:.0f} s"
        return None

    def send_identity(self, name: str, *, hostname: str, machine_id: str, join_secret: str = "",
                      template: bool = False) -> bool:
        """Tell NAME who it is now (fresh seed and clock). True once written to the channel.

        A TEMPLATE is sent no key (32 zero bytes, which the guest agent does not pin): each clone
        pins the key of the control plane that restores it, so a new signing key needs new
        clones, not new templates."""
        nonce = secrets.token_hex(32)
        frame = ch.encode("identity", ch.Side.HOST, nonce=nonce, hostname=hostname, machine_id=machine_id,
                          rng_seed=secrets.token_bytes(64), time_ns=time.time_ns(), join_secret=join_secret,
                          policy_key=bytes(32) if template else self.policy_key)
        with self._lock:
            link = self._links.get(name)
            if link is None:
                return False
            link.expected = _Expected(nonce, hostname, machine_id)
            link.state = replace(link.state, confirmed=False, ready=False)
        return self._send(name, link, frame)

    def send_page(self, name: str, url: str) -> bool:
        frame = ch.encode("page", ch.Side.HOST, url=url)
        with self._lock:
            link = self._links.get(name)
        return link is not None and self._send(name, link, frame)

    def send_apps(self, name: str, revision: int, document: str, signature: bytes,
                  apps: frozenset[str] = frozenset()) -> bool:
        """Send a signed app allowlist (of APPS) to a confirmed guest, unless it is the one last
        sent on this connection. True once the guest has it (then `state().apps_applied` follows).
        Whether sent or not, a guest that still enforces its image's first list is noted to run
        nothing beyond APPS (`first_list_allowed`) when that list is within them.

        Encoded only when it is to be sent: a pass offers every desktop its list, and most have
        it already (or no link)."""
        with self._lock:
            self._offered(name, apps)
            if (answer := self._apps_due(name, revision)) is not None:
                return answer
        frame = ch.encode("apps", ch.Side.HOST, doc=document, sig=signature)
        with self._lock:
            if (answer := self._apps_due(name, revision)) is not None:
                return answer
            link = self._links[name]
            link.apps_sent[revision] = self.clock()
            while len(link.apps_sent) > 8:
                del link.apps_sent[min(link.apps_sent)]
            link.state = replace(link.state, apps_sent=revision)
        return self._send(name, link, frame)

    def restored(self, name: str, first_apps: frozenset[str] | None) -> None:
        """NAME was just restored from a template that enforces its image's FIRST_APPS (None:
        the image does not say): until the guest applies a list of ours, that is what it runs."""
        with self._lock:
            if first_apps is None:
                self._first_lists.pop(name, None)
            else:
                self._first_lists[name] = first_apps

    def _offered(self, name: str, apps: frozenset[str]) -> None:
        """The host wants NAME to run APPS now (lock held). Every pass offers every desktop its
        list: the state is copied only when the answer changes."""
        link = self._links.get(name)
        first = self._first_lists.get(name)
        allowed = first is not None and first <= apps
        if link is not None and link.state.first_list_allowed != allowed:
            link.state = replace(link.state, first_list_allowed=allowed)

    def _apps_due(self, name: str, revision: int) -> bool | None:
        """None when REVISION is to be sent to NAME; else what `send_apps` answers: True when it
        was sent already, False when there is no confirmed guest to send it to (lock held)."""
        link = self._links.get(name)
        if link is None or not link.state.confirmed:
            return False
        if link.state.apps_sent == revision:
            return True
        return None

    def drain_denials(self) -> dict[str, dict[str, int]]:
        """Executions each guest's enforcer denied since the last call: desktop -> path -> count."""
        with self._lock:
            out = {name: link.denials for name, link in self._links.items() if link.denials}
            for name in out:
                self._links[name].denials = {}
        return out

    def identity_sent(self, name: str) -> bool:
        with self._lock:
            link = self._links.get(name)
            return link is not None and link.expected is not None

    def forget(self, name: str) -> None:
        """The domain is gone (or restarts): drop its link and any quarantine on that name."""
        with self._lock:
            link = self._links.pop(name, None)
            self._quarantined.pop(name, None)
            self._first_lists.pop(name, None)
        if link is not None:
            link.sock.close()

    def quarantine(self, name: str, reason: str) -> None:
        with self._lock:
            link = self._links.pop(name, None)
            self._quarantined[name] = reason
            self._first_lists.pop(name, None)
        if link is not None:
            link.sock.close()
        log.warning("guest %s quarantined: %s", name, reason)
        self._changed()

    # --- the reader ------------------------------------------------------------------------------

    def _send(self, name: str, link: _Link, frame: bytes) -> bool:
        log.debug("guest %s is sent %d bytes", name, len(frame))
        try:
            with link.send_lock:
                link.sock.sendall(frame)
            return True
        except OSError:
            self._closed(name, link)
            return False

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="guest-links", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                socks = {link.sock.fileno(): (name, link) for name, link in self._links.items()
                         if link.sock.fileno() >= 0}
            readable, _, _ = select.select([self._wake_r, *socks], [], [], 1.0)
            for fd in readable:
                if fd == self._wake_r:
                    os.read(self._wake_r, 512)
                elif fd in socks:
                    self._read(*socks[fd])

    def _read(self, name: str, link: _Link) -> None:
        try:
            data = link.sock.recv(READ_CHUNK)
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self._closed(name, link)
            return
        if link.bytes.delay(len(data)) > 0:  # a guest is never paced: over its budget it is cut off
            self.quarantine(name, f"flood: more than {int(self.budget.bytes_per_s)} bytes/s")
            return
        changed = False
        try:
            for msg in link.decoder.feed(data):
                log.debug("guest %s says %s", name, msg.type)
                if link.messages.delay(1) > 0:
                    raise ch.ProtocolError(f"flood: more than {int(self.budget.messages_per_s)} messages/s")
                with self._lock:
                    before = link.state
                    self._apply(name, link, msg)
                    changed |= (link.state.ready and not before.ready) or link.state.apps_applied != before.apps_applied
        except ch.ProtocolError as err:
            self.quarantine(name, str(err))
        if changed:
            self._changed()

    def _apply(self, name: str, link: _Link, msg: ch.Message) -> None:
        """Fold one checked message into the guest's state (called with the lock held)."""
        state = replace(link.state, last_seen=self.clock(), messages=link.state.messages + 1)
        if msg.type == "hello":
            state = replace(state, agent=msg["agent"])
        elif msg.type == "identity_applied":
            want = link.expected
            if want is None or msg["nonce"] != want.nonce:
                link.state = state  # a stale confirmation (of an identity we replaced): ignored
                return
            if (msg["hostname"], msg["machine_id"]) != (want.hostname, want.machine_id):
                raise ch.ProtocolError("identity_applied: the guest reports another identity than it was given")
            owner = self._probes.setdefault(msg["rng_probe"], want.hostname)
            if owner != want.hostname:
                raise ch.ProtocolError(f"identity_applied: random state shared with {owner}")
            state = replace(state, confirmed=True, ready=False, rng_probe=msg["rng_probe"])
        elif msg.type == "ready":
            state = replace(state, ready=state.confirmed)
        elif msg.type == "page_shown":
            state = replace(state, page=msg["url"])
        elif msg.type == "apps_applied":
            if msg["revision"] not in link.apps_sent:
                raise ch.ProtocolError(f"apps_applied: revision {msg['revision']} was never sent")
            state = replace(state, apps_applied=max(msg["revision"], state.apps_applied or 0),
                            first_list_allowed=False)
            self._first_lists.pop(name, None)  # it runs our lists from now on, on any connection
        elif msg.type == "apps_refused":
            raise ch.ProtocolError(f"apps_refused: revision {msg['revision']}: {msg['reason']}")
        elif msg.type == "app_denied":
            path = msg["path"] if msg["path"] in link.denials or len(link.denials) < DENIED_PATHS else OTHER_PATHS
            link.denials[path] = link.denials.get(path, 0) + msg["count"]
        link.state = state

    def _closed(self, name: str, link: _Link) -> None:
        """The connection ended. What its guest applied meanwhile may never have reached us: a
        new connection trusts no first list (its guest may have applied one of ours since)."""
        with self._lock:
            if self._links.get(name) is link:
                del self._links[name]
                self._first_lists.pop(name, None)
        link.sock.close()
