from controlplane.services import selftest


class SlowHypervisor:
    def __init__(self, ms):
        self.ms = ms

    def selftest(self):
        return self.ms


def test_fast_libvirt_passes():
    check = selftest.run(SlowHypervisor(1.5), limit_ms=50)
    assert check.ok and "1.5 ms" in check.explain()


def test_slow_libvirt_fails_with_the_reason_and_the_fix():
    check = selftest.run(SlowHypervisor(31000), limit_ms=50)
    assert not check.ok
    assert "/dev/kvm" in check.explain() and "setup-host.sh" in check.explain()
