"""The host end of the channel against a scripted guest on a real Unix socket: identity is confirmed
only as sent, and a guest that floods or breaks the protocol is quarantined for good."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from controlplane.domain import guest_channel as ch
from controlplane.drivers.libvirt.guest_link import (
    APPLY_S,
    DENIED_PATHS,
    OTHER_PATHS,
    SILENCE_S,
    Budget,
    GuestLinks,
    GuestState,
)

GUEST = ch.Side.GUEST


class FakeQemu:
    """Listens where QEMU would; the accepted connection is the guest's end of the port."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.conn: socket.socket | None = None
        self.accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            self.conn, _ = self.server.accept()
        except OSError:  # the test ended (its server closed) before anyone dialled
            return
        self.accepted.set()

    def guest(self) -> socket.socket:
        assert self.accepted.wait(5)
        assert self.conn is not None
        return self.conn

    def read_message(self) -> ch.Message:
        dec, conn = ch.Decoder(ch.Side.HOST), self.guest()
        conn.settimeout(5)
        while True:
            got = dec.feed(conn.recv(4096))
            if got:
                return got[0]


def eventually(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("condition never held")


@pytest.fixture
def qemu(tmp_path):
    q = FakeQemu(tmp_path / "d.chan")
    yield q
    q.server.close()


def test_identity_is_confirmed_only_when_the_guest_reports_what_was_sent(qemu, tmp_path):
    links = GuestLinks()
    assert links.ensure("d", tmp_path / "d.chan").connected
    assert links.send_identity("d", hostname="sd-main-sales-0a1b2c", machine_id="c" * 32, join_secret="j")
    sent = qemu.read_message()
    assert sent.type == "identity" and sent["join_secret"] == "j" and len(sent["rng_seed"]) == 64
    guest = qemu.guest()
    guest.sendall(ch.encode("ready", GUEST, window="firefox"))  # before confirming: not ready
    guest.sendall(ch.encode("identity_applied", GUEST, nonce="0" * 64, hostname="sd-main-sales-0a1b2c",
                            machine_id="c" * 32, rng_probe="1" * 64))  # a stale nonce: ignored
    time.sleep(0.1)
    assert not links.state("d").confirmed and not links.state("d").ready
    guest.sendall(ch.encode("identity_applied", GUEST, nonce=sent["nonce"], hostname="sd-main-sales-0a1b2c",
                            machine_id="c" * 32, rng_probe="2" * 64) + ch.encode("ready", GUEST, window="firefox"))
    eventually(lambda: links.state("d").ready)
    assert links.state("d").confirmed and links.state("d").quarantined is None


def test_a_guest_claiming_another_identity_is_quarantined(qemu, tmp_path):
    links = GuestLinks()
    links.ensure("d", tmp_path / "d.chan")
    links.send_identity("d", hostname="sd-main-sales-0a1b2c", machine_id="c" * 32)
    sent = qemu.read_message()
    qemu.guest().sendall(ch.encode("identity_applied", GUEST, nonce=sent["nonce"], hostname="template",
                                   machine_id="c" * 32, rng_probe="3" * 64))
    eventually(lambda: links.state("d").quarantined is not None)
    assert "another identity" in links.state("d").quarantined
    assert not links.ensure("d", tmp_path / "d.chan").connected  # stays quarantined: no reconnect


@pytest.mark.parametrize("payload, why", [
    (b"GET / HTTP/1.1\r\n\r\n", "bad magic"),
    (ch.HEADER.pack(b"SD", 1, 0, 1 << 30), "body length"),
    (ch.encode("heartbeat", GUEST, seq=1, uptime_s=1) * 200, "flood"),
])
def test_a_misbehaving_guest_is_quarantined_and_its_socket_closed(qemu, tmp_path, payload, why):
    links = GuestLinks(Budget(messages_per_s=20, message_burst=60))
    links.ensure("d", tmp_path / "d.chan")
    guest = qemu.guest()
    guest.sendall(payload)
    eventually(lambda: links.state("d").quarantined is not None)
    assert why in links.state("d").quarantined
    guest.settimeout(5)
    with contextlib.suppress(ConnectionResetError):  # hung up with our bytes unread: the same verdict
        assert guest.recv(10) == b""  # the host hung up


def test_a_byte_flood_is_cut_off_without_buffering_it(qemu, tmp_path):
    links = GuestLinks(Budget(bytes_per_s=64 * 1024, byte_burst=128 * 1024))
    links.ensure("d", tmp_path / "d.chan")
    guest = qemu.guest()
    one = ch.encode("page_shown", GUEST, url="https://crm.example/" + "a" * 1900)
    with pytest.raises(OSError):
        for _ in range(10_000):  # 20 MB, far past the burst: the host must hang up long before
            guest.sendall(one)
    assert "flood" in (links.state("d").quarantined or "")


def test_two_guests_reporting_the_same_random_state_are_caught(tmp_path):
    links, guests = GuestLinks(), []
    for name in ("a", "b"):
        q = FakeQemu(tmp_path / f"{name}.chan")
        links.ensure(name, tmp_path / f"{name}.chan")
        links.send_identity(name, hostname=f"sd-main-sales-00000{name}", machine_id=name * 32)
        sent = q.read_message()
        q.guest().sendall(ch.encode("identity_applied", GUEST, nonce=sent["nonce"], hostname=sent["hostname"],
                                    machine_id=sent["machine_id"], rng_probe="f" * 64))
        guests.append(q)
        eventually(lambda n=name: links.state(n).confirmed or links.state(n).quarantined)
    assert links.state("a").confirmed and links.state("a").quarantined is None
    assert "random state shared with sd-main-sales-00000a" in (links.state("b").quarantined or "")


def test_no_socket_means_not_connected_and_forget_lifts_quarantine(tmp_path):
    links = GuestLinks()
    assert not links.ensure("gone", tmp_path / "nothing.chan").connected
    links.quarantine("gone", "test")
    assert links.state("gone").quarantined == "test"
    links.forget("gone")
    assert links.state("gone").quarantined is None


def test_a_confirmed_guest_that_stops_heartbeating_is_quarantined(qemu, tmp_path):
    now = [1000.0]
    links = GuestLinks(clock=lambda: now[0])
    links.ensure("d", tmp_path / "d.chan")
    links.send_identity("d", hostname="sd-main-sales-0a1b2c", machine_id="c" * 32)
    sent = qemu.read_message()
    guest = qemu.guest()
    guest.sendall(ch.encode("identity_applied", GUEST, nonce=sent["nonce"], hostname="sd-main-sales-0a1b2c",
                            machine_id="c" * 32, rng_probe="4" * 64))
    eventually(lambda: links.state("d").confirmed)
    now[0] += SILENCE_S - 1
    guest.sendall(ch.encode("heartbeat", GUEST, seq=1, uptime_s=30))
    eventually(lambda: links.state("d").messages == 2)
    now[0] += SILENCE_S - 1  # heard from recently enough
    assert links.state("d").quarantined is None
    now[0] += 2
    assert links.state("d", heartbeats=False).quarantined is None  # a template being saved is paused
    # asked for many at once (a host's observation), the silent one is quarantined the same way
    many = links.states(["d", "never-connected"])
    assert "heartbeat" in (many["d"].quarantined or "") and many["never-connected"] == GuestState()
    assert links.state("d").quarantined == many["d"].quarantined


def confirmed(qemu, tmp_path, links, name="d"):
    """A link whose guest has confirmed the identity it was sent; returns the guest's socket."""
    links.ensure(name, tmp_path / f"{name}.chan")
    links.send_identity(name, hostname="sd-main-sales-0a1b2c", machine_id="c" * 32)
    sent = qemu.read_message()
    guest = qemu.guest()
    guest.sendall(ch.encode("identity_applied", GUEST, nonce=sent["nonce"], hostname="sd-main-sales-0a1b2c",
                            machine_id="c" * 32, rng_probe=secrets.token_hex(32)))
    eventually(lambda: links.state(name).confirmed)
    return guest


def test_the_identity_carries_the_key_that_signs_app_allowlists(qemu, tmp_path):
    links = GuestLinks(policy_key=b"k" * 32)
    links.ensure("d", tmp_path / "d.chan")
    links.send_identity("d", hostname="sd-main-sales-0a1b2c", machine_id="c" * 32)
    assert qemu.read_message()["policy_key"] == b"k" * 32


def test_a_template_is_sent_no_key_so_its_clones_pin_their_own(qemu, tmp_path):
    links = GuestLinks(policy_key=b"k" * 32)
    links.ensure("t", tmp_path / "d.chan")
    links.send_identity("t", hostname="sd-main-tpl-i1-m1024-c2", machine_id="c" * 32, template=True)
    assert qemu.read_message()["policy_key"] == bytes(32)


def test_an_allowlist_goes_only_to_a_confirmed_guest_and_counts_once_applied(qemu, tmp_path):
    links = GuestLinks()
    links.ensure("d", tmp_path / "d.chan")
    assert not links.send_apps("d", 7, '{"x":1}', b"s" * 64)  # not confirmed yet: nothing sent
    guest = confirmed(qemu, tmp_path, links)
    assert links.send_apps("d", 7, '{"x":1}', b"s" * 64)
    got = qemu.read_message()
    assert (got.type, got["doc"], got["sig"]) == ("apps", '{"x":1}', b"s" * 64)
    assert links.send_apps("d", 7, '{"x":1}', b"s" * 64)  # the same revision again: not resent
    assert (links.state("d").apps_sent, links.state("d").apps_applied) == (7, None)
    assert not links.state("d").apps_current
    guest.sendall(ch.encode("apps_applied", GUEST, revision=7))
    eventually(lambda: links.state("d").apps_current)
    guest.settimeout(0.2)
    with pytest.raises(TimeoutError):
        guest.recv(1)  # the repeat above sent nothing


def test_a_list_is_encoded_only_when_it_is_sent(qemu, tmp_path, monkeypatch):
    """Every pass offers every desktop its list; one with no guest to take it, or that has it,
    costs no encoding (10,000 desktops a pass)."""
    encoded: list[str] = []
    encode = ch.encode
    monkeypatch.setattr(ch, "encode", lambda kind, *a, **kw: encoded.append(kind) or encode(kind, *a, **kw))
    links = GuestLinks()
    assert not links.send_apps("nobody", 7, "{}", b"s" * 64)
    confirmed(qemu, tmp_path, links)
    encoded.clear()
    assert links.send_apps("d", 7, "{}", b"s" * 64) and links.send_apps("d", 7, "{}", b"s" * 64)
    assert encoded == ["apps"]


@pytest.mark.parametrize(("reply", "why"), [
    (ch.encode("apps_applied", GUEST, revision=8), "revision 8 was never sent"),
    (ch.encode("apps_refused", GUEST, revision=7, reason="bad-signature"), "bad-signature"),
])
def test_a_guest_that_refuses_an_allowlist_or_reports_another_revision_is_quarantined(qemu, tmp_path, reply, why):
    links = GuestLinks()
    guest = confirmed(qemu, tmp_path, links)
    links.send_apps("d", 7, "{}", b"s" * 64)
    guest.sendall(reply)
    eventually(lambda: links.state("d").quarantined is not None)
    assert why in (links.state("d").quarantined or "")


def test_an_allowlist_not_applied_in_time_quarantines_the_guest(qemu, tmp_path):
    now = [1000.0]
    links = GuestLinks(clock=lambda: now[0])
    guest = confirmed(qemu, tmp_path, links)
    links.send_apps("d", 7, "{}", b"s" * 64)
    for seq in range(1, 5):  # alive (heartbeating), but not applying
        now[0] += (APPLY_S - 1) / 4
        guest.sendall(ch.encode("heartbeat", GUEST, seq=seq, uptime_s=30))
        eventually(lambda n=seq: links.state("d").messages == n + 1)
    assert links.state("d").quarantined is None
    now[0] += 2
    assert "not applied within" in (links.state("d").quarantined or "")


def test_denials_are_counted_per_path_drained_once_and_bounded(qemu, tmp_path):
    links = GuestLinks(budget=Budget(messages_per_s=1000, message_burst=1000))
    guest = confirmed(qemu, tmp_path, links)
    guest.sendall(ch.encode("app_denied", GUEST, path="/usr/bin/galculator", count=3)
                  + ch.encode("app_denied", GUEST, path="/usr/bin/galculator", count=2)
                  + b"".join(ch.encode("app_denied", GUEST, path=f"/tmp/x{i}", count=1) for i in range(DENIED_PATHS)))
    eventually(lambda: links.state("d").messages == DENIED_PATHS + 3)
    drained = links.drain_denials()
    assert drained["d"]["/usr/bin/galculator"] == 5
    assert len(drained["d"]) == DENIED_PATHS + 1 and drained["d"][OTHER_PATHS] == 1  # one over the bound
    assert links.drain_denials() == {}


FIRST = frozenset({"firefox-esr"})  # what the image's desktops run before the host's first list


def test_a_restored_guest_runs_nothing_beyond_a_wider_list_before_it_applies_it(qemu, tmp_path):
    """A clone restored here still enforces its image's first list: within the list it should
    run (wider), it may be handed out while that list applies; once the guest applies a list of
    ours, only `apps_current` counts (on any connection after)."""
    links = GuestLinks()
    links.restored("d", FIRST)
    links.ensure("d", tmp_path / "d.chan")
    assert not links.send_apps("d", 7, "{}", b"s" * 64, FIRST | {"galculator"})  # not confirmed: not sent
    assert links.state("d").first_list_allowed  # but it runs only the browser, which is allowed
    guest = confirmed(qemu, tmp_path, links)
    assert links.send_apps("d", 7, "{}", b"s" * 64, FIRST | {"galculator"})
    assert links.state("d").first_list_allowed and not links.state("d").apps_current
    guest.sendall(ch.encode("apps_applied", GUEST, revision=7))
    eventually(lambda: links.state("d").apps_current)
    links.send_apps("d", 8, "{}", b"s" * 64, FIRST | {"galculator", "mousepad"})
    assert not links.state("d").first_list_allowed  # it runs revision 7 now, not the first list


@pytest.mark.parametrize("case", ["narrower", "unknown image", "not restored here", "reconnected"])
def test_a_first_list_counts_only_when_known_within_the_wanted_list_and_on_the_first_connection(
        qemu, tmp_path, case):
    links = GuestLinks()
    if case != "not restored here":
        links.restored("d", None if case == "unknown image" else FIRST)
    links.ensure("d", tmp_path / "d.chan")
    if case == "reconnected":  # what it applied while we were away may never have reached us
        qemu.guest().close()
        eventually(lambda: not links.state("d").connected)
        qemu.accepted.clear()
        threading.Thread(target=qemu._accept, daemon=True).start()
        links.ensure("d", tmp_path / "d.chan")
    wanted = frozenset({"galculator"}) if case == "narrower" else FIRST | {"galculator"}
    links.send_apps("d", 7, "{}", b"s" * 64, wanted)
    assert not links.state("d").first_list_allowed


def test_a_watcher_hears_when_readiness_changes_and_not_for_heartbeats(qemu, tmp_path):
    """The reconciler looks again as soon as a guest's readiness changes, instead of at its next
    pass; heartbeats (every desktop, every 5 s) wake nobody."""
    heard = threading.Semaphore(0)
    links = GuestLinks()
    links.watch(heard.release)
    guest = confirmed(qemu, tmp_path, links)
    guest.sendall(ch.encode("heartbeat", GUEST, seq=1, uptime_s=30))
    eventually(lambda: links.state("d").messages == 2)
    assert not heard.acquire(timeout=0.2)  # the confirmation alone (ready follows) and the heartbeat
    guest.sendall(ch.encode("ready", GUEST, window="firefox"))
    assert heard.acquire(timeout=5)
    guest.sendall(ch.encode("ready", GUEST, window="firefox"))  # ready again: nothing changed
    eventually(lambda: links.state("d").messages == 4)
    assert not heard.acquire(timeout=0.2)
    links.send_apps("d", 7, '{"x":1}', b"s" * 64)
    qemu.read_message()
    guest.sendall(ch.encode("apps_applied", GUEST, revision=7))
    assert heard.acquire(timeout=5)
    guest.sendall(b"GET / HTTP/1.1\r\n\r\n")  # quarantined: no longer ready
    assert heard.acquire(timeout=5)
    assert links.state("d").quarantined is not None
