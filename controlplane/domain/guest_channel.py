"""The host channel's wire protocol: versioned, length-prefixed, schema-checked messages.

One module for both ends. The control plane imports it; the image build copies this very file
into the agent desktop as `shiftdesk_channel.py` for the in-guest agent. So: standard library
only, no imports from the rest of ShiftDesk.

A frame is an 8-byte header and a body:

    magic  b"SD"      2 bytes
    version           1 byte   (VERSION; anything else is refused)
    reserved          1 byte   (0)
    length            4 bytes  big-endian, 1..MAX_BODY
    body              UTF-8 JSON object with a "type" and exactly the fields that type defines

The guest is untrusted: `Decoder` never holds more than one header and one body (MAX_BODY), and
the first malformed byte raises `ProtocolError`, after which the host stops reading that guest
(see drivers/libvirt/guest_link.py). Which messages a side may *send* is part of the schema: a
guest that sends a host message is as wrong as one that sends garbage.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Any

MAGIC = b"SD"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
MAX_BODY = 16 * 1024  # identity and policies fit many times over; a guest cannot make us hold more
PORT_NAME = "org.shiftdesk.agent.0"  # the virtio-serial port name (/dev/virtio-ports/<name> in the guest)


class ProtocolError(ValueError):
    """The peer broke the protocol. The message names the field or the framing rule."""


class Side(Enum):
    HOST = "host"
    GUEST = "guest"


# --- schema --------------------------------------------------------------------------------------
# Field kinds: ("str", max_len, regex or None) | ("int", min, max) | ("bytes", exact_len) | ("bool",)

HOSTNAME_RE = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HEX32 = r"[0-9a-f]{32}"
HEX64 = r"[0-9a-f]{64}"
URL_RE = r"(https?|file)://[\x21-\x7e]{1,2000}"
PATH_RE = r"/[\x21-\x7e]{0,255}"
DOC_RE = r"[\x20-\x7e]{1,8192}"

Field = tuple[Any, ...]

SCHEMA: dict[str, tuple[Side, dict[str, Field]]] = {
    # guest -> host
    "hello": (Side.GUEST, {"agent": ("str", 64, r"[a-z0-9.+-]{1,64}"), "boot_id": ("str", 36, r"[0-9a-f-]{36}")}),
    "ready": (Side.GUEST, {"window": ("str", 64, r"[a-z0-9.-]{1,64}")}),
    "heartbeat": (Side.GUEST, {"seq": ("int", 0, 2**53), "uptime_s": ("int", 0, 2**53)}),
    # rng_probe: 32 bytes the guest read from its kernel RNG after reseeding, so the host can tell
    # two clones that still share the template's random state (and quarantine them)
    "identity_applied": (Side.GUEST, {"nonce": ("str", 64, HEX64), "hostname": ("str", 63, HOSTNAME_RE),
                                      "machine_id": ("str", 32, HEX32), "rng_probe": ("str", 64, HEX64)}),
    "page_shown": (Side.GUEST, {"url": ("str", 2048, URL_RE)}),
    # the app allowlist: the revision the guest's enforcer now applies, or why it refused one
    # (a refusal quarantines the desktop), and executions its enforcer denied (counted per path)
    "apps_applied": (Side.GUEST, {"revision": ("int", 1, 2**63)}),
    "apps_refused": (Side.GUEST, {"revision": ("int", 0, 2**63), "reason": ("str", 64, r"[a-z-]{1,64}")}),
    "app_denied": (Side.GUEST, {"path": ("str", 256, PATH_RE), "count": ("int", 1, 2**31)}),
    # host -> guest
    "identity": (Side.HOST, {"nonce": ("str", 64, HEX64), "hostname": ("str", 63, HOSTNAME_RE),
                             "machine_id": ("str", 32, HEX32), "rng_seed": ("bytes", 64),
                             "time_ns": ("int", 0, 2**63), "join_secret": ("str", 256, r"[\x21-\x7e]{0,256}"),
                             "policy_key": ("bytes", 32)}),
    "page": (Side.HOST, {"url": ("str", 2048, URL_RE)}),
    # a signed app allowlist (domain/app_policy.py): DOC is the canonical JSON, SIG its Ed25519
    # signature by the key sent in `identity.policy_key`
    "apps": (Side.HOST, {"doc": ("str", 8192, DOC_RE), "sig": ("bytes", 64)}),
}


@dataclass(frozen=True)
class Message:
    """One checked message. `fields` holds decoded values (bytes fields are bytes, not base64)."""

    type: str
    fields: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __repr__(self) -> str:  # never print secrets or seeds
        shown = {k: ("<redacted>" if k in ("join_secret", "rng_seed") else v) for k, v in self.fields.items()}
        return f"Message({self.type!r}, {shown!r})"


def check(kind: str, fields: dict[str, Any], sender: Side) -> Message:
    """Validate TYPE's fields as sent by SENDER; raise ProtocolError naming the field."""
    if kind not in SCHEMA:
        raise ProtocolError(f"type: unknown message type {kind[:40]!r}")
    side, spec = SCHEMA[kind]
    if side is not sender:
        raise ProtocolError(f"type: {kind!r} is not a {sender.value} message")
    unknown = sorted(set(fields) - set(spec))
    if unknown:
        raise ProtocolError(f"{kind}.{unknown[0][:40]}: unknown field")
    values: dict[str, Any] = {}
    for name, rule in spec.items():
        if name not in fields:
            raise ProtocolError(f"{kind}.{name}: missing")
        values[name] = _check_field(f"{kind}.{name}", rule, fields[name])
    return Message(kind, values)


def _check_field(where: str, rule: Field, value: Any) -> Any:
    kind = rule[0]
    if kind == "str":
        if not isinstance(value, str) or len(value) > rule[1]:
            raise ProtocolError(f"{where}: expected a string of at most {rule[1]} characters")
        if rule[2] is not None and not re.fullmatch(rule[2], value):
            raise ProtocolError(f"{where}: malformed")
        return value
    if kind == "int":
        if type(value) is not int or not rule[1] <= value <= rule[2]:
            raise ProtocolError(f"{where}: expected an integer in [{rule[1]}, {rule[2]}]")
        return value
    if kind == "bytes":
        if isinstance(value, bytes):
            raw = value
        elif isinstance(value, str) and len(value) <= 4 * rule[1]:
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError as err:
                raise ProtocolError(f"{where}: not base64") from err
        else:
            raise ProtocolError(f"{where}: expected base64")
        if len(raw) != rule[1]:
            raise ProtocolError(f"{where}: expected {rule[1]} bytes")
        return raw
    raise AssertionError(f"schema: unknown field kind {kind!r}")  # pragma: no cover


# --- framing ---------------------------------------------------------------------------------------


def encode(kind: str, sender: Side, **fields: Any) -> bytes:
    """One frame. Checked on the way out too: we never send what we would refuse."""
    msg = check(kind, fields, sender)
    wire = {k: (base64.b64encode(v).decode() if isinstance(v, bytes) else v) for k, v in msg.fields.items()}
    body = json.dumps({"type": kind, **wire}, separators=(",", ":"), sort_keys=True).encode()
    if len(body) > MAX_BODY:
        raise ProtocolError(f"{kind}: body of {len(body)} bytes exceeds {MAX_BODY}")
    return HEADER.pack(MAGIC, VERSION, 0, len(body)) + body


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"body: {name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ProtocolError("body: duplicate key")
    return obj


class Decoder:
    """Feed bytes as they arrive; get whole, checked messages out. Holds at most one frame."""

    def __init__(self, sender: Side) -> None:
        self.sender = sender
        self._buf = bytearray()
        self._need: int | None = None  # body length once the header is read

    def feed(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        view = memoryview(data)
        while view:
            want = (self._need if self._need is not None else HEADER.size) - len(self._buf)
            take, view = view[:want], view[want:]
            self._buf += take
            if len(self._buf) < (self._need if self._need is not None else HEADER.size):
                break
            if self._need is None:
                raw = bytes(self._buf)
                self._buf.clear()
                self._need = self._header(raw)
            else:
                body, self._buf, self._need = bytes(self._buf), bytearray(), None
                out.append(self._body(body))
        return out

    @staticmethod
    def _header(raw: bytes) -> int:
        magic, version, reserved, length = HEADER.unpack(raw)
        if magic != MAGIC:
            raise ProtocolError("header: bad magic")
        if version != VERSION:
            raise ProtocolError(f"header: protocol version {version} is not supported (want {VERSION})")
        if reserved != 0:
            raise ProtocolError("header: reserved byte is not zero")
        if not 1 <= length <= MAX_BODY:
            raise ProtocolError(f"header: body length {length} outside 1..{MAX_BODY}")
        return int(length)

    def _body(self, raw: bytes) -> Message:
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant,
                             object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ProtocolError("body: not UTF-8 JSON") from err
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise ProtocolError("body: expected an object with a string 'type'")
        kind = obj.pop("type")
        return check(kind, obj, self.sender)

    @property
    def buffered(self) -> int:
        return len(self._buf)
