"""A benchmark killed mid-run leaves nothing on the host (issue 8, item 8): SIGTERM makes it clean up
after itself; after kill -9 the next run (here: the sweep it starts with) removes what it left."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.conftest import ROOT, tagged_domains


def pool_exists(instance: str) -> bool:
    names = subprocess.run(["virsh", "-c", "qemu:///system", "pool-list", "--all", "--name"],
                           capture_output=True, text=True, check=True).stdout.split()
    return f"shiftdesk-{instance}" in names


def data_dirs(instance: str) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"shiftdesk-bench-{instance}-*"))


def start_and_wait_for_desktops() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "bench/provision.py", "--n", "2", "--timeout", "120"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    instance = f"bprov{proc.pid}"
    deadline = time.monotonic() + 240
    while not tagged_domains(instance):
        assert proc.poll() is None, "the benchmark ended before it made any desktop"
        assert time.monotonic() < deadline, "the benchmark made no desktop in time"
        time.sleep(0.2)
    assert pool_exists(instance) and data_dirs(instance)
    return proc, instance


def test_a_benchmark_killed_with_sigterm_removes_everything_it_made():
    proc, instance = start_and_wait_for_desktops()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    assert tagged_domains(instance) == [] and not pool_exists(instance) and data_dirs(instance) == []


def test_what_a_benchmark_killed_with_sigkill_left_is_removed_by_the_next_run():
    proc, instance = start_and_wait_for_desktops()
    proc.kill()
    proc.wait(timeout=30)
    assert tagged_domains(instance), "kill -9 leaves its desktops (nothing can run after it)"
    subprocess.run([sys.executable, "bench/cleanup.py", "bprov"], cwd=ROOT, check=True, capture_output=True)
    assert tagged_domains(instance) == [] and not pool_exists(instance) and data_dirs(instance) == []


KSM_RUN = Path("/sys/kernel/mm/ksm/run")
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")  # provision.py turns it off for its run


def start_and_wait_for_ksm() -> tuple[subprocess.Popen, str]:
    """provision.py in its instant and memory phases (one busybox clone, idle for long): KSM on."""
    proc = subprocess.Popen([sys.executable, "bench/provision.py", "--n", "1", "--skip", "cold,floor,single",
                             "--idle", "600", "--timeout", "120"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    instance = f"bprov{proc.pid}"
    deadline = time.monotonic() + 240
    def ksm_on() -> bool:
        saved = any((d / "ksm-previous.json").exists() for d in data_dirs(instance))
        return saved and KSM_RUN.read_text().strip() == "1"

    while not ksm_on():
        assert proc.poll() is None, "the benchmark ended before its memory phase"
        assert time.monotonic() < deadline, "the benchmark never switched KSM on"
        time.sleep(0.2)
    return proc, instance


def test_a_benchmark_killed_with_sigterm_in_its_memory_phase_switches_ksm_back():
    before, thp = KSM_RUN.read_text().strip(), THP.read_text().strip()
    proc, instance = start_and_wait_for_ksm()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    assert KSM_RUN.read_text().strip() == before and THP.read_text().strip() == thp
    assert tagged_domains(instance) == [] and not pool_exists(instance) and data_dirs(instance) == []


def test_ksm_left_on_by_a_benchmark_killed_with_sigkill_is_switched_back_by_the_sweep():
    before, thp = KSM_RUN.read_text().strip(), THP.read_text().strip()
    proc, instance = start_and_wait_for_ksm()
    assert "[never]" in THP.read_text()
    proc.kill()
    proc.wait(timeout=30)
    subprocess.run([sys.executable, "bench/cleanup.py", "bprov"], cwd=ROOT, check=True, capture_output=True)
    assert KSM_RUN.read_text().strip() == before and THP.read_text().strip() == thp
    assert tagged_domains(instance) == [] and not pool_exists(instance) and data_dirs(instance) == []


def test_a_run_killed_before_it_made_any_domain_has_its_data_directory_swept():
    """Only its data directory names it (KSM and THP are switched before the first desktop):
    the sweep found dead runs by their domains and storage pool, and looked for data directories
    under a prefix with one dash too many."""
    child = subprocess.Popen(["true"])
    child.wait()
    instance = f"bprov{child.pid}"
    left = Path(tempfile.mkdtemp(prefix=f"shiftdesk-bench-{instance}-"))
    (left / "shiftdesk.db").write_bytes(b"")
    subprocess.run([sys.executable, "bench/cleanup.py", "bprov"], cwd=ROOT, check=True, capture_output=True)
    assert not left.exists() and data_dirs(instance) == []
