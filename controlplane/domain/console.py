"""Where a desktop's console is, and the one-line protocol of the console relay on each host.

A desktop's VNC server and its host channel listen on Unix sockets of the host that runs it,
reachable by root only. On the control plane's own host the gateway and the driver open those
sockets. A desktop on another host is reached through that host's console relay (the host agent,
gateway/console_server.py): mutual TLS with certificates from ShiftDesk's local CA, so neither
plain VNC nor the guest's channel ever crosses a network. Over the TLS stream the client sends one
request line naming the stream and the desktop; the relay answers one line, `OK` or `NO <reason>`,
and from then on carries bytes both ways, unchanged: the RFB filter stays in the gateway, in front
of every session, and the guest's messages are checked by the control plane's driver as ever.

    SHIFTDESK-CONSOLE/1 sd-main-sales-0a1b2c\\n    ->    OK\\n  (then RFB)
    SHIFTDESK-CHANNEL/1 sd-main-sales-0a1b2c\\n    ->    OK\\n  (then the host channel's frames)
    SHIFTDESK-HOST/1 serial-ready\\n               ->    OK\\n  (then one host operation: host_ops.py)

Lines are bounded (MAX_LINE): a peer cannot make the other side buffer more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from controlplane.domain import naming
from controlplane.domain.host_ops import HostOp
from controlplane.errors import InvalidInput, TemporaryError

MAX_LINE = 128  # bytes, newline included: the longest desktop name fits three times over
_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
# an instant-clone template (`sd-<instance>.tpl-<key>`): its host channel only, never a console
_TEMPLATE = re.compile(rf"[a-z][a-z0-9-]{{0,30}}{re.escape(naming.TEMPLATE_MARK)}[a-z0-9-]{{1,40}}")
_OPS = frozenset(op.value for op in HostOp)
_REASON = re.compile(r"[ -~]{1,100}")  # printable ASCII: a reason is logged and shown, never markup


@dataclass(frozen=True)
class LocalConsole:
    """The desktop's VNC socket on this machine."""

    socket: Path


@dataclass(frozen=True)
class RemoteConsole:
    """The desktop's console through the relay of the host at ADDRESS:PORT."""

    address: str
    port: int
    desktop: str


Console = LocalConsole | RemoteConsole


class Stream(StrEnum):
    """What a request asks the relay for (the value is the request's protocol word)."""

    VNC = "SHIFTDESK-CONSOLE/1"  # the desktop's VNC server
    CHANNEL = "SHIFTDESK-CHANNEL/1"  # the host end of its host channel
    HOST = "SHIFTDESK-HOST/1"  # one operation on the host's files (host_ops.py): the line names it


def nameable(desktop: str, stream: Stream) -> bool:
    """Whether a request may name DESKTOP for STREAM: a desktop's name for a console or a
    channel, a template's for its host channel (a template on another host says it is ready over
    the relay too); for HOST, the operation's name."""
    if stream == Stream.HOST:
        return desktop in _OPS
    return bool(_NAME.fullmatch(desktop) or (stream == Stream.CHANNEL and _TEMPLATE.fullmatch(desktop)))


def request(desktop: str, stream: Stream = Stream.VNC) -> bytes:
    """The request line for STREAM of DESKTOP."""
    if not nameable(desktop, stream):
        raise InvalidInput(f"desktop: {desktop!r} is not a desktop name", field="desktop")
    return f"{stream.value} {desktop}\n".encode()


def parse_request(line: bytes) -> tuple[Stream, str]:
    """The stream and desktop a request line names. InvalidInput (field `request`) for anything else."""
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise InvalidInput("request: not one line of at most 128 bytes", field="request")
    try:
        protocol, _, desktop = line[:-1].decode("ascii").partition(" ")
    except UnicodeDecodeError:
        raise InvalidInput("request: not ASCII", field="request") from None
    try:
        stream = Stream(protocol)
    except ValueError:
        raise InvalidInput(f"request: protocol {protocol[:32]!r} is none of "
                           f"{', '.join(s.value for s in Stream)}", field="request") from None
    if not nameable(desktop, stream):
        raise InvalidInput(f"request: {desktop[:64]!r} is not a desktop name", field="request")
    return stream, desktop


OK = b"OK\n"


def refusal(reason: str) -> bytes:
    """The answer that refuses a request, with REASON made printable and short."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in reason)[:100] or "refused"
    return f"NO {text}\n".encode()


class Refused(TemporaryError):
    """The relay refused the request: about that desktop only (not running there, say), not the relay."""


def check_reply(line: bytes) -> None:
    """Nothing if LINE accepts the request; TemporaryError with the relay's reason if it refuses
    (the desktop may be starting or moving: the agent may try again), or if it is not a reply."""
    if line == OK:
        return
    text = line[:-1].decode("ascii", "replace") if line.endswith(b"\n") else ""
    if text.startswith("NO ") and _REASON.fullmatch(text[3:]):
        raise Refused(f"console relay refused: {text[3:]}", delay=5)
    raise TemporaryError("console relay: no valid reply", delay=5)
