"""The host channel of a desktop on another host, through that host's console relay (real TLS
from a local CA): GuestLinks talks to the guest as over a local socket, and a relay that does
not answer is not asked again at once."""

from __future__ import annotations

import pytest

from controlplane.domain import guest_channel as ch
from controlplane.domain.console import Stream
from controlplane.drivers.console_relay import RelayedChannels
from controlplane.drivers.libvirt.guest_link import GuestLinks
from controlplane.errors import PermanentError
from controlplane.gateway.console_server import ConsoleServer, client_context, server_context
from tests.unit.drivers.test_guest_link import FakeQemu, eventually
from tests.unit.gateway.test_console_server import free_port

NAME = "sd-main-sales-0a1b2c"


@pytest.fixture
def remote(pki, tmp_path):
    """A relay on 127.0.0.1 for one desktop whose channel is a fake QEMU's socket."""
    qemu = FakeQemu(tmp_path / "elsewhere.chan")
    asked = []

    def resolve(name: str, stream: Stream):
        asked.append((name, stream))
        if name != NAME:
            raise PermanentError(f"console: {name} is not a running desktop of this host")
        return tmp_path / "elsewhere.chan"

    host = pki["server"]
    relay = ConsoleServer(resolve, server_context(cert=host.cert, key=host.key, ca=host.ca_cert),
                          allowed_clients=frozenset({"shiftdesk-control-plane"}))
    port = free_port()
    relay.run_in_thread("127.0.0.1", port)
    cp = pki["control-plane"]
    tls = client_context(cert=cp / "clientcert.pem", key=cp / "clientkey.pem", ca=cp / "cacert.pem")
    yield qemu, port, tls, asked
    qemu.server.close()


def test_guest_links_confirm_a_remote_guests_identity_through_the_relay(remote, tmp_path):
    qemu, port, tls, asked = remote
    links = GuestLinks(dial=RelayedChannels("127.0.0.1", port, lambda: tls).dial)
    assert links.ensure(NAME, tmp_path / "not-used-here.chan").connected
    assert links.send_identity(NAME, hostname=NAME, machine_id="c" * 32, join_secret="j")
    sent = qemu.read_message()
    assert sent.type == "identity" and sent["join_secret"] == "j"
    qemu.guest().sendall(ch.encode("identity_applied", ch.Side.GUEST, nonce=sent["nonce"], hostname=NAME,
                                   machine_id="c" * 32, rng_probe="2" * 64)
                         + ch.encode("ready", ch.Side.GUEST, window="firefox"))
    eventually(lambda: links.state(NAME).ready)
    assert asked == [(NAME, Stream.CHANNEL)]


def test_a_guest_that_breaks_the_protocol_through_the_relay_is_quarantined(remote, tmp_path):
    qemu, port, tls, _ = remote
    links = GuestLinks(dial=RelayedChannels("127.0.0.1", port, lambda: tls).dial)
    assert links.ensure(NAME, tmp_path / "x.chan").connected
    qemu.guest().sendall(b"\xff" * 64)
    eventually(lambda: links.state(NAME).quarantined is not None)


def test_a_refused_desktop_is_not_connected_and_does_not_mark_the_relay_down(remote, tmp_path):
    _, port, tls, asked = remote
    channels = RelayedChannels("127.0.0.1", port, lambda: tls)
    links = GuestLinks(dial=channels.dial)
    assert not links.ensure("sd-main-sales-ffffff", tmp_path / "x.chan").connected
    assert links.ensure(NAME, tmp_path / "x.chan").connected  # the relay itself is fine
    assert [name for name, _ in asked] == ["sd-main-sales-ffffff", NAME]


def test_a_name_no_relay_may_be_asked_for_does_not_mark_the_relay_down(remote, tmp_path):
    _, port, tls, asked = remote
    links = GuestLinks(dial=RelayedChannels("127.0.0.1", port, lambda: tls).dial)
    assert not links.ensure("Not A Name", tmp_path / "x.chan").connected  # refused before any byte is sent
    assert links.ensure(NAME, tmp_path / "x.chan").connected
    assert asked == [(NAME, Stream.CHANNEL)]


def test_a_relay_that_does_not_answer_is_not_asked_again_at_once(pki, tmp_path, monkeypatch):
    cp = pki["control-plane"]
    tls = client_context(cert=cp / "clientcert.pem", key=cp / "clientkey.pem", ca=cp / "cacert.pem")
    channels = RelayedChannels("127.0.0.1", free_port(), lambda: tls, retry_s=60)  # nothing listens there
    tries = []
    real = channels._open

    async def counted(name):
        tries.append(name)
        return await real(name)

    monkeypatch.setattr(channels, "_open", counted)
    links = GuestLinks(dial=channels.dial)
    for _ in range(3):
        assert not links.ensure(NAME, tmp_path / "x.chan").connected
    assert tries == [NAME]  # one connection attempt; the others failed at once, without trying
