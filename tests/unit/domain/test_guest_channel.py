"""The host channel's wire protocol: what either side may send, and what a hostile guest cannot do."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.domain import guest_channel as ch

HOST, GUEST = ch.Side.HOST, ch.Side.GUEST


def frame(body: bytes, *, magic=b"SD", version=ch.VERSION, reserved=0, length=None) -> bytes:
    return ch.HEADER.pack(magic, version, reserved, len(body) if length is None else length) + body


def test_a_message_round_trips_whole_and_split_into_single_bytes():
    wire = ch.encode("identity", HOST, nonce="a" * 64, hostname="sd-main-sales-0a1b2c", machine_id="b" * 32,
                     rng_seed=bytes(range(64)), time_ns=1, join_secret="s3cret", policy_key=bytes(32))
    whole = ch.Decoder(HOST).feed(wire)
    assert whole[0]["rng_seed"] == bytes(range(64)) and whole[0]["hostname"] == "sd-main-sales-0a1b2c"
    dec = ch.Decoder(HOST)
    got = [m for i in range(len(wire)) for m in dec.feed(wire[i:i + 1])]
    assert got == whole
    assert "s3cret" not in repr(got[0]) and "<redacted>" in repr(got[0])


def test_two_messages_in_one_read():
    wire = ch.encode("heartbeat", GUEST, seq=1, uptime_s=5) + ch.encode("ready", GUEST, window="firefox")
    assert [m.type for m in ch.Decoder(GUEST).feed(wire)] == ["heartbeat", "ready"]


@pytest.mark.parametrize("raw, field", [
    (frame(b"{}", magic=b"XX"), "header: bad magic"),
    (frame(b"{}", version=2), "header: protocol version 2"),
    (frame(b"{}", reserved=1), "header: reserved"),
    (frame(b"", length=0), "header: body length 0"),
    (ch.HEADER.pack(b"SD", 1, 0, ch.MAX_BODY + 1), "header: body length"),
    (frame(b"\xff\xfe"), "body: not UTF-8 JSON"),
    (frame(b"[1]"), "body: expected an object"),
    (frame(b'{"type":"heartbeat","seq":NaN,"uptime_s":1}'), "body"),
    (frame(b'{"type":"heartbeat","seq":1,"seq":2,"uptime_s":1}'), "body: duplicate key"),
    (frame(b'{"type":"shell","cmd":"rm"}'), "type: unknown message type"),
    (frame(b'{"type":"identity","nonce":"x"}'), "type: 'identity' is not a guest message"),
    (frame(b'{"type":"heartbeat","seq":1}'), "heartbeat.uptime_s: missing"),
    (frame(b'{"type":"heartbeat","seq":1,"uptime_s":1,"extra":1}'), "heartbeat.extra: unknown field"),
    (frame(b'{"type":"heartbeat","seq":-1,"uptime_s":1}'), "heartbeat.seq"),
    (frame(b'{"type":"heartbeat","seq":true,"uptime_s":1}'), "heartbeat.seq"),
    (frame(b'{"type":"ready","window":"Fire Fox"}'), "ready.window: malformed"),
    (frame(json.dumps({"type": "page_shown", "url": "javascript:alert(1)"}).encode()), "page_shown.url"),
    (frame(json.dumps({"type": "ready", "window": "x" * 65}).encode()), "ready.window"),
])
def test_what_the_guest_gets_wrong_is_named(raw, field):
    with pytest.raises(ch.ProtocolError, match=field.replace("(", r"\(")):
        ch.Decoder(GUEST).feed(raw)


def test_a_huge_length_is_refused_from_the_header_alone():
    dec = ch.Decoder(GUEST)
    with pytest.raises(ch.ProtocolError):
        dec.feed(struct.pack(">2sBBI", b"SD", 1, 0, 2**32 - 1))
    assert dec.buffered == 0  # nothing was held for it


def test_the_host_never_sends_what_it_would_refuse():
    with pytest.raises(ch.ProtocolError, match="identity.hostname"):
        ch.encode("identity", HOST, nonce="a" * 64, hostname="Not A Host", machine_id="b" * 32,
                  rng_seed=bytes(64), time_ns=1, join_secret="", policy_key=bytes(32))
    with pytest.raises(ch.ProtocolError, match="identity.rng_seed: expected 64 bytes"):
        ch.encode("identity", HOST, nonce="a" * 64, hostname="h", machine_id="b" * 32, rng_seed=bytes(8),
                  time_ns=1, join_secret="", policy_key=bytes(32))
    with pytest.raises(ch.ProtocolError, match="apps.doc: malformed"):
        ch.encode("apps", HOST, doc="caf\u00e9", sig=bytes(64))  # ASCII only: what is signed is what is sent


@given(st.binary(max_size=4 * ch.MAX_BODY))
def test_arbitrary_bytes_either_decode_or_raise_protocol_error_and_never_pile_up(data):
    dec = ch.Decoder(GUEST)
    try:
        for i in range(0, len(data), 997):
            dec.feed(data[i:i + 997])
    except ch.ProtocolError:
        pass
    assert dec.buffered <= ch.MAX_BODY
