"""The desktop network's nftables rules: a golden file (read its diff before regenerating with
SHIFTDESK_REGEN_GOLDEN=1) and nft's own parser (`nft -c`, which checks without loading)."""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from controlplane.domain.network import DesktopNetwork
from controlplane.drivers.netfilter import ruleset

GOLDEN = Path(__file__).resolve().parents[3] / "data" / "nftables" / "desktop-network.nft"
NET = DesktopNetwork.of("main", IPv4Network("10.213.0.0/16"))
NICS = [NET.nic("sd-main-sales-0a1b2c", IPv4Address("10.213.0.10")),
        NET.nic("sd-main-sales-0a1b2d", IPv4Address("10.213.1.11"))]


def script() -> str:
    return ruleset.replace_tables(ruleset.tables("main", NET)) + ruleset.port_elements("main", NICS)


def test_rules_match_the_golden_file():
    if os.environ.get("SHIFTDESK_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(script())
    assert script() == GOLDEN.read_text()


@pytest.mark.parametrize("nics", [NICS, []], ids=["two-desktops", "none"])
def test_nft_accepts_the_rules(nics):
    assert shutil.which("nft"), "nftables is not installed (scripts/setup-host.sh installs it)"
    text = ruleset.replace_tables(ruleset.tables("main", NET)) + ruleset.port_elements("main", nics)
    checked = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_digest_follows_the_rules_not_the_ports():
    one = ruleset.tables("main", NET)
    moved = ruleset.tables("main", DesktopNetwork.of("main", IPv4Network("10.214.0.0/16")))
    assert [t.digest for t in one] == [t.digest for t in ruleset.tables("main", NET)]
    assert one[1].digest != moved[1].digest  # the host's address is in the inet rules


def test_what_a_desktop_may_send_the_host_is_dhcp_dns_and_redirected_web_traffic_only():
    rules = ruleset.inet_table("main", NET).chains
    to_host = next(c for c in rules if c.name == "from_desktops").rules
    accepted = [r for r in to_host if r.endswith("accept")]
    assert accepted == ["ct state established,related accept",
                        "ip daddr 10.213.0.1 udp dport { 53, 67 } accept",
                        "ip daddr 255.255.255.255 udp dport 67 accept",
                        "ip daddr 10.213.0.1 tcp dport 53 accept",
                        "ip daddr 10.213.0.1 tcp dport { 3129, 3130 } ct status dnat accept"]
    assert to_host[0] == "meta nfproto ipv6 drop" and to_host[-1] == "counter drop"
    egress = next(c for c in rules if c.name == "egress").rules
    assert not any("accept" in rule for rule in egress)  # nothing is routed on by itself
    redirected = next(c for c in rules if c.name == "to_proxy").rules
    assert all("@allowed redirect" in rule for rule in redirected) and len(redirected) == 2


def test_names_that_are_not_interface_names_never_reach_the_rules():
    with pytest.raises(ValueError, match="network.bridge"):
        ruleset.inet_table("main", DesktopNetwork(subnet=NET.subnet, bridge='x" accept #', port_prefix="sd0000"))
    with pytest.raises(ValueError, match="network.bridge"):
        ruleset.bridge_table("main", DesktopNetwork(subnet=NET.subnet, bridge="sd-main", port_prefix='" accept'))
    with pytest.raises(ValueError, match="instance"):
        ruleset.table_name("main; flush ruleset")
