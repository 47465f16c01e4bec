"""The pixel-only relay: browser WebSocket <-> desktop VNC server, through the RFB filter.

The desktop's VNC server is its Unix socket on this host, or, for a desktop on another host, that
host's console relay over mutual TLS (domain/console.py, console_server.py): either way the
filter runs here, in front of the session.

Both handshakes are performed by the gateway itself (it is the server to the browser and the
client to QEMU), then every byte each way goes through the filter's state machine. Back-pressure
is structural: the gateway reads from the desktop only after the browser took the previous
chunk, and from the browser only after the desktop took the previous message.

What one browser may cost is bounded: its bytes are paced by a token bucket (an honest viewer
sends a few KiB/s of keys and pointer; a flood is slowed, not buffered), the relay yields to the
event loop after every few KiB so other sessions and the API keep their latency, and what the
filter drops is tallied and reported once, when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.domain.console import Console, LocalConsole, Stream
from controlplane.domain.rfb.filter import Policy, RfbFilter
from controlplane.domain.rfb.handshake import BrowserHandshake, UpstreamHandshake
from controlplane.domain.rfb.stream import Event, FilterClosed
from controlplane.domain.token_bucket import TokenBucket
from controlplane.drivers.console_relay import cancel_all, open_relayed
from controlplane.errors import TemporaryError

CHUNK = 64 * 1024
SLICE = 4 * 1024  # browser input is filtered this much at a time between yields to the event loop


class Browser(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...

    async def receive_bytes(self) -> bytes:
        """Next binary message; raises Disconnected when the browser went away."""


class Disconnected(Exception):
    pass


@dataclass
class Outcome:
    reason: str
    bytes_from_browser: int = 0
    bytes_to_browser: int = 0
    events: list[Event] = field(default_factory=list)  # tallied by kind: at most a few per session


Watchdog = Callable[[RfbFilter], Coroutine[Any, Any, str]]


@dataclass(frozen=True)
class Pace:
    """How fast one browser may send: bytes per second sustained, and a burst."""

    rate: float = 64 * 1024
    burst: float = 256 * 1024


async def open_console(endpoint: Console, tls: ssl.SSLContext | None) -> tuple[asyncio.StreamReader,
                                                                                 asyncio.StreamWriter]:
    """A stream to the desktop's VNC server: its socket here, or through its host's console relay
    (TemporaryError when the relay refuses, or no client certificate is configured for it)."""
    if isinstance(endpoint, LocalConsole):
        return await asyncio.open_unix_connection(str(endpoint.socket))
    if tls is None:
        raise TemporaryError(f"console of {endpoint.desktop}: no client certificate for console relays", delay=60)
    return await open_relayed(endpoint.address, endpoint.port, tls, endpoint.desktop, Stream.VNC)


async def relay(browser: Browser, endpoint: Console, *, handshake_timeout: float, idle_timeout: float,
                policy: Policy | None = None, outcome: Outcome | None = None, watchdog: Watchdog | None = None,
                pace: Pace = Pace(), tls: ssl.SSLContext | None = None) -> Outcome:
    """Relay until either side ends. OUTCOME (if given) is kept current even if this is cancelled.
    TLS is the client context for console relays of other hosts."""
    outcome = outcome or Outcome(reason="?")
    reader, writer = await asyncio.wait_for(open_console(endpoint, tls), handshake_timeout)
    filt: RfbFilter | None = None
    try:
        filt = await asyncio.wait_for(_handshakes(browser, reader, writer, policy), handshake_timeout)
        outcome.reason = await _pump(browser, reader, writer, filt, idle_timeout, watchdog, pace)
    except TimeoutError:
        outcome.reason = "handshake timeout"
    except FilterClosed as err:
        outcome.reason = f"refused: {err.reason}"
    except (Disconnected, ConnectionError, asyncio.IncompleteReadError):
        outcome.reason = "closed during handshake"
    finally:
        if filt is not None:
            outcome.bytes_from_browser, outcome.bytes_to_browser = filt.client.bytes_in, filt.server.bytes_out
            outcome.events = [e for e in filt.client.events + filt.server.events if e.kind != "closed"]  # in reason
        writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return outcome


async def _handshakes(browser: Browser, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      policy: Policy | None) -> RfbFilter:
    upstream = UpstreamHandshake()
    while upstream.result is None:
        data = await reader.read(4096)
        if not data:
            raise FilterClosed("desktop closed during handshake")
        reply = upstream.feed(data)
        if reply:
            writer.write(reply)
            await writer.drain()
    init = upstream.result
    hs = BrowserHandshake(init)
    await browser.send_bytes(hs.greeting())
    while not hs.done:
        reply = hs.feed(await browser.receive_bytes())
        if reply:
            await browser.send_bytes(reply)
    filt = RfbFilter(init.width, init.height, policy)
    if upstream.stream.buf:
        await browser.send_bytes(filt.from_server(bytes(upstream.stream.buf)))
    if hs.stream.buf:
        writer.write(filt.from_client(bytes(hs.stream.buf)))
    return filt


async def _pump(browser: Browser, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, filt: RfbFilter,
                idle_timeout: float, watchdog: Watchdog | None, pace: Pace) -> str:
    loop = asyncio.get_running_loop()
    pacer = TokenBucket(pace.rate, pace.burst, loop.time)  # a browser's bytes: over its rate it waits

    async def desktop_to_browser() -> str:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return "desktop closed"
            out = filt.from_server(data)
            if out:
                await browser.send_bytes(out)

    async def browser_to_desktop() -> str:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):  # not wait_for: on 3.11 it can swallow a cancel
                    data = await browser.receive_bytes()  # that lands as a message arrives (gh-86296)
            except TimeoutError:
                return "idle timeout"
            except Disconnected:
                return "browser closed"
            view = memoryview(data)
            for at in range(0, len(view), SLICE):  # a big message must not hold the event loop
                piece = view[at:at + SLICE]
                await asyncio.sleep(pacer.delay(len(piece)))  # paced, and yields to the loop every slice
                out = filt.from_client(bytes(piece))
                if out:
                    writer.write(out)
                    await writer.drain()

    tasks = [asyncio.create_task(desktop_to_browser()), asyncio.create_task(browser_to_desktop())]
    if watchdog is not None:  # session rules: idle, maximum length, an admin's disconnect
        tasks.append(asyncio.create_task(watchdog(filt)))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        try:
            return first.result()
        except FilterClosed as err:
            return f"filter closed: {err.reason}"
        except (ConnectionError, Disconnected):
            return "connection lost"
    finally:
        await cancel_all(tasks)
