"""The console relay of a host (gateway/console_server.py) with real TLS from the local CA: it
relays only for the control plane's certificate, only a desktop its libvirt runs, and reads no
more of a client than one bounded request line."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from controlplane.domain import console
from controlplane.errors import PermanentError
from controlplane.gateway.console_server import ConsoleServer, client_context, server_context
from tests.unit.gateway.fake_vnc import FakeVnc

DESKTOP = "sd-main-sales-0a1b2c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def relay(pki, tmp_path):
    desktop = FakeVnc(tmp_path / "desktop.vnc")
    channel = FakeVnc(tmp_path / "desktop.chan", width=800)  # anything that answers will do
    asked: list[str] = []

    def resolve(name: str, stream: console.Stream) -> Path:
        asked.append(name if stream == console.Stream.VNC else f"{name} channel")
        if name != DESKTOP:
            raise PermanentError(f"console: {name} is not a running desktop of this host")
        return desktop.path if stream == console.Stream.VNC else channel.path

    s = pki["server"]
    server = ConsoleServer(resolve, server_context(cert=s.cert, key=s.key, ca=s.ca_cert),
                           allowed_clients=frozenset({"shiftdesk-control-plane"}), max_consoles=2,
                           request_timeout=1.0)
    port = free_port()
    server.run_in_thread("127.0.0.1", port)
    server.port, server.asked = port, asked
    yield server
    desktop.close()
    channel.close()


def client(pki, who: str | None) -> ssl.SSLContext:
    if who is None:  # trusts the host, presents nothing
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(pki["server"].ca_cert))
        return ctx
    d = pki[who]
    return client_context(cert=d / "clientcert.pem", key=d / "clientkey.pem", ca=pki["server"].ca_cert)


def dial(relay, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def read_line(conn: ssl.SSLSocket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        data = conn.recv(1)
        if not data:
            break
        line += data
    return line


def test_the_control_plane_gets_its_desktops_console_both_ways(relay, pki):
    with dial(relay, client(pki, "control-plane")) as conn:
        conn.sendall(console.request(DESKTOP))
        assert read_line(conn) == console.OK
        assert read_line(conn) == b"RFB 003.008\n"  # the desktop speaks first
        conn.sendall(b"RFB 003.008\n")
        assert conn.recv(2) == b"\x01\x01"  # it heard the answer: security types
    assert relay.asked == [DESKTOP]


def test_the_host_channel_of_a_desktop_is_relayed_on_request(relay, pki):
    with dial(relay, client(pki, "control-plane")) as conn:
        conn.sendall(console.request(DESKTOP, console.Stream.CHANNEL))
        assert read_line(conn) == console.OK
        assert read_line(conn) == b"RFB 003.008\n"
    assert relay.asked == [f"{DESKTOP} channel"]


@pytest.mark.parametrize("who", [None, "other-ca"])
def test_a_client_without_a_certificate_of_the_local_ca_fails_the_tls_handshake(relay, pki, who):
    with pytest.raises((ssl.SSLError, ConnectionError)), dial(relay, client(pki, who)) as conn:
        conn.sendall(console.request(DESKTOP))
        if not conn.recv(16):  # TLS 1.3: the server's verdict arrives after the client's finished
            raise ConnectionError("closed")
    assert relay.asked == []


def test_a_certificate_of_the_ca_for_another_name_is_told_nothing(relay, pki):
    with dial(relay, client(pki, "stranger")) as conn:
        conn.sendall(console.request(DESKTOP))
        assert conn.recv(16) == b""
    assert relay.asked == []


def test_a_hosts_server_certificate_cannot_open_consoles(relay, pki):
    s = pki["server"]
    as_host = client_context(cert=s.cert, key=s.key, ca=s.ca_cert)
    with pytest.raises((ssl.SSLError, ConnectionError)), dial(relay, as_host) as conn:
        conn.sendall(console.request(DESKTOP))
        if not conn.recv(16):
            raise ConnectionError("closed")
    assert relay.asked == []


@pytest.mark.parametrize("line, reason", [
    (b"SHIFTDESK-CONSOLE/1 /etc/passwd\n", b"request"),
    (console.request("sd-main-sales-ffffff"), b"not a running desktop"),
])
def test_a_bad_request_or_a_desktop_not_running_here_is_refused_with_a_reason(relay, pki, line, reason):
    with dial(relay, client(pki, "control-plane")) as conn:
        conn.sendall(line)
        answer = read_line(conn)
        assert answer.startswith(b"NO ") and reason in answer
        assert conn.recv(16) == b""  # and the connection ends


def test_a_request_line_that_never_ends_is_cut_off_unread(relay, pki):
    with dial(relay, client(pki, "control-plane")) as conn:
        conn.settimeout(5)
        sent = 0
        with pytest.raises((ssl.SSLError, ConnectionError, TimeoutError)):
            for _ in range(1024):  # up to 64 MiB: the relay closes long before
                conn.sendall(b"x" * 65536)
                sent += 65536
            if conn.recv(16) == b"":
                raise ConnectionError("closed")
        assert sent < 8 << 20
    assert relay.asked == []


def test_a_silent_client_is_dropped_after_the_request_timeout(relay, pki):
    with dial(relay, client(pki, "control-plane")) as conn:
        began = time.monotonic()
        assert conn.recv(16) == b""
        assert time.monotonic() - began < 4
    assert relay.asked == []


def test_consoles_beyond_the_hosts_cap_are_refused(relay, pki):
    ctx = client(pki, "control-plane")
    held = []
    for _ in range(2):
        conn = dial(relay, ctx)
        conn.sendall(console.request(DESKTOP))
        assert read_line(conn) == console.OK
        held.append(conn)
    with dial(relay, ctx) as third:
        third.sendall(console.request(DESKTOP))
        assert read_line(third).startswith(b"NO too many consoles")
    held.pop().close()
    for _ in range(50):  # the relay notices the close, and the slot is free again
        with dial(relay, ctx) as again:
            again.sendall(console.request(DESKTOP))
            if read_line(again) == console.OK:
                break
        time.sleep(0.05)
    else:
        pytest.fail("a closed console's slot was never freed")
    for conn in held:
        conn.close()
