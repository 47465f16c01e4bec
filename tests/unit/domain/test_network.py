"""Addresses, MACs and port names of the desktop network: unique, consistent, and refused with
the field named when they cannot be."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from controlplane.domain.network import AddressPoolExhausted, DesktopNetwork, allocate, mac_for

NET = DesktopNetwork.of("main", IPv4Network("10.213.0.0/16"))


def test_the_host_is_dot_one_and_desktops_start_at_dot_ten():
    assert NET.host == IPv4Address("10.213.0.1")
    assert allocate(NET, []) == IPv4Address("10.213.0.10")
    assert NET.bridge == "sd-main"


def test_allocation_takes_the_lowest_free_address_and_reuses_freed_ones():
    used = [IPv4Address("10.213.0.10"), IPv4Address("10.213.0.12")]
    assert allocate(NET, used) == IPv4Address("10.213.0.11")
    assert allocate(NET, [*used, IPv4Address("10.213.0.11")]) == IPv4Address("10.213.0.13")


def test_a_full_subnet_is_an_error_that_names_the_setting():
    small = DesktopNetwork.of("main", IPv4Network("10.9.9.0/24"))
    everything = [small.subnet.network_address + i for i in range(10, 255)]
    with pytest.raises(AddressPoolExhausted, match="network.subnet"):
        allocate(small, everything)
    assert allocate(small, everything[:-1]) == IPv4Address("10.9.9.254")  # .255 is broadcast


def test_every_address_of_a_slash_16_has_its_own_mac():
    macs = {mac_for(NET.subnet.network_address + i) for i in range(10, 65535)}
    assert len(macs) == 65535 - 10
    assert mac_for(IPv4Address("10.213.1.12")) == "52:54:00:d5:01:0c"


def test_ports_are_valid_interface_names_unique_per_desktop_and_installation():
    nic = NET.nic("sd-main-sales-0a1b2c", IPv4Address("10.213.0.10"))
    other = DesktopNetwork.of("demo", IPv4Network("10.214.0.0/16")).nic("sd-main-sales-0a1b2c",
                                                                         IPv4Address("10.214.0.10"))
    assert len(nic.tap) == 15 and nic.tap.startswith(NET.port_prefix)
    assert nic.tap != other.tap and NET.port_prefix != "sd" + other.tap[2:6]
    assert nic.tap != NET.nic("sd-main-sales-0a1b2d", IPv4Address("10.213.0.11")).tap
    assert not NET.bridge.startswith(NET.port_prefix)


@pytest.mark.parametrize("subnet, message", [
    ("8.8.0.0/16", "not a private range"),
    ("10.0.0.0/25", "between /8 and /24"),
])
def test_bad_subnets_are_refused_with_the_field_named(subnet, message):
    with pytest.raises(ValueError, match=f"network.subnet: .*{message}"):
        DesktopNetwork.of("main", IPv4Network(subnet))


def test_a_nic_outside_the_desktop_range_is_refused():
    for address in ("10.213.0.1", "10.213.0.9", "10.214.0.10", "10.213.255.255"):
        with pytest.raises(ValueError, match="ipv4"):
            NET.nic("sd-main-sales-0a1b2c", IPv4Address(address))
