from pathlib import Path

from controlplane.drivers.libvirt import kvm_probe


def test_no_kernel_output_means_tcg(tmp_path):
    assert kvm_probe.kvm_boots(tmp_path / "missing-kernel", timeout=5) is False


def test_probe_result_is_cached_per_kernel(tmp_path, monkeypatch):
    calls = []

    def fake_probe(kernel: Path, timeout: float = 5.0, runas: str | None = None) -> bool:
        calls.append(kernel)
        return True

    monkeypatch.setattr(kvm_probe, "kvm_boots", fake_probe)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    assert kvm_probe.cached_domain_type(kernel, tmp_path / "cache") == "kvm"
    assert kvm_probe.cached_domain_type(kernel, tmp_path / "cache") == "kvm"
    assert len(calls) == 1
    kernel.write_bytes(b"another kernel")
    kvm_probe.cached_domain_type(kernel, tmp_path / "cache")
    assert len(calls) == 2


def test_auto_without_a_kernel_file_is_tcg(tmp_path):
    from controlplane.drivers.libvirt.driver import LibvirtHypervisor

    hv = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                           overlay_dir=tmp_path, run_dir=tmp_path, domain_type="auto")
    assert hv.resolved_domain_type(tmp_path / "none") == "qemu"


def test_the_probe_qemu_drops_root_and_runs_sandboxed(tmp_path, monkeypatch):
    import os
    import pwd
    import subprocess

    seen = []

    def fake_run(cmd, **kw):
        seen.append((cmd, kw))
        return subprocess.CompletedProcess(cmd, 0, stdout=b"Linux version 6.1", stderr=b"")

    monkeypatch.setattr(os, "access", lambda *_a: True)
    monkeypatch.setattr(kvm_probe.subprocess, "run", fake_run)
    assert kvm_probe.kvm_boots(tmp_path / "vmlinuz", runas="libvirt-qemu") is True
    [(cmd, kw)] = seen
    user = pwd.getpwnam("libvirt-qemu")
    assert (kw["user"], kw["group"]) == (user.pw_uid, user.pw_gid) and kw["user"] != 0
    assert cmd[cmd.index("-sandbox") + 1].startswith("on,")
