"""Referrals are never chased. A referral makes ldap3 open a connection to the host it names
and bind there with the same DN and password: whoever can plant a referral in the directory (or
answer in its place) would collect the service account's password. Two tiny LDAP servers on
loopback: one answers every search with a referral to the other, which counts who calls."""

from __future__ import annotations

import socket
import threading

from controlplane.drivers.ldap.directory import LdapDirectory


def tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def result(tag: int, code: int, referral: str | None = None) -> bytes:
    body = tlv(0x0A, bytes([code])) + tlv(0x04, b"") + tlv(0x04, b"")
    if referral:
        body += tlv(0xA3, tlv(0x04, referral.encode()))
    return tlv(tag, body)


def read_message(conn: socket.socket) -> tuple[int, int, bytes] | None:
    """(messageID, protocolOp tag, whole message) of the next LDAP message, None at EOF."""
    head = conn.recv(2)
    if len(head) < 2:
        return None
    length = head[1]
    if length & 0x80:
        length = int.from_bytes(conn.recv(length & 0x7F), "big")
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    id_len = body[1]
    return int.from_bytes(body[2:2 + id_len], "big"), body[2 + id_len], head + body


class TinyLdap:
    """Binds succeed; searches end with REFER_TO as a referral (result 10), or empty success."""

    def __init__(self, refer_to: str | None = None) -> None:
        self.refer_to = refer_to
        self.seen: list[bytes] = []  # every message received, raw
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            while (msg := read_message(conn)) is not None:
                mid, op, raw = msg
                self.seen.append(raw)
                reply = {0x60: result(0x61, 0), 0x63: result(0x65, 10 if self.refer_to else 0, self.refer_to)}
                if op not in reply:
                    return
                conn.sendall(tlv(0x30, tlv(0x02, mid.to_bytes(4, "big").lstrip(b"\0") or b"\0") + reply[op]))

    def close(self) -> None:
        self.sock.close()


def test_a_referral_is_not_followed_and_the_password_goes_nowhere():
    catcher = TinyLdap()
    referrer = TinyLdap(refer_to=f"ldap://127.0.0.1:{catcher.port}/DC=evil,DC=example")
    try:
        d = LdapDirectory(url=f"ldap://127.0.0.1:{referrer.port}", allow_plain=True, base_dn="DC=corp,DC=example",
                          bind_dn="CN=svc,DC=corp,DC=example", bind_password="Svc-pw-never-leaves-1",
                          ca_file=None, connect_timeout=2, receive_timeout=2)
        assert d.lookup("alice") is None
        assert any(raw[0] == 0x30 for raw in referrer.seen), "the search did reach the referring server"
        assert catcher.seen == [], "nothing was sent to the host the referral named"
    finally:
        referrer.close()
        catcher.close()
