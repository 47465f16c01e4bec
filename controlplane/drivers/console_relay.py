"""The client side of the console relays (gateway/console_server.py runs the server side on each
host): open a desktop's VNC server or host channel on another host over mutual TLS, and carry
bytes between two streams. Used by the gateway (consoles) and by the libvirt driver (the host
channels of another host's desktops, see RelayedChannels)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controlplane.domain import console
from controlplane.domain.console import Stream
from controlplane.errors import InvalidInput, TemporaryError

CHUNK = 64 * 1024
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_relayed(address: str, port: int, tls: ssl.SSLContext, desktop: str, stream: Stream) -> Streams:
    """STREAM of DESKTOP through the relay at ADDRESS:PORT, once it said OK. TemporaryError when
    it refuses or does not answer as the protocol says."""
    reader, writer = await asyncio.open_connection(address, port, ssl=tls, server_hostname=address)
    try:
        writer.write(console.request(desktop, stream))
        await writer.drain()
        line = await reader.readuntil(b"\n")
        if len(line) > console.MAX_LINE:
            raise TemporaryError("console relay: reply too long", delay=5)
        console.check_reply(line)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
        writer.close()
        raise TemporaryError(f"console relay of {address}: {type(err).__name__}", delay=5) from err
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel TASKS and wait until each has ended, whatever it raised."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()  # the next chunk is read only once this one is on its way


async def splice(a: Streams, b: Streams) -> None:
    """Carry bytes both ways between A and B until either side ends; then close both."""
    tasks = [asyncio.create_task(_copy(a[0], b[1])), asyncio.create_task(_copy(b[0], a[1]))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_all(tasks)
        a[1].close()
        b[1].close()


class RelayedChannels:
    """The host channels of one remote host's desktops, as plain sockets for GuestLinks.

    GuestLinks reads its sockets from one thread and writes them from others; a TLS socket must
    not be used from two threads at once. So each channel is a socket pair: GuestLinks gets one
    end, and this object's event loop (a thread of its own) carries bytes between the other end
    and the TLS stream to the host's relay. A relay that cannot be reached is not asked again for
    RETRY_S, so a pass over a host whose relay is down does not wait once per desktop."""

    def __init__(self, address: str, port: int, tls: Callable[[], ssl.SSLContext | None], *,
                 timeout: float = 2.0, retry_s: float = 5.0) -> None:
        self.address, self.port, self.timeout, self.retry_s = address, port, timeout, retry_s
        self._tls_factory = tls
        self._tls: ssl.SSLContext | None = None
        self._down_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._live: set[asyncio.Task[None]] = set()

    def dial(self, name: str, _path: Path) -> socket.socket:
        """NAME's host channel (GuestLinks' dial: the path is the other host's, not used here).
        OSError when it cannot be opened, as a Unix socket's connect would."""
        if time.monotonic() < self._down_until:
            raise OSError(f"console relay of {self.address}: not answering, retried later")
        try:
            return asyncio.run_coroutine_threadsafe(self._open(name), self._running()).result(self.timeout + 1)
        except Exception as err:
            if not isinstance(err, console.Refused | InvalidInput):  # about NAME only, not the relay
                self._down_until = time.monotonic() + self.retry_s
            raise OSError(f"host channel of {name} through {self.address}: {err}") from err

    async def _open(self, name: str) -> socket.socket:
        if self._tls is None:
            self._tls = self._tls_factory()
            if self._tls is None:
                raise TemporaryError("no client certificate for console relays", delay=60)
        relayed = await asyncio.wait_for(open_relayed(self.address, self.port, self._tls, name, Stream.CHANNEL),
                                         self.timeout)
        ours, theirs = socket.socketpair()
        local = await asyncio.open_connection(sock=ours)
        task = asyncio.create_task(splice(relayed, local))
        self._live.add(task)
        task.add_done_callback(self._live.discard)
        return theirs

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=f"channels-{self.address}", daemon=True).start()
                self._loop = loop
            return self._loop
