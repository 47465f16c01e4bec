"""`shiftdesk`: the admin CLI, over the same services as the API.

Long work shows progress: `pool create/scale/delete` wait (by default) until the pool has
converged, reconciling in this process unless a running `shiftdesk serve` holds the
reconciler lease, in which case they only watch.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import typer
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from controlplane import remote
from controlplane.config import Settings
from controlplane.domain.placement import HostMode
from controlplane.domain.policy_load import MAX_FILE_BYTES
from controlplane.domain.rollout import RolloutState, Thresholds
from controlplane.drivers.local_ca import CLIENT_NAME, ensure_libvirt_client, ensure_libvirt_server
from controlplane.errors import ExpectedError, InvalidInput, NotFound, ShiftDeskError
from controlplane.main import (
    build_console_relay,
    build_context,
    build_host_agent,
    build_reconciler,
    build_server,
    configure_logging,
    create_app,
    open_demo_directory,
    stop_demo_directory,
    tls_files,
)
from controlplane.services import (
    demo,
    desktops,
    hosts,
    identity,
    images,
    policies,
    pools,
    rollouts,
    scaling,
    selftest,
)
from controlplane.services.context import Context
from controlplane.services.rollouts import RolloutPublic
from controlplane.services.views import (
    DesktopPublic,
    HostPublic,
    ImagePublic,
    PoolPublic,
    desktop_view,
    image_view,
)

app = typer.Typer(help="ShiftDesk: cloud desktops for contact centres.", no_args_is_help=True)
image_app = typer.Typer(help="Golden images.", no_args_is_help=True)
pool_app = typer.Typer(help="Desktop pools.", no_args_is_help=True)
desktop_app = typer.Typer(help="Desktops.", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(pool_app, name="pool")
app.add_typer(desktop_app, name="desktop")
rollout_app = typer.Typer(help="Move a pool to a new image version: canary, batches, rollback.",
                          no_args_is_help=True)
pool_app.add_typer(rollout_app, name="rollout")
policy_app = typer.Typer(help="Desktop policies as code (policies/*.yaml).", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
schedule_app = typer.Typer(help="Shift rosters that size pools (policies/rosters/*.yaml).", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")
demo_app = typer.Typer(help="The demo installation of `make run`.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
host_app = typer.Typer(help="Libvirt hosts: what they have, what desktops take, whether they answer.",
                       no_args_is_help=True)
app.add_typer(host_app, name="host")

@app.callback()
def _global(server: Annotated[str | None, typer.Option(
        "--server", help="Act on this remote control plane (https://...) through its API; also SHIFTDESK_URL")]
        = None) -> None:
    if server:
        os.environ[remote.ENV_URL] = server


out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the pool has converged")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait at most")]
GroupOpt = Annotated[list[str] | None, typer.Option(
    "--group", help="AD group entitled to the pool, by full DN or SID (repeat for more)")]
ACTOR = f"cli:{getpass.getuser()}"  # the host account that ran the command, for the audit log
T = TypeVar("T")


@contextmanager
def handled() -> Iterator[None]:
    """Errors as the admin should see them: a mistake (exit 2, the field named) or a failure (exit 1)."""
    try:
        yield
    except ExpectedError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    except ShiftDeskError as e:
        err.print(f"[red]failed:[/red] {e}")
        raise typer.Exit(1) from None


@contextmanager
def context() -> Iterator[tuple[Context, Settings]]:
    """This host's control plane (database, libvirt): the host operator's mode."""
    with handled():
        if os.environ.get(remote.ENV_URL):
            raise ExpectedError(f"this command acts on the control-plane host only (unset {remote.ENV_URL})",
                                field="server")
        settings = Settings()
        yield build_context(settings), settings


def remote_api() -> remote.Client | None:
    """The remote control plane SHIFTDESK_URL (or --server) names, signed in with `shiftdesk login`."""
    server = os.environ.get(remote.ENV_URL)
    if not server:
        return None
    creds = remote.saved(server)
    if creds is None:
        raise ExpectedError(f"not signed in at {server}: shiftdesk login --server {server}", field="server")
    return remote.Client(creds)


def emit(rows: Sequence[BaseModel], as_json: bool, columns: list[str]) -> None:
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(*columns)
    for row in rows:
        data = row.model_dump(mode="json")
        table.add_row(*[_cell(data[c]) for c in columns])
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def converge(ctx: Context, settings: Settings, pool: str, timeout: float) -> None:
    """Reconcile (or watch the server reconcile) with a progress bar until POOL is settled."""
    reconciler = build_reconciler(ctx, settings)
    with _bar("{task.completed}/{task.total} ready") as progress:
        task = progress.add_task(f"pool {pool}", total=None)

        def show(_plan: object) -> None:
            _pool_progress(progress, task, {v.name: v for v in pools.views(ctx)}.get(pool))

        done = reconciler.run_until_converged(timeout=timeout, busy_period=settings.reconciler.busy_period_s,
                                              on_pass=show)
    reconciler.close()
    if not done:
        err.print(f"[yellow]pool {pool} has not converged after {timeout:.0f} s; the reconciler keeps going[/]")
        raise typer.Exit(3)


# --- serve ---------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port")] = None,
    skip_selftest: Annotated[bool, typer.Option(help="Start even if libvirt is slow")] = False,
) -> None:
    """Run the API and the reconciler."""
    with context() as (ctx, settings):
        configure_logging(settings)
        check = selftest.run(ctx.hypervisor, settings.libvirt.selftest_max_ms)
        err.print(("selftest: " if check.ok else "[red]selftest:[/red] ") + check.explain())
        if not check.ok and not skip_selftest:
            raise typer.Exit(4)
        reconciler = build_reconciler(ctx, settings)
        api = create_app(settings, ctx, reconciler)
        h, p = host or settings.api.host, port or settings.api.port
        cert, key = tls_files(settings)
        err.print(f"ShiftDesk on https://{h}:{p}/  (agents: /portal/, API docs: /docs, CA: {cert.parent / 'ca.pem'})")
        build_server(api, settings, host=h, port=p, cert=cert, key=key).run()


@app.command()
def login(
    server: Annotated[str | None, typer.Option(help="The control plane, https://host:port (or SHIFTDESK_URL)")] = None,
    ca: Annotated[Path | None, typer.Option(help="Its CA certificate (PEM), pinned from now on (the local CA is "
                                                 "DATA_DIR/tls/ca.pem on the control plane)")] = None,
    username: Annotated[str | None, typer.Option(help="Your AD account (asked if not given)")] = None,
) -> None:
    """Sign in to a remote control plane as an AD admin; later commands act there through its API.
    The token (short-lived) and the pinned CA are kept 0600 in ~/.config/shiftdesk/."""
    with handled():
        target = server or os.environ.get(remote.ENV_URL)
        if not target:
            raise InvalidInput("server: give --server https://host:port or set SHIFTDESK_URL", field="server")
        user = username or typer.prompt("AD username")
        creds = remote.login(target, user, getpass.getpass(f"password for {user}: "), ca)
        err.print(f"signed in to {creds.server} as {creds.username} until "
                  f"{datetime.fromtimestamp(creds.expires_at, UTC):%Y-%m-%d %H:%M} UTC; "
                  f"commands act there while SHIFTDESK_URL={creds.server}")


@app.command()
def logout(server: Annotated[str | None, typer.Option(help="The control plane (or SHIFTDESK_URL)")] = None) -> None:
    """End the sign-in at a remote control plane and forget its token."""
    with handled():
        target = server or os.environ.get(remote.ENV_URL)
        if not target:
            raise InvalidInput("server: give --server https://host:port or set SHIFTDESK_URL", field="server")
        err.print(f"signed out of {target}" if remote.logout(target) else f"not signed in at {target}")


@app.command()
def token() -> None:
    """Print a short-lived admin API token for this host's operator (audited; for bootstrap)."""
    with context() as (ctx, _):
        value, claims = identity.local_admin_token(ctx, actor=ACTOR)
        print(value)
        err.print(f"admin token for {claims.sub}, valid {ctx.auth.ttl_s} s: "
                  "curl -H 'Authorization: Bearer <token>' ...")


@app.command("host-agent")
def host_agent(name: Annotated[str, typer.Argument(help="this host's name, as registered with `host add`")]) -> None:
    """Run on each libvirt host beside libvirtd: keep the host's lease, and power its desktops off
    if the lease cannot be kept (so the control plane may replace them elsewhere); with
    SHIFTDESK_CONSOLE__LISTEN, relay its desktops' consoles to the gateways over mutual TLS. Until SIGTERM."""
    with handled():
        settings = Settings()
        configure_logging(settings)
        agent = build_host_agent(settings, name)
        relay = build_console_relay(settings, agent.hypervisor)
        if relay is not None:  # the consoles of this host's desktops, for the gateways of other hosts
            relay.run_in_thread(settings.console.listen, settings.console.port)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with suppress(KeyboardInterrupt):
            agent.run(stop)


@app.command()
def reconcile(
    timeout: TimeoutOpt = 300.0,
) -> None:
    """Reconcile every pool until converged (for cron-less hosts and for tests)."""
    with context() as (ctx, settings):
        reconciler = build_reconciler(ctx, settings)
        done = reconciler.run_until_converged(timeout=timeout, busy_period=settings.reconciler.busy_period_s)
        reconciler.close()
        if not done:
            raise typer.Exit(3)


# --- images --------------------------------------------------------------------------------------


@image_app.command("build")
def image_build(recipe: str, as_json: JsonOpt = False) -> None:
    """Build RECIPE (images/recipes/RECIPE) and register it as a new version."""
    with handled():
        if (api := remote_api()) is not None:
            _built(recipe, as_json, lambda: ImagePublic.model_validate(api.call(
                "POST", "/api/v1/images", json={"recipe": recipe}, read_timeout=BUILD_WAIT_S)))
            return
    with context() as (ctx, _):
        _built(recipe, as_json, lambda: image_view(images.build(ctx, recipe, actor=ACTOR)))


BUILD_WAIT_S = 3600.0  # a build on the server answers when it is done: minutes, on a cold package cache


def _built(recipe: str, as_json: bool, build: Callable[[], ImagePublic]) -> None:
    with err.status(f"building {recipe} ..."):
        image = build()
    emit([image], as_json, ["name", "version", "sha256", "size_bytes"])


@image_app.command("ls")
def image_ls(as_json: JsonOpt = False) -> None:
    """List golden-image versions."""
    with handled():
        if (api := remote_api()) is not None:
            emit([ImagePublic.model_validate(i) for i in api.call("GET", "/api/v1/images")], as_json,
                 ["name", "version", "sha256", "size_bytes", "deprecated", "built_at"])
            return
    with context() as (ctx, _):
        emit([image_view(i) for i in images.list_all(ctx)], as_json,
             ["name", "version", "sha256", "size_bytes", "deprecated", "built_at"])


@image_app.command("deprecate")
def image_deprecate(ref: str) -> None:
    """Deprecate NAME[:VERSION]: existing pools keep it, new pools by name skip it."""
    with handled():
        if (api := remote_api()) is not None:
            image = api.call("POST", f"/api/v1/images/{_seg(ref)}/deprecate")
            err.print(f"deprecated {image['name']}:{image['version']}")
            return
    with context() as (ctx, _):
        image = images.deprecate(ctx, ref, actor=ACTOR)
        err.print(f"deprecated {image.name}:{image.version}")


@image_app.command("rm")
def image_rm(ref: str) -> None:
    """Delete NAME[:VERSION] (refused while a pool uses it)."""
    with handled():
        if (api := remote_api()) is not None:
            api.call("DELETE", f"/api/v1/images/{_seg(ref)}")
            err.print(f"deleted {ref}")
            return
    with context() as (ctx, _):
        images.delete(ctx, ref, actor=ACTOR)
        err.print(f"deleted {ref}")


# --- pools ---------------------------------------------------------------------------------------


@pool_app.command("create")
def pool_create(
    name: str,
    image: Annotated[str, typer.Option(help="Image name or name:version")],
    size: Annotated[int, typer.Option(help="Desktops to keep")] = 1,
    min_size: Annotated[int, typer.Option(help="Never fewer")] = 0,
    max_size: Annotated[int, typer.Option(help="Never more")] = 50,
    memory_mib: Annotated[int | None, typer.Option(help="Memory per desktop [default: the image's]")] = None,
    vcpus: Annotated[int | None, typer.Option(help="vCPUs per desktop [default: the image's]")] = None,
    clone: Annotated[str, typer.Option(help="instant: restore from a saved template; cold: boot each")] = "instant",
    memory_sharing: Annotated[bool, typer.Option(help="let the host merge identical pages (KSM)")] = True,
    group: GroupOpt = None,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Create pool NAME of SIZE desktops cloned from IMAGE."""
    with handled():
        if (api := remote_api()) is not None:
            api.call("POST", "/api/v1/pools", json={
                "name": name, "image": image, "size": size, "min_size": min_size, "max_size": max(max_size, size),
                "memory_mib": memory_mib, "vcpus": vcpus, "clone": clone, "memory_sharing": memory_sharing,
                "groups": group or []})
            if wait:
                follow_remote_pool(api, name, timeout)
            return
    with context() as (ctx, settings):
        pools.create(ctx, name=name, image=image, size=size, min_size=min_size, max_size=max(max_size, size),
                     memory_mib=memory_mib, vcpus=vcpus, clone=clone, groups=group or [],
                     memory_sharing=memory_sharing, actor=ACTOR)
        if wait:
            converge(ctx, settings, name, timeout)


@pool_app.command("scale")
def pool_scale(name: str, size: int, wait: WaitOpt = True, timeout: TimeoutOpt = 600.0) -> None:
    """Set pool NAME's size to SIZE."""
    with handled():
        if (api := remote_api()) is not None:
            api.call("PATCH", f"/api/v1/pools/{_seg(name)}", json={"size": size})
            if wait:
                follow_remote_pool(api, name, timeout)
            return
    with context() as (ctx, settings):
        pools.scale(ctx, name, size, actor=ACTOR)
        if wait:
            converge(ctx, settings, name, timeout)


@pool_app.command("set")
def pool_set(
    name: str,
    image: Annotated[str | None, typer.Option(help="Image (name or name:version) for new desktops")] = None,
    clone: Annotated[str | None, typer.Option(help="instant or cold, for desktops made from now on")] = None,
    group: GroupOpt = None,
) -> None:
    """Change what pool NAME makes new desktops from (existing desktops keep theirs until rebuilt),
    or which AD groups it serves (--group replaces them all)."""
    columns = ["name", "image", "clone", "size", "groups", "desktops"]
    with handled():
        if (api := remote_api()) is not None:
            emit([PoolPublic.model_validate(api.call("PATCH", f"/api/v1/pools/{_seg(name)}", json={
                "image": image, "clone": clone, "groups": group}))], False, columns)
            return
    with context() as (ctx, _):
        pools.update(ctx, name, size=None, min_size=None, max_size=None, groups=group, clone=clone, image=image,
                     actor=ACTOR)
        emit(pools.views(ctx, name), False, columns)


@pool_app.command("ls")
def pool_ls(as_json: JsonOpt = False) -> None:
    """List pools with their desktops by state."""
    with handled():
        if (api := remote_api()) is not None:
            emit([PoolPublic.model_validate(p) for p in api.call("GET", "/api/v1/pools")], as_json,
                 ["name", "image", "clone", "size", "min_size", "max_size", "desktops"])
            return
    with context() as (ctx, _):
        emit(pools.views(ctx), as_json, ["name", "image", "clone", "size", "min_size", "max_size", "desktops"])


HOST_COLUMNS = ["name", "uri", "mode", "state", "capacity", "committed_vcpus", "committed_memory_mib", "desktops",
                "reason"]


@host_app.command("add")
def host_add(name: str, uri: Annotated[str, typer.Argument(help="libvirt URI, e.g. qemu+tls://host-b/system")]) -> None:
    """Register host NAME at libvirt URI: placement may put desktops there from the next pass."""
    with handled():
        if (api := remote_api()) is not None:
            emit([HostPublic.model_validate(api.call("POST", "/api/v1/hosts", json={"name": name, "uri": uri}))],
                 False, HOST_COLUMNS)
            return
    with context() as (ctx, _):
        hosts.register(ctx, name=name, uri=uri, actor=ACTOR)
        emit([hosts.view(ctx, name)], False, HOST_COLUMNS)


@host_app.command("certificate")
def host_certificate(
    address: Annotated[str, typer.Argument(help="the host's DNS name or IP address, as its URI names it")],
    out_dir: Annotated[Path, typer.Option("--out", help="where to write cacert.pem, servercert.pem, serverkey.pem")],
) -> None:
    """Issue a libvirt host's TLS certificate from this control plane's local CA (its client
    certificate, which qemu+tls:// URIs use, comes from the same CA), and print the libvirtd.conf
    lines that admit only this control plane."""
    with handled():
        settings = Settings()
        files = ensure_libvirt_server(settings.data_dir / "tls", address, out_dir)
        ensure_libvirt_client(settings.data_dir / "tls", settings.data_dir / "tls" / "libvirt-client")
        print(f'listen_tls = 1\nlisten_tcp = 0\nauth_tls = "none"\nca_file = "{files.ca_cert}"\n'
              f'cert_file = "{files.cert}"\nkey_file = "{files.key}"\n'
              f'tls_allowed_dn_list = ["O=ShiftDesk local CA,CN={CLIENT_NAME}"]')


@host_app.command("maintenance")
def host_maintenance(name: str) -> None:
    """Put host NAME in maintenance: nothing new goes there, its idle desktops move to other hosts
    (replacements first), desktops with an agent session stay until it ends."""
    _host_mode(name, HostMode.MAINTENANCE)


@host_app.command("activate")
def host_activate(name: str) -> None:
    """Let host NAME take new desktops again."""
    _host_mode(name, HostMode.ACTIVE)


def _host_mode(name: str, mode: HostMode) -> None:
    with handled():
        if (api := remote_api()) is not None:
            emit([HostPublic.model_validate(api.call("PATCH", f"/api/v1/hosts/{_seg(name)}",
                                                     json={"mode": mode.value}))], False, HOST_COLUMNS)
            return
    with context() as (ctx, _):
        hosts.set_mode(ctx, name=name, mode=mode, actor=ACTOR)
        emit([hosts.view(ctx, name)], False, HOST_COLUMNS)


@host_app.command("ls")
def host_ls(as_json: JsonOpt = False) -> None:
    """List hosts: capacity (asked of each now), what their desktops take, desktops by state."""
    with handled():
        if (api := remote_api()) is not None:
            emit([HostPublic.model_validate(h) for h in api.call("GET", "/api/v1/hosts")], as_json, HOST_COLUMNS)
            return
    with context() as (ctx, _):
        emit(hosts.views(ctx), as_json, HOST_COLUMNS)


@pool_app.command("delete")
def pool_delete(name: str, wait: WaitOpt = True, timeout: TimeoutOpt = 600.0) -> None:
    """Delete pool NAME and every trace of its desktops."""
    with handled():
        if (api := remote_api()) is not None:
            api.call("DELETE", f"/api/v1/pools/{_seg(name)}")
            if wait:
                follow_remote_pool(api, name, timeout)
            return
    with context() as (ctx, settings):
        pools.delete(ctx, name, actor=ACTOR)
        if wait:
            converge(ctx, settings, name, timeout)


# --- rollouts -----------------------------------------------------------------------------------


@rollout_app.command("start")
def rollout_start(
    pool: str,
    image: Annotated[str, typer.Option(help="The new image: name or name:version")],
    canary: Annotated[str, typer.Option(help="Desktops first: a number, or a percentage like 10%")] = "1",
    batch: Annotated[int, typer.Option(help="Idle desktops rebuilt at a time after the canary")] = 1,
    soak: Annotated[float, typer.Option(help="Seconds the canary serves before the rest follow")] = 300.0,
    failure_rate: Annotated[float, typer.Option(help="Extra provisioning failures per desktop allowed")] = 0.2,
    ready_ratio: Annotated[float, typer.Option(help="New median time to ready / old median allowed")] = 2.0,
    restart_rate: Annotated[float, typer.Option(help="Extra restarts per desktop allowed")] = 0.5,
    drop_rate: Annotated[float, typer.Option(help="Extra early-dropped sessions per session allowed")] = 0.2,
    min_samples: Annotated[int, typer.Option(help="New desktops provisioned before any judgement")] = 1,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the rollout until it ends")] = True,
    timeout: TimeoutOpt = 3600.0,
) -> None:
    """Move POOL to IMAGE: a canary, then batches of idle desktops (never one in use). It rolls
    itself back when the new version is worse than the old beyond the thresholds."""
    th = Thresholds(failure_rate=failure_rate, ready_ratio=ready_ratio, restart_rate=restart_rate,
                    drop_rate=drop_rate, min_samples=min_samples)
    with handled():
        if (api := remote_api()) is not None:
            r = RolloutPublic.model_validate(api.call("POST", f"/api/v1/pools/{_seg(pool)}/rollouts", json={
                "image": image, "canary": canary, "batch": batch, "soak_s": soak, "thresholds": asdict(th)}))
            err.print(f"rollout {r.id}: pool {pool} from {r.from_image} to {r.to_image}, canary {r.canary}, "
                      f"batches of {r.batch}")
            if wait:
                follow_remote_rollout(api, pool, timeout)
            return
    with context() as (ctx, settings):
        r = rollouts.start(ctx, pool, image=image, canary=canary, batch=batch, soak_s=soak, thresholds=th,
                           actor=ACTOR)
        err.print(f"rollout {r.id}: pool {pool} from {r.from_image} to {r.to_image}, canary {r.canary}, "
                  f"batches of {r.batch}")
        if wait:
            follow_rollout(ctx, settings, pool, timeout)


@rollout_app.command("status")
def rollout_status(pool: str, as_json: JsonOpt = False,
                   wait: Annotated[bool, typer.Option("--wait", help="Follow it until it ends")] = False,
                   timeout: TimeoutOpt = 3600.0) -> None:
    """POOL's rollout in progress, or its last one: state, desktops by version, signals."""
    with handled():
        if (api := remote_api()) is not None:
            if wait:
                follow_remote_rollout(api, pool, timeout)
            show_rollout(RolloutPublic.model_validate(api.call("GET", f"/api/v1/pools/{_seg(pool)}/rollout")),
                         as_json)
            return
    with context() as (ctx, settings):
        if wait:
            follow_rollout(ctx, settings, pool, timeout)
        show_rollout(rollouts.status(ctx, pool), as_json)


def show_rollout(r: RolloutPublic, as_json: bool) -> None:
    if as_json:
        print(r.model_dump_json(indent=2))
        return
    out.print(f"rollout {r.id} of {r.pool}: [bold]{r.state}[/bold] {r.from_image} -> {r.to_image} "
              f"({r.desktops['new']} new, {r.desktops['old']} old){': ' + r.reason if r.reason else ''}")
    table = Table("version", "provisioned", "failed", "median ready s", "restarts", "sessions", "early drops")
    for version, st in r.stats.items():
        table.add_row(version, *(_cell(st[k]) for k in ("provisioned", "failed", "median_ready_s", "restarts",
                                                         "sessions", "drops")))
    out.print(table)


@rollout_app.command("rollback")
def rollout_rollback(pool: str, reason: Annotated[str, typer.Option(help="Why, for the audit log")] = "") -> None:
    """Stop POOL's rollout and point it back at the previous version."""
    with handled():
        if (api := remote_api()) is not None:
            _rolled_back(RolloutPublic.model_validate(api.call(
                "POST", f"/api/v1/pools/{_seg(pool)}/rollout/rollback", json={"reason": reason})))
            return
    with context() as (ctx, _):
        _rolled_back(rollouts.roll_back(ctx, pool, actor=ACTOR, reason=reason))


def _rolled_back(r: RolloutPublic) -> None:
    out.print(f"rollout {r.id} of {r.pool}: {r.state} ({r.reason}); idle desktops of {r.to_image} are rebuilt")


def follow_remote_rollout(api: remote.Client, pool: str, timeout: float) -> None:
    """Watch POOL's rollout through the API (the server's reconciler moves it) until it ends."""
    def status() -> RolloutPublic:
        return RolloutPublic.model_validate(api.call("GET", f"/api/v1/pools/{_seg(pool)}/rollout"))

    with _bar(ROLLOUT_COUNT) as progress:
        task = progress.add_task(f"rollout of {pool}", total=None)
        ended = _poll(lambda: _rollout_progress(progress, task, pool, status()), timeout)
    _rollout_verdict(status(), pool, timeout, ended)


def _rollout_progress(progress: Progress, task: Any, pool: str, r: RolloutPublic) -> bool:
    progress.update(task, description=f"rollout of {pool}: {r.state}",
                    total=max(1, r.desktops["new"] + r.desktops["old"]), completed=r.desktops["new"])
    return not r.state.active


def _rollout_verdict(r: RolloutPublic, pool: str, timeout: float, ended: bool) -> None:
    if not ended:
        err.print(f"[yellow]rollout of {pool} still {r.state} after {timeout:.0f} s; it goes on[/]")
        raise typer.Exit(3)
    if r.state == RolloutState.ROLLED_BACK:
        err.print(f"[red]rollout of {pool} rolled back:[/red] {r.reason}")
        raise typer.Exit(5)
    err.print(f"rollout of {pool}: {r.state} ({r.reason})")


def follow_remote_pool(api: remote.Client, pool: str, timeout: float) -> None:
    """Watch POOL through the API until it has its size in ready desktops (or is gone, if deleted)."""
    with _bar("{task.completed}/{task.total} ready") as progress:
        task = progress.add_task(f"pool {pool}", total=None)

        def settled() -> bool:
            try:
                view = PoolPublic.model_validate(api.call("GET", f"/api/v1/pools/{_seg(pool)}"))
            except NotFound:
                view = None
            return _pool_progress(progress, task, view)

        done = _poll(settled, timeout)
    if not done:
        err.print(f"[yellow]pool {pool} has not converged after {timeout:.0f} s; the server keeps going[/]")
        raise typer.Exit(3)


ROLLOUT_COUNT = "{task.completed}/{task.total} on the new version"


def _bar(count: str) -> Progress:
    """The progress bar every waiting command shows (COUNT: the text after the bar)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn(count),
                    TimeElapsedColumn(), console=err)


def _pool_progress(progress: Progress, task: Any, view: PoolPublic | None) -> bool:
    """Show how far the pool is (None: it is gone); True once it is settled at its size or gone."""
    if view is None:
        progress.update(task, total=1, completed=1)
        return True
    target = 0 if view.deleting else view.size
    ready = view.desktops.get("ready", 0) + view.desktops.get("in_use", 0)
    progress.update(task, total=max(target, 1), completed=ready if target else 0)
    return ready >= target and not view.deleting and view.desktops.get("provisioning", 0) == 0


def _poll(done: Callable[[], bool], timeout: float, period: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(period, max(0.0, deadline - time.monotonic())))
    return True


def _seg(text: str) -> str:
    """TEXT as one URL path segment (a name never adds a path of its own)."""
    return quote(text, safe=":")


def follow_rollout(ctx: Context, settings: Settings, pool: str, timeout: float) -> None:
    """Reconcile (or watch the server do it) with a progress bar until POOL's rollout ends."""
    reconciler = build_reconciler(ctx, settings)
    with _bar(ROLLOUT_COUNT) as progress:
        task = progress.add_task(f"rollout of {pool}", total=None)

        def show(_plan: object) -> None:
            _rollout_progress(progress, task, pool, rollouts.status(ctx, pool))

        ended = reconciler.run_until_converged(timeout=timeout, busy_period=settings.reconciler.busy_period_s,
                                               on_pass=show, until=lambda: not rollouts.status(ctx, pool).state.active)
    reconciler.close()
    _rollout_verdict(rollouts.status(ctx, pool), pool, timeout, ended)


# --- desktops ------------------------------------------------------------------------------------


@desktop_app.command("ls")
def desktop_ls(pool: Annotated[str | None, typer.Option(help="Only this pool")] = None,
               as_json: JsonOpt = False) -> None:
    """List desktops (state, libvirt domain, disk path)."""
    with handled():
        if (api := remote_api()) is not None:
            emit([DesktopPublic.model_validate(d) for d in api.call("GET", "/api/v1/desktops", params={"pool": pool})],
                 as_json, ["name", "pool", "state", "domain", "disk_path", "reason"])
            return
    with context() as (ctx, _):
        emit([desktop_view(d, p) for d, p in desktops.list_all(ctx, pool)], as_json,
             ["name", "pool", "state", "domain", "disk_path", "reason"])


def _desktop_action(verb: Callable[..., object], name: str) -> None:
    with handled():
        if (api := remote_api()) is not None:
            method, path = REMOTE_DESKTOP_VERBS[verb.__name__]
            api.call(method, f"/api/v1/desktops/{_seg(name)}{path}")
            err.print(f"{verb.__name__} {name}: accepted")
            return
    with context() as (ctx, _):
        verb(ctx, name, actor=ACTOR)
        err.print(f"{verb.__name__} {name}: accepted")


REMOTE_DESKTOP_VERBS = {"reboot": ("POST", "/reboot"), "rebuild": ("POST", "/rebuild"), "delete": ("DELETE", "")}


@desktop_app.command("reboot")
def desktop_reboot(name: str) -> None:
    """Hard-reset desktop NAME."""
    _desktop_action(desktops.reboot, name)


@desktop_app.command("rebuild")
def desktop_rebuild(name: str) -> None:
    """Clone desktop NAME again from its pool's current image."""
    _desktop_action(desktops.rebuild, name)


@desktop_app.command("rm")
def desktop_rm(name: str) -> None:
    """Recycle desktop NAME (the pool replaces it while its size says so)."""
    _desktop_action(desktops.delete, name)


# --- policies ------------------------------------------------------------------------------------

FilesOpt = Annotated[Path, typer.Option("-f", "--files", help="A policy file or a folder of *.yaml")]


def read_policy_files(path: Path) -> dict[str, str]:
    """{name: text}; reads at most one byte past the size cap so a huge file cannot exhaust memory."""
    paths = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
    if not paths:
        raise InvalidInput(f"files: no *.yaml in {path}", field="files")
    files = {}
    for p in paths:
        with p.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
        try:
            files[p.name] = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidInput(f"{p.name}: not UTF-8 ({err.reason} at byte {err.start})", field=p.name) from None
    return files


def _post_files(api: remote.Client, path: str, files: Path, **extra: Any) -> Any:
    """POST policy or roster FILES to PATH; the server's problems printed as the host prints its own."""
    return _policy_errors(lambda: api.call("POST", path, json={"files": read_policy_files(files), **extra}))


def _policy_errors(run: Callable[[], T]) -> T:
    """Run RUN; print every file error (file:line: field: message) and exit 2 if any."""
    try:
        return run()
    except (policies.PolicyFilesInvalid, scaling.RosterFilesInvalid, remote.FilesInvalid) as problem:
        for e in problem.errors:
            err.print(f"[red]invalid:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None


@policy_app.command("validate")
def policy_validate(files: FilesOpt) -> None:
    """Check policy files; errors name the file, line and field (remotely: by the server's rules)."""
    with handled():
        if (api := remote_api()) is not None:
            _policies_valid(_post_files(api, "/api/v1/policies/validate", files)["policies"])
            return
    with context():
        texts = read_policy_files(files)
        _policies_valid(sorted(p.name for p in _policy_errors(lambda: policies.validate(texts))))


def _policies_valid(names: list[str]) -> None:
    err.print(f"{len(names)} policies valid: {', '.join(names)}")


@policy_app.command("diff")
def policy_diff(files: FilesOpt, as_json: JsonOpt = False) -> None:
    """What applying FILES would change."""
    with handled():
        if (api := remote_api()) is not None:
            _print_changes(_post_files(api, "/api/v1/policies/diff", files)["changes"], as_json)
            return
    with context() as (ctx, _):
        texts = read_policy_files(files)
        changes = _policy_errors(lambda: policies.diff(ctx, texts))
        _print_changes(changes, as_json)


def _print_changes(changes: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(changes, indent=2, default=str))
        return
    if not changes:
        out.print("no changes")
    for c in changes:
        out.print(f"[bold]{c['change']}[/bold] {c['policy']}")
        for f in c["fields"]:
            out.print(f"    {f['field']}: {f['old']!r} -> {f['new']!r}", highlight=False)


@policy_app.command("apply")
def policy_apply(files: FilesOpt, comment: Annotated[str, typer.Option(help="Why")] = "") -> None:
    """Apply FILES atomically as a new revision (nothing changes if any file is invalid)."""
    with handled():
        if (api := remote_api()) is not None:
            rev = _post_files(api, "/api/v1/policies/apply", files, comment=comment)
            _print_changes(rev["changes"], False)
            err.print(f"revision {rev['revision']}" + ("" if rev["changes"] else " (unchanged)"))
            return
    with context() as (ctx, _):
        texts = read_policy_files(files)
        rev, changes = _policy_errors(lambda: policies.apply(ctx, texts, actor=ACTOR, comment=comment))
        _print_changes(changes, False)
        err.print(f"revision {rev.id}" + ("" if changes else " (unchanged)"))


@policy_app.command("history")
def policy_history(as_json: JsonOpt = False) -> None:
    """Applied revisions, newest first."""
    with handled():
        if (api := remote_api()) is not None:
            show_history([{k: v for k, v in r.items() if k != "changes"}
                          for r in api.call("GET", "/api/v1/policies/revisions")], as_json)
            return
    with context() as (ctx, _):
        show_history([{"revision": r.id, "actor": r.actor, "comment": r.comment, "sha256": r.sha256,
                       "created_at": r.created_at.isoformat(), "rollback_of": r.rollback_of,
                       "policies": sorted(r.documents)} for r in policies.history(ctx)], as_json)


def show_history(revs: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(revs, indent=2, default=str))
        return
    table = Table("revision", "created_at", "actor", "policies", "comment")
    for r in revs:
        table.add_row(str(r["revision"]), str(r["created_at"])[:19], r["actor"], ", ".join(r["policies"]),
                      r["comment"])
    out.print(table)


@policy_app.command("rollback")
def policy_rollback(revision: int, comment: Annotated[str, typer.Option(help="Why")] = "") -> None:
    """Make REVISION's policies current again (as a new revision)."""
    with handled():
        if (api := remote_api()) is not None:
            rev = api.call("POST", "/api/v1/policies/rollback", json={"revision": revision, "comment": comment})
            _print_changes(rev["changes"], False)
            err.print(f"revision {rev['revision']} (= revision {revision})")
            return
    with context() as (ctx, _):
        rev, changes = policies.rollback(ctx, revision, actor=ACTOR, comment=comment)
        _print_changes(changes, False)
        err.print(f"revision {rev.id} (= revision {revision})")


@policy_app.command("explain")
def policy_explain(user: str, pool: Annotated[str | None, typer.Option(help="Desktop's pool")] = None,
                   name: Annotated[str | None, typer.Option(help="A host name: may USER reach it, and why")] = None,
                   app: Annotated[str | None, typer.Option(help="An application: may USER run it, and why")] = None,
                   as_json: JsonOpt = False) -> None:
    """The effective policy of USER, which policies made it, and why a name or app is allowed."""
    with handled():
        if (api := remote_api()) is not None:
            show_explanation(api.call("GET", "/api/v1/policies/explain",
                                      params={"user": user, "pool": pool, "name": name, "app": app}), as_json)
            return
    with context() as (ctx, _):
        show_explanation(policies.explain(ctx, user, pool, name=name, app=app), as_json)


def show_explanation(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    out.print(f"[bold]{result['user']}[/bold] pool={result['pool'] or '*'} revision={result['revision']}")
    out.print(f"groups: {', '.join(result['groups'])}")
    for name, why in result["reasons"].items():
        out.print(f"  applies: {name} ({why})")
    out.print(f"apps: {', '.join(result['apps']) or '(none)'}")
    out.print(f"domains: {', '.join(result['domains']) or '(none)'}")
    out.print("data: " + " ".join(f"{k}={'on' if v else 'off'}" for k, v in result["data"].items()))
    out.print(f"watermark: {'on' if result['watermark'] else 'off'}; session: "
              + " ".join(f"{k}={v}" for k, v in result["session"].items()))
    for kind in ("name", "app"):
        if kind in result:
            verdict = result[kind]
            word = "[green]allowed[/green]" if verdict["allowed"] else "[red]refused[/red]"
            out.print(f"{kind} {verdict['subject']}: {word}")
            for policy_name, rule in verdict["by_policy"].items():
                out.print(f"  {policy_name}: {rule}")


# --- schedules ------------------------------------------------------------------------------------


@schedule_app.command("validate")
def schedule_validate(files: FilesOpt) -> None:
    """Check roster files; errors name the file, line and field."""
    with handled():
        if (api := remote_api()) is not None:
            _rosters_valid(_post_files(api, "/api/v1/schedules/validate", files)["pools"])
            return
    with context():
        texts = read_policy_files(files)
        _rosters_valid(sorted(r.pool for r in _policy_errors(lambda: scaling.validate(texts))))


def _rosters_valid(names: list[str]) -> None:
    err.print(f"{len(names)} rosters valid: {', '.join(names)}")


@schedule_app.command("apply")
def schedule_apply(files: FilesOpt) -> None:
    """Apply roster files (all or nothing; every pool must exist)."""
    with handled():
        if (api := remote_api()) is not None:
            _rosters_applied(_post_files(api, "/api/v1/schedules/apply", files)["changed"])
            return
    with context() as (ctx, _):
        texts = read_policy_files(files)
        _rosters_applied(_policy_errors(lambda: scaling.apply(ctx, texts, actor=ACTOR)))


def _rosters_applied(changed: list[str]) -> None:
    err.print(f"rosters applied: {', '.join(changed) or 'none changed'}")


@schedule_app.command("show")
def schedule_show(pool: str) -> None:
    """Print POOL's roster."""
    with handled():
        if (api := remote_api()) is not None:
            print_json(api.call("GET", f"/api/v1/schedules/{_seg(pool)}"))
            return
    with context() as (ctx, _):
        print_json(scaling.show(ctx, pool))


def print_json(data: Any) -> None:
    """DATA as the API writes it (times ISO 8601, UTC as Z), so both modes print the same bytes."""
    print(json.dumps(to_jsonable_python(data), indent=2))


@schedule_app.command("plan")
def schedule_plan(
    pool: str,
    days: Annotated[int, typer.Option(help="How many days from now (or --start)")] = 1,
    start: Annotated[str | None, typer.Option(help="ISO date/time to start from (UTC; on the host only)")] = None,
    step: Annotated[int, typer.Option(help="Minutes between points")] = 15,
    png: Annotated[Path | None, typer.Option(help="Write a capacity plot as PNG")] = None,
    svg: Annotated[Path | None, typer.Option(help="Write a capacity plot as SVG")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Planned capacity against head-count over a day or a week, as a table, JSON or a plot."""
    with handled():
        if (api := remote_api()) is not None:
            if start:
                raise InvalidInput("start: a remote control plane plans from its own clock; leave --start out "
                                   "(or run the command on the host)", field="start")
            path, params = f"/api/v1/schedules/{_seg(pool)}/plan", {"days": days, "step": step}
            _show_plan(lambda fmt: api.content("GET", path, params={**params, "fmt": fmt}),
                       lambda: api.call("GET", path, params=params), png, svg, as_json)
            return
    with context() as (ctx, _):
        begin = datetime.fromisoformat(start).replace(tzinfo=UTC) if start else ctx.clock.now()
        points = scaling.plan(ctx, pool, begin, hours=24 * days, step_minutes=step)

        def plot(fmt: str) -> bytes:
            from controlplane.web.capacity_plot import render

            return render(pool, points, len(desktops.list_all(ctx, pool)), fmt)

        _show_plan(plot, lambda: to_jsonable_python(points), png, svg, as_json)


def _show_plan(plot: Callable[[str], bytes], rows: Callable[[], list[dict[str, Any]]], png: Path | None,
               svg: Path | None, as_json: bool) -> None:
    """Write the plots asked for (PLOT makes one: png or svg), then print the points (ROWS) as JSON or,
    if nothing else was asked, as a table."""
    for path, fmt in ((png, "png"), (svg, "svg")):
        if path:
            path.write_bytes(plot(fmt))
            err.print(f"wrote {path}")
    if as_json:
        print_json(rows())
    elif not (png or svg):
        table = Table("at (UTC)", "headcount", "desktops planned")
        for p in rows():
            table.add_row(datetime.fromisoformat(p["at"]).strftime("%a %Y-%m-%d %H:%M"), str(p["headcount"]),
                          str(p["desired"]))
        out.print(table)


# --- demo ----------------------------------------------------------------------------------------


@demo_app.command("up")
def demo_up(
    image: Annotated[str, typer.Option(help="Image of the demo pools")] = "busybox-desktop",
    policy_files: Annotated[Path, typer.Option("--policies", help="Policies to apply")] = Path("policies"),
    roster_files: Annotated[Path, typer.Option("--rosters", help="Rosters of the demo pools")] =
        Path("scripts/demo-rosters"),
) -> None:
    """Start `make run`'s demo AD (a Samba DC on loopback, provisioned on first use), fill it, and
    apply the example policies, the demo pools and their rosters (what exists is kept).

    Prints the sign-ins when it generates them (once; they stay in DATA_DIR/demo/sign-ins.json,
    0600) and writes DATA_DIR/demo/ldap.env, the SHIFTDESK_* settings that select the demo AD."""
    settings = Settings()
    state = settings.data_dir / "demo"
    try:
        admin = open_demo_directory(settings)
        try:
            directory = demo.fill(admin, state)
        finally:
            admin.close()
    except (ShiftDeskError, RuntimeError) as e:
        err.print(f"[red]demo directory failed:[/red] {e}")
        raise typer.Exit(1) from None
    err.print(f"demo AD: {directory.url} ({directory.base_dn}); its settings: {state / 'ldap.env'}")
    with context() as (ctx, _):
        done = _policy_errors(lambda: demo.install(
            ctx, image=image, policy_files=read_policy_files(policy_files),
            roster_files=read_policy_files(roster_files), actor=ACTOR))
    for line in done:
        err.print(line)
    if directory.new_passwords:
        table = Table("sign in as", "password", "for",
                      title=f"Demo sign-ins (shown once; kept in {state / 'sign-ins.json'})")
        for s in directory.sign_ins:
            table.add_row(s.username, s.password, s.role)
        out.print(table)
    else:
        out.print(f"demo sign-ins: {', '.join(s.username for s in directory.sign_ins)} "
                  f"(passwords in {state / 'sign-ins.json'})")


@demo_app.command("stop")
def demo_stop() -> None:
    """Stop the demo AD (its content stays for the next `make run`)."""
    stop_demo_directory(Settings())


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
