"""The console relay of a libvirt host: the far end of the gateway for desktops on other hosts.

It runs in the host agent (`shiftdesk host-agent`), beside libvirtd, and listens on the host's
address with TLS only. A client must present a certificate from ShiftDesk's local CA whose common
name is allowed (the control plane's, the same one the host's libvirtd admits), else the TLS
handshake fails and nothing is read. The client sends one request line naming a desktop
(domain/console.py); the relay looks the desktop up in its own libvirt (a running desktop of this
installation, its VNC socket from the live definition), answers OK and carries bytes both ways
until either side closes. A refusal is one `NO <reason>` line, then the connection closes.

Given the host's files (`host_files`), it also carries out the control plane's operations on
them (`SHIFTDESK-HOST/1 <operation>`, domain/host_ops.py): one line of JSON arguments of at most
256 KiB within the request timeout, one line of answer; a clone's restore fifo is served until
the client closes, at most FEED_TIMEOUT.

What a client may cost is bounded: one request line of at most 128 bytes within the request
timeout, a fixed number of consoles at once, and 64 KiB in flight each way per console (a side
is read only after the other took the previous chunk). The bytes are RFB, filtered by the gateway
that sent them: this relay adds no parsing a guest or a browser could reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from controlplane.domain import console, host_ops
from controlplane.domain.host_ops import HostOp
from controlplane.drivers.console_relay import CHUNK, splice
from controlplane.drivers.libvirt.host_files import LocalHostFiles, serve
from controlplane.errors import ShiftDeskError

log = logging.getLogger(__name__)
Resolve = Callable[[str, console.Stream], Path]  # desktop, stream -> its socket here (raises if not ours)


def server_context(*, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS 1.3 server context that requires a client certificate signed by CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(*, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS 1.3 client context that trusts CA alone (not the system's CAs) and presents CERT."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(cert, key)
    return ctx


def _common_name(writer: asyncio.StreamWriter) -> str:
    cert = writer.get_extra_info("peercert") or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class ConsoleServer:
    def __init__(self, resolve: Resolve, tls: ssl.SSLContext, *, allowed_clients: frozenset[str],
                 max_consoles: int = 256, request_timeout: float = 5.0,
                 host_files: LocalHostFiles | None = None, feed_timeout: float = 300.0) -> None:
        self.resolve = resolve
        self.host_files = host_files  # this host's files, for the control plane's host operations
        self.feed_timeout = feed_timeout  # a restore that reads its fifo longer than this is cut off
        self.tls = tls
        self.allowed_clients = allowed_clients
        self.max_consoles = max_consoles
        self.request_timeout = request_timeout
        self.live = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> asyncio.Server:
        self.server = await asyncio.start_server(
            self._serve, host, port, ssl=self.tls, limit=console.MAX_LINE,
            ssl_handshake_timeout=self.request_timeout)
        return self.server

    def run_in_thread(self, host: str, port: int) -> threading.Thread:
        """Serve on HOST:PORT from a daemon thread of its own (the host agent's main thread keeps
        the lease). Returns once listening; OSError if it cannot listen."""
        ready, failed = threading.Event(), []

        async def serve() -> None:
            try:
                server = await self.start(host, port)
            except OSError as err:
                failed.append(err)
                return
            finally:
                ready.set()
            log.info("console relay on %s:%d", host, port)
            async with server:
                await server.serve_forever()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), name="console-relay", daemon=True)
        thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return thread

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _common_name(writer)
        try:
            if client not in self.allowed_clients:
                log.warning("console: refused a client named %r", client)
                return  # before reading a byte: an unknown client is told nothing
            if self.live >= self.max_consoles:
                writer.write(console.refusal("too many consoles on this host"))
                return
            self.live += 1
            try:
                await self._relay(reader, writer, client)
            finally:
                self.live -= 1
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        async with asyncio.timeout(self.request_timeout):
            line = await reader.readuntil(b"\n")  # LimitOverrunError past MAX_LINE: nothing more is read
        try:
            stream, desktop = console.parse_request(line)
        except ShiftDeskError as err:
            log.info("console: refused %s: %s", client, err)
            writer.write(console.refusal(str(err)))
            return
        if stream == console.Stream.HOST:
            await self._host_operation(reader, writer, HostOp(desktop), client)
            return
        try:
            socket = await asyncio.to_thread(self.resolve, desktop, stream)  # asks libvirt: off the event loop
            async with asyncio.timeout(self.request_timeout):
                vnc_reader, vnc_writer = await asyncio.open_unix_connection(str(socket), limit=CHUNK)
        except (ShiftDeskError, OSError, TimeoutError) as err:
            log.info("console: refused %s: %s", client, err)
            writer.write(console.refusal(str(err)))
            return
        log.info("console: %s %s opened for %s", desktop, stream.name.lower(), client)
        writer.write(console.OK)
        try:
            await splice((reader, writer), (vnc_reader, vnc_writer))
        finally:
            log.info("console: %s %s closed for %s", desktop, stream.name.lower(), client)

    async def _host_operation(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, op: HostOp,
                              client: str) -> None:
        """One operation on this host's files (domain/host_ops.py): OK, its arguments, its answer;
        a feed is then served until the client closes (its restore is over) or FEED_TIMEOUT."""
        files = self.host_files
        if files is None:
            writer.write(console.refusal("this relay serves no host operations"))
            return
        writer.write(console.OK)
        async with asyncio.timeout(self.request_timeout):
            line = await _read_line(reader, host_ops.MAX_JSON)
        try:
            args = host_ops.decode(line)
            if op == HostOp.FEED:
                await self._feed(files, reader, writer, args)
                return
            answer = await asyncio.to_thread(serve, files, op, args)
        except (ShiftDeskError, OSError) as err:
            log.info("host operation %s for %s failed: %s", op.value, client, err)
            answer = {"error": str(err)[:500]}
        writer.write(host_ops.encode(answer))
        await writer.drain()

    async def _feed(self, files: LocalHostFiles, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    args: dict[str, object]) -> None:
        feed = files.feed(host_ops.text(args, "name"), host_ops.text(args, "template"), host_ops.text(args, "xml"))
        path = await asyncio.to_thread(feed.__enter__)
        try:
            writer.write(host_ops.encode({"path": str(path)}))
            await writer.drain()
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(self.feed_timeout):
                    while await reader.read(CHUNK):
                        pass  # nothing is expected: the close is the signal
        finally:
            await asyncio.to_thread(feed.__exit__, None, None, None)


async def _read_line(reader: asyncio.StreamReader, limit: int) -> bytes:
    """One line of at most LIMIT bytes, the last thing the client sends before it waits for us."""
    out = bytearray()
    while not out.endswith(b"\n"):
        chunk = await reader.read(CHUNK)
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(out), None)
        out += chunk
        if len(out) > limit or b"\n" in out[:-1]:
            raise asyncio.LimitOverrunError("arguments: not one line of at most the limit", len(out))
    return bytes(out)
