from hypothesis import given
from hypothesis import strategies as st

from controlplane.domain import placement as pl
from controlplane.domain.placement import HostLoad, HostMode, Shape, Unplaceable
from controlplane.domain.ports import HostCapacity, TemplateKey

GIB = 1 << 30
SALES = Shape(pool_id=1, pool="sales", memory_mib=1024, vcpus=2, template=TemplateKey(7, 1024, 2))


def load(id, memory_mib=8192, vcpus=4, free=100 * GIB, **kw):
    capacity = HostCapacity(vcpus=vcpus, memory_mib=memory_mib, disk_bytes=200 * GIB, disk_free_bytes=free)
    return HostLoad(id=id, name=f"host-{id}", capacity=capacity, **kw)


def test_each_filter_says_what_is_missing_on_which_host():
    hosts = [load(1, mode=HostMode.MAINTENANCE),
             HostLoad(id=2, name="host-2", down_reason="libvirt: connection refused"),
             load(3, committed_memory_mib=11900),
             load(4, committed_vcpus=31),
             load(5, free=GIB)]
    out = pl.place(SALES, hosts)
    assert isinstance(out, Unplaceable)
    assert dict(out.refusals) == {
        "host-1": "in maintenance",
        "host-2": "down (libvirt: connection refused)",
        "host-3": "memory: 11900 of 12288 MiB committed (8192 MiB x 1.5), 1024 MiB more needed",
        "host-4": "vCPUs: 31 of 32 committed (4 x 8), 2 more needed",
        "host-5": "disk: 1024 MiB free, 2048 MiB kept in reserve",
    }
    assert str(out).startswith("pool sales: no host can take a desktop (1024 MiB, 2 vCPU): host-1: in maintenance;")
    assert "no host is registered" in str(pl.place(SALES, []))


def test_only_a_host_whose_image_store_has_the_pools_golden_image_takes_its_desktop():
    disk = "ab" * 32
    shape = Shape(pool_id=1, pool="sales", memory_mib=1024, vcpus=2, image=disk)
    without, with_it, unknown = load(1, images=frozenset({"cd" * 32})), load(2, images=frozenset({disk})), load(3)
    assert pl.refusal(without, shape) == ("image: the pool's golden image (sha256 abababababab) is not in this "
                                          "host's image store")
    assert pl.place(shape, [without, with_it]).id == 2
    assert pl.place(shape, [without, unknown]).id == 3  # a host that does not say is not held back
    assert "host-1: image:" in str(pl.place(shape, [without]))


def test_a_host_with_room_is_chosen_over_hosts_without():
    hosts = [load(1, committed_memory_mib=12288), load(2)]
    assert pl.place(SALES, hosts).id == 2
    assert pl.refusal(load(1, committed_memory_mib=11264), SALES) is None  # exactly full fits


def test_a_pool_is_spread_before_anything_else_counts():
    hosts = {1: load(1, memory_mib=65536, templates=frozenset({SALES.template})), 2: load(2)}
    chosen = []
    for _ in range(6):
        host = pl.place(SALES, list(hosts.values()))
        assert isinstance(host, HostLoad)
        hosts[host.id] = pl.taken(host, SALES)
        chosen.append(host.id)
    assert chosen == [1, 2, 1, 2, 1, 2]
    assert hosts[1].committed_memory_mib == 3 * 1024 and hosts[2].committed_vcpus == 6


def test_the_template_then_free_memory_break_ties_then_the_lowest_id():
    assert pl.place(SALES, [load(1), load(2, templates=frozenset({SALES.template}))]).id == 2
    assert pl.place(SALES, [load(1), load(2, memory_mib=16384)]).id == 2
    assert pl.place(SALES, [load(2), load(1)]).id == 1
    other_pool = {9: 5}
    assert pl.place(SALES, [load(1, pool_desktops={1: 1}), load(2, pool_desktops=other_pool)]).id == 2


@given(st.lists(st.tuples(st.integers(0, 16384), st.integers(0, 40), st.sampled_from(list(HostMode))),
                max_size=5))
def test_placement_never_overcommits_and_refuses_only_with_reasons(specs):
    hosts = [load(i, committed_memory_mib=m, committed_vcpus=c, mode=mode) for i, (m, c, mode) in enumerate(specs)]
    out = pl.place(SALES, hosts)
    if isinstance(out, Unplaceable):
        assert len(out.refusals) == len(hosts) and all(reason for _, reason in out.refusals)
    else:
        assert out.mode == HostMode.ACTIVE
        assert out.committed_memory_mib + SALES.memory_mib <= out.capacity.memory_mib * 1.5
        assert out.committed_vcpus + SALES.vcpus <= out.capacity.vcpus * 8
