"""Benchmarks leave nothing behind on the host, even when they are killed.

A benchmark that creates real libvirt objects calls `run_instance(family)` first. It gets an
installation name of its own, `<family><pid>`, and:
- leftovers of earlier runs of the same family whose process is gone (killed with -9, a power
  cut) are swept: domains `sd-<instance>-*` and templates `sd-<instance>.tpl-*`, the storage
  pool `shiftdesk-<instance>` with its volumes, and the data directory `shiftdesk-bench-<instance>-*`
  under the temp directory;
- SIGTERM and SIGINT unwind the benchmark like an exception (its `finally` blocks run), and at
  exit everything of its own instance is removed the same way, whatever the benchmark got to.
- Host settings a benchmark changes (KSM, `ksm_on`) are restored when it leaves the `with` block,
  also when it is interrupted; the previous values are written in its data directory first, so a
  run killed with -9 has them restored by the sweep that removes that directory.

Only virsh is used here, never the benchmark's database: what is on the host is the truth.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench import netlab  # noqa: E402
from controlplane.domain import naming  # noqa: E402

VIRSH = ["virsh", "-q", "-c", "qemu:///system"]
KSM = Path("/sys/kernel/mm/ksm")
KSM_SAVED = "ksm-previous.json"  # in the data directory of the run that changed KSM


def _virsh(*args: str) -> list[str]:
    done = subprocess.run([*VIRSH, *args], capture_output=True, text=True, check=False)
    return done.stdout.split() if done.returncode == 0 else []


def data_dir_prefix(instance: str) -> str:
    return f"shiftdesk-bench-{instance}-"


def purge(instance: str) -> None:
    """Remove every domain, volume, storage pool and data directory of INSTANCE. Missing is fine."""
    for name in _virsh("list", "--all", "--name"):
        if name.startswith(naming.domain_prefixes(instance)):
            subprocess.run([*VIRSH, "destroy", name], capture_output=True, check=False)
            subprocess.run([*VIRSH, "undefine", name], capture_output=True, check=False)
    pool = f"shiftdesk-{instance}"
    if pool in _virsh("pool-list", "--all", "--name"):
        subprocess.run([*VIRSH, "pool-refresh", pool], capture_output=True, check=False)
        for line in subprocess.run([*VIRSH, "vol-list", pool], capture_output=True, text=True,
                                   check=False).stdout.splitlines():
            volume = line.split()[0] if line.split() else ""
            if volume.endswith(".qcow2"):
                subprocess.run([*VIRSH, "vol-delete", volume, "--pool", pool], capture_output=True, check=False)
        subprocess.run([*VIRSH, "pool-destroy", pool], capture_output=True, check=False)
        subprocess.run([*VIRSH, "pool-undefine", pool], capture_output=True, check=False)
    for leftover in Path(tempfile.gettempdir()).glob(f"{data_dir_prefix(instance)}*"):
        restore_ksm(leftover)
        stop_processes_of(leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    netlab.purge(instance)  # namespaces, bridge, nftables tables, DHCP server, /run/shiftdesk/INSTANCE


def stop_processes_of(data: Path) -> None:
    """What a run started and left running when it was killed: PostgreSQL clusters inside DATA
    (tests/postgres.py puts a benchmark's there), then processes whose command line or
    environment names DATA (replicas, storm servers)."""
    for pid_file in data.glob("shiftdesk-pg-*/data/postmaster.pid"):
        subprocess.run(["runuser", "-u", "postgres", "--", *_pg_ctl(), "-D", str(pid_file.parent), "-m",
                        "immediate", "stop"], capture_output=True, check=False, timeout=60)
    marker = str(data).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if marker in seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _pg_ctl() -> list[str]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return [str(found[-1])] if found else ["pg_ctl"]


@contextlib.contextmanager
def ksm_on(data: Path, **tunables: int) -> Iterator[dict[str, str]]:
    """KSM running (`run` = 1, plus TUNABLES such as pages_to_scan) inside the block; the previous
    values come back when it ends, however it ends. Yields the previous values."""
    names = ["run", *tunables]
    previous = {name: (KSM / name).read_text().strip() for name in names}
    (data / KSM_SAVED).write_text(json.dumps(previous))  # before any change: the sweep's safety net
    try:
        for name, value in {**tunables, "run": 1}.items():
            (KSM / name).write_text(str(value))
        yield previous
    finally:
        restore_ksm(data)


def restore_ksm(data: Path) -> None:
    """Put back the KSM settings a run saved in DATA (its data directory). Nothing saved: nothing."""
    saved = data / KSM_SAVED
    try:
        previous = json.loads(saved.read_text())
    except (FileNotFoundError, ValueError):
        return
    for name, value in previous.items():
        if name in ("run", "pages_to_scan", "sleep_millisecs") and str(value).isdigit():
            try:
                (KSM / name).write_text(str(value))
            except OSError as err:
                print(f"bench: could not restore KSM {name}={value}: {err}", file=sys.stderr)
    saved.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(family: str) -> list[str]:
    """Purge the instances of FAMILY whose benchmark process is gone. Returns their names."""
    prefixes = rf"(?:sd-|shiftdesk-|{re.escape(data_dir_prefix(''))})?"  # none: namespaces, /run/shiftdesk
    shape = re.compile(rf"^{prefixes}({re.escape(family)}(\d+))(?:-|{re.escape(naming.TEMPLATE_MARK)}|$)")
    seen: set[tuple[str, int]] = set()
    names = [*_virsh("list", "--all", "--name"), *_virsh("pool-list", "--all", "--name"),
             *(p.name for p in Path(tempfile.gettempdir()).glob(f"{data_dir_prefix(family)}*")),
             *subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split(),
             *(p.name for p in Path("/run/shiftdesk").glob(f"{family}*"))]
    for name in names:
        match = shape.match(name)
        if match:
            seen.add((match.group(1), int(match.group(2))))
    dead = sorted(instance for instance, pid in seen if pid != os.getpid() and not _alive(pid))
    for instance in dead:
        print(f"bench: removing what a killed run left: {instance}", file=sys.stderr)
        purge(instance)
    return dead


def _unwind(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_instance(family: str) -> str:
    """This run's installation name; sweeps dead runs of FAMILY and cleans up after this one."""
    instance = f"{family}{os.getpid()}"
    if len(instance) > 12:
        raise SystemExit(f"bench: instance name {instance!r} is longer than 12 characters")
    sweep(family)
    atexit.register(purge, instance)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _unwind)
    return instance


def data_dir(instance: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary data directory the sweep recognises as INSTANCE's."""
    return tempfile.TemporaryDirectory(prefix=data_dir_prefix(instance))


if __name__ == "__main__":  # `python bench/cleanup.py FAMILY...`: sweep by hand
    for fam in sys.argv[1:]:
        sweep(fam)
