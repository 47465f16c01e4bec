"""Benchmarks leave nothing behind on the host, even when they are killed.

A benchmark that creates real libvirt objects calls `run_instance(family)` first. It gets an
installation name of its own, `<family><pid>`, and:
- leftovers of earlier runs of the same family whose process is gone (killed with -9, a power
  cut) are swept: domains `sd-<instance>-*` and templates `sd-<instance>.tpl-*`, the storage
  pool `shiftdesk-<instance>` with its volumes, and the data directory `shiftdesk-bench-<instance>-*`
  under the temp directory;
- SIGTERM and SIGINT unwind the benchmark like an exception (its `finally` blocks run), and at
  exit everything of its own instance is removed the same way, whatever the benchmark got to.
- Host settings a benchmark changes (KSM, `ksm_on`; THP, `thp_never`) are restored when it leaves the `with` block,
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
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
RESTORABLE = {KSM / "run", KSM / "pages_to_scan", KSM / "sleep_millisecs", THP}


def _virsh(*args: str) -> list[str]:
    done = subprocess.run([*VIRSH, *args], capture_output=True, text=True, check=False)
    return done.stdout.split() if done.returncode == 0 else []


DATA_DIRS = "shiftdesk-bench-"  # then the instance, a dash and tempfile's suffix


def data_dir_prefix(instance: str) -> str:
    return f"{DATA_DIRS}{instance}-"


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
        restore_settings(leftover)
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
def host_settings(data: Path, group: str, values: dict[Path, object]) -> Iterator[dict[Path, str]]:
    """VALUES written to their sysfs files inside the block; the previous values come back when it
    ends, however it ends. They are saved first in DATA (the run's data directory) as
    `GROUP-previous.json`: the sweep's safety net after kill -9. Yields the previous values."""
    previous = {path: current(path) for path in values}
    (data / f"{group}-previous.json").write_text(json.dumps({str(p): v for p, v in previous.items()}))
    try:
        for path, value in values.items():
            path.write_text(str(value))
        yield previous
    finally:
        restore_settings(data, group)


def current(path: Path) -> str:
    """A sysfs setting's value: the bracketed choice of a list (THP's `always [madvise] never`)."""
    text = path.read_text().strip()
    chosen = re.search(r"\[([\w+]+)\]", text)
    return chosen.group(1) if chosen else text


def ksm_on(data: Path, **tunables: int) -> contextlib.AbstractContextManager[dict[Path, str]]:
    """KSM running (`run` = 1, plus TUNABLES such as pages_to_scan) inside the block."""
    return host_settings(data, "ksm", {KSM / name: value for name, value in {**tunables, "run": 1}.items()})


def thp_never(data: Path) -> contextlib.AbstractContextManager[dict[Path, str]]:
    """No transparent huge pages inside the block (see bench/provision.py: clones' memory)."""
    return host_settings(data, "thp", {THP: "never"})


def restore_settings(data: Path, group: str | None = None) -> None:
    """Put back the host settings a run saved in DATA (its data directory): GROUP's, or all. Only
    the files in RESTORABLE are ever written (the saved file is not trusted to name others)."""
    for saved in sorted(data.glob(f"{group or '*'}-previous.json")):
        try:
            previous = json.loads(saved.read_text())
        except (FileNotFoundError, ValueError):
            continue
        for name, value in previous.items():
            if Path(name) in RESTORABLE and re.fullmatch(r"[\w+]+", str(value)):
                try:
                    Path(name).write_text(str(value))
                except OSError as err:
                    print(f"bench: could not restore {name}={value}: {err}", file=sys.stderr)
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
    prefixes = rf"(?:sd-|shiftdesk-|{re.escape(DATA_DIRS)})?"  # none: namespaces, /run/shiftdesk
    shape = re.compile(rf"^{prefixes}({re.escape(family)}(\d+))(?:-|{re.escape(naming.TEMPLATE_MARK)}|$)")
    seen: set[tuple[str, int]] = set()
    names = [*_virsh("list", "--all", "--name"), *_virsh("pool-list", "--all", "--name"),
             *(p.name for p in Path(tempfile.gettempdir()).glob(f"{DATA_DIRS}{family}*")),
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


class DataDir(tempfile.TemporaryDirectory[str]):
    """A temporary directory whose processes (those naming it: storm servers, replicas, its
    PostgreSQL) are stopped before it is removed, also when the run ends in an error: the sweep
    finds a dead run's processes by its directory, which is gone after such an ending."""

    def cleanup(self) -> None:
        stop_processes_of(Path(self.name))
        super().cleanup()


def data_dir(instance: str) -> DataDir:
    """A temporary data directory the sweep recognises as INSTANCE's."""
    return DataDir(prefix=data_dir_prefix(instance))


if __name__ == "__main__":  # `python bench/cleanup.py FAMILY...`: sweep by hand
    for fam in sys.argv[1:]:
        sweep(fam)
