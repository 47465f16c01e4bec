"""`shiftdesk`: the admin CLI, over the same services as the API.

Long work shows progress: `pool create/scale/delete` wait (by default) until the pool has
converged, reconciling in this process unless a running `shiftdesk serve` holds the
reconciler lease, in which case they only watch.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from controlplane.config import Settings
from controlplane.errors import ExpectedError, ShiftDeskError
from controlplane.main import build_context, build_reconciler, create_app
from controlplane.services import desktops, images, pools, selftest
from controlplane.services.context import Context
from controlplane.services.views import desktop_view, image_view

app = typer.Typer(help="ShiftDesk: cloud desktops for contact centres.", no_args_is_help=True)
image_app = typer.Typer(help="Golden images.", no_args_is_help=True)
pool_app = typer.Typer(help="Desktop pools.", no_args_is_help=True)
desktop_app = typer.Typer(help="Desktops.", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(pool_app, name="pool")
app.add_typer(desktop_app, name="desktop")

out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the pool has converged")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait at most")]
ACTOR = "cli"


@contextmanager
def context() -> Iterator[tuple[Context, Settings]]:
    try:
        settings = Settings()
        yield build_context(settings), settings
    except ExpectedError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    except ShiftDeskError as e:
        err.print(f"[red]failed:[/red] {e}")
        raise typer.Exit(1) from None


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
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} ready"), TimeElapsedColumn(),
                  console=err, transient=False) as progress:
        task = progress.add_task(f"pool {pool}", total=None)

        def show(_plan: object) -> None:
            views = {v.name: v for v in pools.views(ctx)}
            view = views.get(pool)
            target = 0 if view is None or view.deleting else view.size
            ready = 0 if view is None else view.desktops.get("ready", 0) + view.desktops.get("in_use", 0)
            progress.update(task, total=max(target, 1) if target else 1,
                            completed=ready if target else (1 if view is None else 0))

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
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with context() as (ctx, settings):
        check = selftest.run(ctx.hypervisor, settings.libvirt.selftest_max_ms)
        err.print(("selftest: " if check.ok else "[red]selftest:[/red] ") + check.explain())
        if not check.ok and not skip_selftest:
            raise typer.Exit(4)
        reconciler = build_reconciler(ctx, settings)
        api = create_app(settings, ctx, reconciler)
        h, p = host or settings.api.host, port or settings.api.port
        err.print(f"ShiftDesk API on http://{h}:{p}  (docs: http://{h}:{p}/docs)")
        uvicorn.run(api, host=h, port=p, log_level="warning")


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
    with context() as (ctx, _):
        with err.status(f"building {recipe} ..."):
            image = images.build(ctx, recipe, actor=ACTOR)
        emit([image_view(image)], as_json, ["name", "version", "sha256", "size_bytes"])


@image_app.command("ls")
def image_ls(as_json: JsonOpt = False) -> None:
    """List golden-image versions."""
    with context() as (ctx, _):
        emit([image_view(i) for i in images.list_all(ctx)], as_json,
             ["name", "version", "sha256", "size_bytes", "deprecated", "built_at"])


@image_app.command("deprecate")
def image_deprecate(ref: str) -> None:
    """Deprecate NAME[:VERSION]: existing pools keep it, new pools by name skip it."""
    with context() as (ctx, _):
        image = images.deprecate(ctx, ref, actor=ACTOR)
        err.print(f"deprecated {image.name}:{image.version}")


@image_app.command("rm")
def image_rm(ref: str) -> None:
    """Delete NAME[:VERSION] (refused while a pool uses it)."""
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
    memory_mib: Annotated[int, typer.Option(help="Memory per desktop")] = 256,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Create pool NAME of SIZE desktops cloned from IMAGE."""
    with context() as (ctx, settings):
        pools.create(ctx, name=name, image=image, size=size, min_size=min_size, max_size=max(max_size, size),
                     memory_mib=memory_mib, actor=ACTOR)
        if wait:
            converge(ctx, settings, name, timeout)


@pool_app.command("scale")
def pool_scale(name: str, size: int, wait: WaitOpt = True, timeout: TimeoutOpt = 600.0) -> None:
    """Set pool NAME's size to SIZE."""
    with context() as (ctx, settings):
        pools.scale(ctx, name, size, actor=ACTOR)
        if wait:
            converge(ctx, settings, name, timeout)


@pool_app.command("ls")
def pool_ls(as_json: JsonOpt = False) -> None:
    """List pools with their desktops by state."""
    with context() as (ctx, _):
        emit(pools.views(ctx), as_json, ["name", "image", "size", "min_size", "max_size", "desktops"])


@pool_app.command("delete")
def pool_delete(name: str, wait: WaitOpt = True, timeout: TimeoutOpt = 600.0) -> None:
    """Delete pool NAME and every trace of its desktops."""
    with context() as (ctx, settings):
        pools.delete(ctx, name, actor=ACTOR)
        if wait:
            converge(ctx, settings, name, timeout)


# --- desktops ------------------------------------------------------------------------------------


@desktop_app.command("ls")
def desktop_ls(pool: Annotated[str | None, typer.Option(help="Only this pool")] = None,
               as_json: JsonOpt = False) -> None:
    """List desktops (state, libvirt domain, disk path)."""
    with context() as (ctx, _):
        emit([desktop_view(d, p) for d, p in desktops.list_all(ctx, pool)], as_json,
             ["name", "pool", "state", "domain", "disk_path", "reason"])


def _desktop_action(verb: Callable[..., object], name: str) -> None:
    with context() as (ctx, _):
        verb(ctx, name, actor=ACTOR)
        err.print(f"{verb.__name__} {name}: accepted")


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


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
