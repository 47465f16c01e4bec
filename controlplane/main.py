"""Wiring only: settings -> engine, drivers, context -> the FastAPI app and the reconciler.

The only module that chooses concrete drivers. Nothing happens at import.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import stat
from datetime import timedelta
from functools import cache, partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pythonjsonlogger.json import JsonFormatter

from controlplane.config import Settings
from controlplane.db.engine import make_engine, migrate
from controlplane.domain import demo
from controlplane.domain.app_policy import public_bytes
from controlplane.domain.login_throttle import LoginThrottle, ThrottleRules
from controlplane.domain.placement import Ratios
from controlplane.domain.planning import Limits
from controlplane.domain.ports import Directory, DirectoryAdmin, HostNetwork, Hypervisor
from controlplane.domain.redact import redact
from controlplane.domain.roster import ProvisioningRate
from controlplane.drivers.clock import SystemClock
from controlplane.drivers.image_builder import ScriptImageBuilder
from controlplane.services import apps, hosts, telemetry
from controlplane.services.context import AuthConfig, Context
from controlplane.services.fleet import Fleet
from controlplane.services.host_agent import HostAgent
from controlplane.services.reconciler import Reconciler
from controlplane.services.tokens import load_or_create_key


def make_hypervisor(settings: Settings) -> Hypervisor:
    """This host's hypervisor, from the settings."""
    return host_hypervisor(settings, None, settings.libvirt.uri)


def host_hypervisor(settings: Settings, host: str | None, uri: str) -> Hypervisor:
    """The hypervisor of HOST at URI (None: this control plane's own host). Another host is driven
    with this host's settings, but its overlays, templates and sockets live in DATA_DIR/hosts/HOST
    on that host's own disk (its host agent, `build_host_agent`, uses the same directories and
    serves their files to the control plane), and where hosts share storage, none may ever see
    another's overlays as orphans of its own."""
    if uri.startswith("fake://"):
        from controlplane.drivers.fake import FakeHypervisor

        return FakeHypervisor(root=settings.overlay_dir)
    from controlplane.drivers.libvirt.driver import LibvirtHypervisor

    own = settings.data_dir / "hosts" / host if host is not None else None
    overlays, run, cache = ((own / "desktops", own / "run", own / "cache") if own
                            else (settings.overlay_dir, settings.run_dir, settings.cache_dir))
    return LibvirtHypervisor(
        uri=with_client_certificate(settings, uri), instance=settings.instance, storage_pool=settings.storage_pool,
        overlay_dir=overlays, run_dir=run, readiness=settings.libvirt.readiness,
        domain_type=settings.libvirt.domain_type, probe_cache=cache, data_dir=settings.data_dir,
        policy_key=public_bytes(apps.load_signing_key(apps_key_file(settings))),
        console_port=settings.console.port, console_tls=partial(console_client_tls, settings),
        image_store=settings.image_store,
    )


def with_client_certificate(settings: Settings, uri: str) -> str:
    """URI, and for qemu+tls:// without a `pkipath` the control plane's own client certificate
    from the local CA (DATA_DIR/tls/libvirt-client), which the host's libvirtd is set to admit."""
    if not uri.startswith("qemu+tls://") or "pkipath=" in uri:
        return uri
    pki = client_pki(settings)
    return f"{uri}{'&' if '?' in uri else '?'}pkipath={pki}"


def client_pki(settings: Settings) -> Path:
    """The control plane's client certificate from the local CA (DATA_DIR/tls/libvirt-client), in
    libvirt's pkipath layout: what its hosts' libvirtd and console relays admit."""
    from controlplane.drivers.local_ca import ensure_libvirt_client

    return ensure_libvirt_client(settings.data_dir / "tls", settings.data_dir / "tls" / "libvirt-client")


def console_client_tls(settings: Settings) -> ssl.SSLContext:
    """How the gateway reaches the console relays of other hosts: as the control plane's client."""
    from controlplane.gateway.console_server import client_context

    pki = client_pki(settings)
    return client_context(cert=pki / "clientcert.pem", key=pki / "clientkey.pem", ca=pki / "cacert.pem")


def build_console_relay(settings: Settings, hypervisor: Hypervisor) -> Any:
    """The host agent's console relay (a ConsoleServer), or None when `console.listen` is unset.
    With a libvirt HYPERVISOR it also serves the control plane's operations on this host's files
    (drivers/libvirt/host_files.py), in the directories the control plane named for this host."""
    if not settings.console.listen:
        return None
    from controlplane.drivers.libvirt.driver import LibvirtHypervisor
    from controlplane.drivers.libvirt.host_files import LocalHostFiles
    from controlplane.gateway.console_server import ConsoleServer, server_context

    pki = settings.console.pki_dir
    tls = server_context(cert=pki / "servercert.pem", key=pki / "serverkey.pem", ca=pki / "cacert.pem")
    files = hypervisor.files if isinstance(hypervisor, LibvirtHypervisor) else None  # the driver's own, local
    return ConsoleServer(hypervisor.running_socket, tls, allowed_clients=frozenset(settings.console.allowed_clients),
                         max_consoles=settings.console.max_consoles,
                         host_files=files if isinstance(files, LocalHostFiles) else None)


def apps_key_file(settings: Settings) -> Path:
    """The app-allowlist signing key (services/apps.py): root's alone, in DATA_DIR."""
    return settings.data_dir / "apps-signing.key"


def make_directory(settings: Settings) -> Directory | None:
    ldap = settings.ldap
    if not ldap.url:
        return None
    from controlplane.drivers.ldap.directory import LdapDirectory

    return LdapDirectory(
        url=ldap.url, base_dn=ldap.base_dn, bind_dn=ldap.bind_dn,
        bind_password=ldap.bind_password.get_secret_value(), ca_file=ldap.ca_file, allow_plain=ldap.allow_plain,
        start_tls=ldap.start_tls, computers_ou=ldap.computers_ou, instance=settings.instance,
        connect_timeout=ldap.connect_timeout_s, receive_timeout=ldap.receive_timeout_s,
    )


def demo_dc_dir(settings: Settings) -> Path:
    return settings.data_dir / "demo" / "samba"


def open_demo_directory(settings: Settings) -> DirectoryAdmin:
    """`make run`'s Samba AD DC (provisioned on first use, started if stopped), ready to fill."""
    from controlplane.drivers.ldap.samba_dc import SambaAdmin, SambaDC

    dc = SambaDC(demo_dc_dir(settings), realm=demo.REALM)
    dc.provision()
    dc.start()
    return SambaAdmin(dc)


def stop_demo_directory(settings: Settings) -> None:
    from controlplane.drivers.ldap.samba_dc import terminate

    terminate(demo_dc_dir(settings) / "run" / "samba.pid")


def make_network(settings: Settings) -> HostNetwork | None:
    if not settings.network.enabled:
        return None
    from controlplane.drivers.netfilter.host_network import LinuxHostNetwork
    from controlplane.drivers.netfilter.proxy import SquidProxy
    state = network_state_dir(settings)
    proxy = SquidProxy(settings.desktop_network, state, upstream_dns(settings))
    return LinuxHostNetwork(instance=settings.instance, network=settings.desktop_network, state_dir=state,
                            proxy=proxy)


def network_state_dir(settings: Settings) -> Path:
    """Outside DATA_DIR (root's alone): dnsmasq and Squid run as their own users and keep files here."""
    return Path("/run/shiftdesk") / settings.instance / "net"


def upstream_dns(settings: Settings) -> list[str]:
    from controlplane.drivers.netfilter.host_network import resolv_conf_servers
    return settings.network.upstream_dns or resolv_conf_servers()


def make_resolver(ctx: Context, settings: Settings) -> Any:
    """The desktops' enforcing resolver (started by `shiftdesk serve` when the network is on)."""
    from controlplane.drivers.netfilter.egress import NftEgressFirewall
    from controlplane.drivers.netfilter.host_network import host_addresses
    from controlplane.drivers.netfilter.proxy import SquidProxy
    from controlplane.resolver.core import EgressResolver, Upstream
    from controlplane.resolver.server import ProxyFiles, ResolverService
    net = settings.desktop_network
    servers = upstream_dns(settings)
    upstream = [Upstream(s.split(":")[0], int(s.split(":")[1]) if ":" in s else 53) for s in servers]
    forbidden = [net.subnet, *host_addresses(), *settings.network.forbidden_answers]
    resolver = EgressResolver(NftEgressFirewall(settings.instance), upstream, forbidden)
    proxy = SquidProxy(net, network_state_dir(settings), servers)
    return ResolverService(ctx, resolver, net.host, proxy=ProxyFiles(proxy.allowlists_file, proxy.refusals_file))


def measured(directory: Directory | None) -> Directory | None:
    return telemetry.MeasuredDirectory(directory) if directory is not None else None


def build_context(settings: Settings, hypervisor: Hypervisor | None = None,
                  directory: Directory | None = None) -> Context:
    _private_dir(settings.data_dir)
    engine = make_engine(settings.database_url, settings.db.busy_timeout_ms)
    if settings.db.migrate_url:
        owner = make_engine(settings.db.migrate_url)
        migrate(owner, app_role=engine.url.username)
        owner.dispose()
    else:
        migrate(engine)
    rc = settings.reconciler
    return Context(
        engine=engine,
        hypervisor=hypervisor or make_hypervisor(settings),
        clock=SystemClock(),
        builder=ScriptImageBuilder(images_dir=settings.images_dir, cache_dir=settings.cache_dir),
        instance=settings.instance,
        host_id=hosts.ensure(engine, name=settings.libvirt.host_name or socket.gethostname(),
                             uri=settings.libvirt.uri),
        image_store=settings.image_store,
        limits=Limits(boot_timeout=timedelta(seconds=rc.boot_timeout_s), failure_budget=rc.failure_budget,
                      template_wait=timedelta(seconds=rc.template_wait_s),
                      ratios=Ratios(cpu=rc.cpu_ratio, memory=rc.memory_ratio,
                                    disk_reserve_bytes=int(rc.disk_reserve_gib * (1 << 30))),
                      host_lease_ttl=timedelta(seconds=rc.host_lease_ttl_s)),
        parallelism=rc.parallelism,
        directory=directory or measured(make_directory(settings)),
        auth=AuthConfig(key=load_or_create_key(settings.auth.key_file or settings.data_dir / "token.key"),
                        ttl_s=settings.auth.token_ttl_s, admin_group=settings.auth.admin_group.lower()),
        ticket_ttl_s=settings.gateway.ticket_ttl_s,
        provisioning_rate=_planned_rate(settings),
        login_throttle=LoginThrottle(ThrottleRules(**settings.auth.throttle.model_dump())),
        network=make_network(settings),
        app_signer=apps.load_signing_key(apps_key_file(settings)),
        fleet=Fleet(engine, partial(host_hypervisor, settings)),
        console_tls=cache(partial(console_client_tls, settings)),
    )


def build_host_agent(settings: Settings, name: str) -> HostAgent:
    """The host agent of host NAME: this machine's libvirt, and the control plane's database; with
    desktop networks on, this host's desktop network, and (once the host is registered) its
    enforcing resolver, serving this host's desktops."""
    engine = make_engine(settings.database_url, settings.db.busy_timeout_ms)
    # this machine's libvirt, with the directories the control plane names for host NAME
    hypervisor, host_network = host_hypervisor(settings, name, settings.libvirt.uri), make_network(settings)

    def start_resolver(host_id: int) -> None:
        ctx = Context(engine=engine, hypervisor=hypervisor, clock=SystemClock(), builder=None,
                      instance=settings.instance, host_id=host_id, image_store=settings.image_store,
                      network=host_network)
        make_resolver(ctx, settings).start()

    return HostAgent(engine, name, hypervisor, SystemClock(),
                     ttl=timedelta(seconds=settings.reconciler.host_lease_ttl_s), network=host_network,
                     on_registered=start_resolver if host_network is not None else None)


def _private_dir(path: Path) -> None:
    """DATA_DIR is root's alone (0700), whatever the umask; an older, looser one is tightened.

    One grant is kept: search (not read) for another group than ours, which the libvirt driver
    gives QEMU's group so QEMU can open the images, overlays and sockets libvirt labels for it.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    wanted = 0o700 | (stat.S_IMODE(st.st_mode) & 0o010 if st.st_gid != os.getegid() else 0)
    if stat.S_IMODE(st.st_mode) != wanted:
        path.chmod(wanted)


def _planned_rate(settings: Settings) -> ProvisioningRate | None:
    sched = settings.scheduler
    if sched.boot_s is None or sched.desktops_per_s is None:
        return None
    return ProvisioningRate(boot_s=sched.boot_s, per_second=sched.desktops_per_s)


def build_reconciler(ctx: Context, settings: Settings) -> Reconciler:
    return Reconciler(ctx, lease_ttl=timedelta(seconds=settings.reconciler.lease_ttl_s))


def tls_files(settings: Settings) -> tuple[Path, Path]:
    """The configured certificate, or one our local CA signs (kept, 0600, in DATA_DIR/tls)."""
    api = settings.api
    if api.tls_cert_file and api.tls_key_file:
        return api.tls_cert_file, api.tls_key_file
    from controlplane.drivers.local_ca import ensure_server_cert

    files = ensure_server_cert(settings.data_dir / "tls", api.tls_names)
    return files.cert, files.key


def create_app(settings: Settings, ctx: Context | None = None, reconciler: Reconciler | None = None) -> FastAPI:
    from controlplane.api.app import build_app
    from controlplane.gateway import app as gateway

    ctx = ctx or build_context(settings)
    background = []
    if reconciler is not None and ctx.network is not None:  # serving desktops with a network
        background.append(make_resolver(ctx, settings))
    if reconciler is not None:  # serving: the shift scheduler runs beside the reconciler (one per DB)
        from controlplane.scheduler.jobs import ShiftScheduler

        background.append(ShiftScheduler(ctx, period_s=settings.scheduler.period_s,
                                         on_change=reconciler.wake.set))
    app = build_app(ctx, settings, reconciler, background)
    gateway.install(app)
    return app


class _Redact(logging.Filter):
    """Redact every record the handler writes: its message with the arguments, and its traceback
    (formatted here, once, so neither the text nor the JSON formatter formats it again)."""

    _plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        if record.exc_info:
            record.exc_text = redact(self._plain.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """One handler on the root logger for everything `shiftdesk serve` logs (uvicorn's loggers
    propagate to it, see build_server), text or JSON lines, every line passed through
    domain/redact.py so tickets, tokens and passwords never reach a log."""
    handler = logging.StreamHandler(stream)
    if settings.log.format == "json":
        handler.setFormatter(JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time",  # ISO 8601
                                            rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redact())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log.level)


def build_server(app: FastAPI, settings: Settings, *, host: str, port: int, cert: Path, key: Path) -> Any:
    """The uvicorn server of `shiftdesk serve`. Asked to stop (SIGTERM), it first ends the live
    display sessions (agents are told why, each session is audited), then stops within seconds
    instead of waiting for connections to go away by themselves."""
    import uvicorn

    live = app.state.gateway_live

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            await live.end_all(timeout=2.0)
            await super().shutdown(sockets)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None,  # root's handler
                            ssl_certfile=str(cert),
                            ssl_keyfile=str(key), access_log=False,  # gateway URLs carry (single-use) tickets
                            ws_max_size=settings.gateway.max_frame_bytes, timeout_graceful_shutdown=2,
                            # no permessage-deflate: a few bytes on the wire could inflate to megabytes of
                            # queued messages before the frame cap or the pacer see them; pixels are
                            # compressed by RFB already and input is tiny
                            ws_per_message_deflate=False)
    return Server(config)
