from pathlib import Path

from controlplane.drivers.libvirt import kvm_probe


def test_no_kernel_output_means_tcg(tmp_path):
    assert kvm_probe.kvm_boots(tmp_path / "missing-kernel", timeout=5) is False


def test_probe_result_is_cached_per_kernel(tmp_path, monkeypatch):
    calls = []

    def fake_probe(kernel: Path, timeout: float = 5.0) -> bool:
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
