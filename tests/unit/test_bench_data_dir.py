"""A benchmark that ends in an error stops what it started before its data directory goes
(bench/cleanup.py): the sweep of the next run finds a dead run's processes by that directory,
and after such an ending there is none to find them by."""

from __future__ import annotations

import subprocess
import time

import pytest

from bench import cleanup


def test_processes_naming_the_data_directory_are_stopped_when_the_run_fails():
    with pytest.raises(RuntimeError), cleanup.data_dir("bunit1") as tmp:  # noqa: PT012 - the run, then its failure
        server = subprocess.Popen(["sh", "-c", "sleep 300", tmp])  # a storm server's command line names it
        outsider = subprocess.Popen(["sleep", "300"])
        raise RuntimeError("the storm's server did not stop in time")
    try:
        deadline = time.monotonic() + 10
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.poll() is not None, "a process of the run outlived it"
        assert outsider.poll() is None  # nobody else's
    finally:
        for proc in (server, outsider):
            proc.kill()
            proc.wait()
