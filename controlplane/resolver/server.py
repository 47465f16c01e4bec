"""The resolver's sockets: UDP and TCP port 53 on the host's address of the desktop network, in
a thread with its own event loop (beside the API, the gateway and the reconciler of
`shiftdesk serve`). It refreshes the allowlists every second and writes counted refusals to the
audit log every ten, when it also puts back into the firewall what it opened (a replaced table
loses it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from controlplane.domain.egress import Refusal
from controlplane.resolver.core import EgressResolver
from controlplane.services import egress
from controlplane.services.context import Context

log = logging.getLogger(__name__)
MAX_UDP = 4096
MAX_TCP_CONNECTIONS = 256
TCP_IDLE_S = 5.0
MAX_REFUSAL_READ = 1 << 20


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: EgressResolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) <= MAX_UDP:
            asyncio.ensure_future(self._answer(data, addr))

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.resolver.handle(data, IPv4Address(addr[0]))
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@dataclass(frozen=True)
class ProxyFiles:
    """Where the resolver publishes allowlists for the proxy's helper, and reads its refusals."""

    allowlists: Path
    refusals: Path


def publish(path: Path, allowlists: egress.Allowlists) -> None:
    """Write ALLOWLISTS for the proxy helper, atomically (it reloads when the file changes)."""
    data = {str(ip): {"desktop": d.name, "user": d.user, "domains": sorted(d.domains)} for ip, d in allowlists.items()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.chmod(0o644)
    tmp.replace(path)


class ResolverService:
    def __init__(self, ctx: Context, resolver: EgressResolver, listen: IPv4Address, port: int = 53,
                 refresh_s: float = 1.0, audit_s: float = 10.0, proxy: ProxyFiles | None = None) -> None:
        self.ctx, self.resolver, self.listen, self.port, self.proxy = ctx, resolver, listen, port, proxy
        self._proxy_read = 0  # how far the proxy's refusal log has been counted
        self.refresh_s, self.audit_s = refresh_s, audit_s
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="resolver", daemon=True)
        self._tcp_slots = asyncio.Semaphore(MAX_TCP_CONNECTIONS)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await self._refresh()
        udp, tcp = await self._bind()
        self.ready.set()
        ticks = 0
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.refresh_s)
                await self._refresh()
                ticks += 1
                if ticks * self.refresh_s >= self.audit_s:
                    ticks = 0
                    await self._record()
                    await self._reassert()
        finally:
            udp.close()
            tcp.close()
            await self._record()

    async def _bind(self) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
        """Bind once the host network has the address (the reconciler makes it); retry until then."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self.resolver),
                                                             local_addr=(str(self.listen), self.port))
                tcp = await asyncio.start_server(self._tcp, str(self.listen), self.port, reuse_address=True)
                return udp, tcp
            except OSError as err:
                log.warning("resolver: cannot listen on %s:%d yet: %s", self.listen, self.port, err)
                await asyncio.sleep(1.0)

    async def _reassert(self) -> None:
        """Every audit period: the firewall holds what the resolver opened (see EgressResolver.reassert)."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.resolver.reassert)
        except Exception:  # the table is being rebuilt: the next period tries again
            log.exception("resolver: opened addresses not reasserted")

    async def _refresh(self) -> None:
        try:
            allowlists = await asyncio.get_running_loop().run_in_executor(None, egress.allowlists, self.ctx)
        except Exception:  # the database is away: keep enforcing the last allowlists
            log.exception("resolver: allowlists not refreshed")
            return
        if allowlists != self.resolver.allowlists and self.proxy is not None:
            publish(self.proxy.allowlists, allowlists)
        self.resolver.update(allowlists)
        if self.proxy is not None:
            self._count_proxy_refusals()

    def _count_proxy_refusals(self) -> None:
        """Refusals the proxy's helper logged since the last look (at most 1 MiB a tick)."""
        assert self.proxy is not None
        try:
            with self.proxy.refusals.open("rb") as fh:
                if fh.seek(0, 2) < self._proxy_read:
                    self._proxy_read = 0  # a new file
                fh.seek(self._proxy_read)
                chunk = fh.read(MAX_REFUSAL_READ)
        except OSError:
            return
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._proxy_read += len(complete)
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
                desktop = self.resolver.allowlists.get(IPv4Address(entry["src"]))
            except (ValueError, KeyError, TypeError):
                continue
            if desktop is not None:
                self.resolver.refusals.note(Refusal(desktop.name, desktop.user, str(entry["name"])[:253],
                                                    str(entry["rule"])[:200]))

    async def _record(self) -> None:
        counted, dropped = self.resolver.refusals.drain()
        try:
            await asyncio.get_running_loop().run_in_executor(None, egress.record_refusals, self.ctx, counted, dropped)
        except Exception:
            log.exception("resolver: %d refusals not audited", sum(n for _, n in counted) + dropped)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = IPv4Address(writer.get_extra_info("peername")[0])
        if self._tcp_slots.locked():
            writer.close()
            return
        async with self._tcp_slots:
            try:
                while True:
                    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_S), "big")
                    wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_S)
                    reply = await self.resolver.handle(wire, client)
                    if reply is None:
                        break
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
