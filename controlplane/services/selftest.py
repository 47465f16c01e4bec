"""Start-up self-test: libvirt must answer fast, or every reconcile pass crawls.

The half-present /dev/kvm trap (DESIGN.md) makes `define` take 30+ s; catching it at start
with a clear reason beats a control plane that silently takes minutes per desktop.
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.domain.ports import Hypervisor


@dataclass(frozen=True)
class SelfTest:
    define_undefine_ms: float
    limit_ms: float

    @property
    def ok(self) -> bool:
        return self.define_undefine_ms < self.limit_ms

    def explain(self) -> str:
        if self.ok:
            return f"libvirt define+undefine {self.define_undefine_ms:.1f} ms (limit {self.limit_ms:.0f} ms)"
        return (
            f"libvirt define+undefine took {self.define_undefine_ms:.0f} ms (limit {self.limit_ms:.0f} ms). "
            "Likely the half-present /dev/kvm trap: QEMU's user cannot open /dev/kvm, so libvirt "
            "re-probes QEMU on every call. Run scripts/setup-host.sh: it gives QEMU's user (not "
            "root) /dev/kvm through the kvm group (0660 root:kvm), clears libvirt's capabilities "
            "cache and restarts libvirtd. Devices are recreated at boot, so run it after a reboot."
        )


def run(hypervisor: Hypervisor, limit_ms: float) -> SelfTest:
    hypervisor.selftest()  # the first call pays for connecting and the capabilities cache
    return SelfTest(define_undefine_ms=min(hypervisor.selftest() for _ in range(3)), limit_ms=limit_ms)
