"""The agent desktop on real QEMU, on the second libvirt host (second_host.py), driven by the real
reconciler: the host boots a template until Firefox shows and saves it; two clones restored from
it become two machines (names, machine-ids, random state, directory secrets, MACs, addresses),
confirmed over the host channel by the in-guest agent, each applying the signed app allowlist the
control plane sends it. Their host channels are sockets of the second host, reached only through
its console relay; their network is that host's own bridge, DHCP server and resolver, which its
host agent runs. On one clone the allowlist is then enforced by the image's fapolicyd and
apply-apps: an app outside the list does not start when the agent asks for it (the keyboard's
calculator key) and the denial reaches the host; a new list lets it start; a list with a broken
signature is refused and the desktop quarantined.

One test, because an agent desktop's boot is the expensive part (minutes under TCG)."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import subprocess
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import libvirt
import pytest

from controlplane.config import NetworkSettings
from controlplane.domain.app_policy import AppPolicy, sign
from controlplane.domain.placement import HostMode
from controlplane.drivers.fake import FakeDirectory
from controlplane.main import build_context
from controlplane.services import audit, desktops, hosts, images, policies, pools
from controlplane.services.reconciler import Reconciler
from tests.integration.conftest import purge
from tests.integration.replicas import wait_for
from tests.integration.second_host import NS, SecondHost, second_host_with_agent

KEY_CALC = 140  # Linux input keycode of a keyboard's calculator key (X: XF86Calculator)
GALCULATOR = "/usr/bin/galculator"
SALES = "CN=cc-sales,OU=Groups,DC=agents,DC=test"


def press_calculator_key(hv, name: str) -> None:
    hv.conn.lookupByName(name).sendKey(libvirt.VIR_KEYCODE_SET_LINUX, 100, [KEY_CALC], 1, 0)


def denials_of(hv, path: str, seen: list) -> int:
    seen.extend(hv.app_denials())
    return sum(d.count for d in seen if d.path == path)


def runs_exactly_the_apps_its_signed_list_allows(hv, key, name: str) -> None:
    """NAME applies the pool's list (Firefox only) when this starts; the reconciler is not running,
    so the lists sent here are the only ones."""
    seen: list = []
    applied = hv.links.state(name).apps_applied
    press_calculator_key(hv, name)
    wait_for("the calculator to be denied (and reported)", lambda: denials_of(hv, GALCULATOR, seen) > 0, 60, every=0.5)

    before = hv.screenshot(name)
    assert hv.deliver_apps(name, sign(key, AppPolicy.of(name, applied + 1, {"firefox-esr", "galculator"})))
    wait_for("the list that allows the calculator to be applied", lambda: hv.links.state(name).apps_applied ==
             applied + 1 or hv.links.state(name).quarantined, 120, every=0.5)
    assert hv.links.state(name).quarantined is None
    denied_so_far = denials_of(hv, GALCULATOR, seen)
    press_calculator_key(hv, name)
    wait_for("the calculator to show up", lambda: hv.screenshot(name) != before, 90, every=1)
    time.sleep(6)  # the guest reports denials every 5 s
    assert denials_of(hv, GALCULATOR, seen) == denied_so_far

    third = sign(key, AppPolicy.of(name, applied + 2, {"firefox-esr"}))
    broken = dataclasses.replace(third, signature=bytes([third.signature[0] ^ 1]) + third.signature[1:])
    assert hv.deliver_apps(name, broken)
    wait_for("a broken signature to be refused", lambda: hv.links.state(name).quarantined is not None, 60, every=0.5)
    assert "bad-signature" in (hv.links.state(name).quarantined or "")
    assert hv.list_desktops()[name].quarantined and not hv.is_ready(name)


def file_in_overlay(host: SecondHost, hv, name: str, path: str, scratch: Path) -> str | None:
    """Read PATH from the desktop's disk on HOST, offline (debugfs on a raw copy of its whole
    chain, made on that host: the chain is on its own disk)."""
    overlay = hv._pool().storageVolLookupByName(f"{name}.qcow2").path()
    raw = scratch / f"{name}.raw"
    subprocess.run(host.inside("qemu-img", "convert", "-U", "-O", "raw", overlay, str(raw)), check=True,
                   capture_output=True)
    try:  # the guest's last writes may sit in the ext4 journal only: replay it as a mount would
        subprocess.run(["e2fsck", "-y", "-E", "journal_only", str(raw)], capture_output=True, check=False)
        done = subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True, check=False)
    finally:
        raw.unlink()
    return done.stdout if done.returncode == 0 and "not found" not in done.stderr else None


def leased_from_the_second_host(ctx, b_root: Path, instance: str, rows) -> None:
    """Each clone leases its own address, with its own MAC, from the second host's DHCP server
    (never the first host's), and sends with that MAC on its own port of that host's bridge."""
    net = ctx.network.network
    nics = [net.nic(r.name, IPv4Address(r.ipv4)) for r in rows]
    assert len({n.mac for n in nics}) == len({n.ipv4 for n in nics}) == len(rows)
    there = b_root / "run-shiftdesk" / instance / "net" / "dhcp" / "leases"
    for nic in nics:
        wait_for(f"{nic.name} to lease {nic.ipv4} from the second host", lambda nic=nic: f"{nic.mac} {nic.ipv4}" in (
            there.read_text() if there.exists() else ""), 120, every=1)
    here = ctx.network.state_dir / "dhcp" / "leases"
    assert not any(n.mac in (here.read_text() if here.exists() else "") for n in nics)  # not the first host's
    fdb = subprocess.run(["ip", "netns", "exec", NS, "bridge", "fdb", "show", "br", net.bridge],
                         capture_output=True, text=True, check=True).stdout
    assert all(f"{n.mac} dev {n.tap}" in fdb for n in nics)
    listening = subprocess.run(["ip", "netns", "exec", NS, "ss", "-lnu"], capture_output=True, text=True,
                               check=True).stdout
    assert f"{net.host}:53 " in listening  # the second host's resolver serves them


@pytest.mark.timeout(1800)
def test_two_clones_on_the_second_host_are_two_machines_on_its_network_that_run_only_allowed_apps(
        real_settings, tmp_path):
    subnet = IPv4Network(f"10.236.{secrets.randbelow(200) + 20}.0/24")
    settings = real_settings.model_copy(update={"network": NetworkSettings(enabled=True, subnet=subnet)})
    ctx = build_context(settings)
    ctx.directory = FakeDirectory()  # computer accounts: each clone gets its own secret over the channel
    try:
        with second_host_with_agent(settings, SHIFTDESK_NETWORK__ENABLED="true",
                                    SHIFTDESK_NETWORK__SUBNET=str(subnet)) as b_host:
            images.build(ctx, "agent-desktop", actor="test")
            policies.apply(ctx, {"agents.yaml": f'name: agents\nbind:\n  groups: ["{SALES}"]\n  pools: [agents]\n'
                                                'apps:\n  allow: [firefox-esr]\n'}, actor="test")
            b = hosts.register(ctx, name="host-b", uri=b_host.uri, actor="test")
            (home,) = [h.name for h in hosts.views(ctx) if h.name != "host-b"]
            hosts.set_mode(ctx, name=home, mode=HostMode.MAINTENANCE, actor="test")
            pools.create(ctx, name="agents", image="agent-desktop", size=2, clone="instant", actor="test")
            rec = Reconciler(ctx)
            try:
                assert rec.run_until_converged(timeout=1500), "the agent desktops on host-b never became ready"
                rows = [r for r, _ in desktops.list_all(ctx) if str(r.state) == "ready"]
                assert len(rows) == 2 and all(r.host_id == b.id and r.ipv4 is not None for r in rows)
                assert len(audit.recent(ctx, action="desktop.restore")) >= 2  # clones, not boots
                hv = ctx.driver(b.id)
                # ready once they confirmed their identity and run nothing beyond their list (the
                # image's first list, the browser, is this policy's): the list is applied next
                wait_for("both clones to apply their lists", lambda: all(
                    hv.links.state(r.name).apps_applied is not None for r in rows), 120, every=0.5)
                states = [hv.links.state(r.name) for r in rows]
                assert all(s.confirmed and s.quarantined is None for s in states)
                assert states[0].rng_probe != states[1].rng_probe  # the template's random state is not shared
                assert audit.recent(ctx, action="app.denied") == []  # firefox, allowed, ran
                log = (b_host.root / "agent.log").read_text()
                assert all(f"console: {r.name} channel opened for shiftdesk-control-plane" in log for r in rows)
                leased_from_the_second_host(ctx, b_host.root, settings.instance, rows)

                names = sorted(r.name for r in rows)
                runs_exactly_the_apps_its_signed_list_allows(hv, ctx.app_signer, names[1])
                for name in names:
                    hv.destroy(name)  # the agent fsyncs the secret before it confirms
                secrets_seen = [file_in_overlay(b_host, hv, n, "/var/lib/shiftdesk-agent/join-secret", tmp_path)
                                for n in names]
                assert secrets_seen == [ctx.directory.computers[n] for n in names]  # each its own, on its own disk
                machine_ids = [file_in_overlay(b_host, hv, n, "/etc/machine-id", tmp_path) for n in names]
                assert machine_ids[0] and machine_ids[1] and machine_ids[0] != machine_ids[1]

                pools.delete(ctx, "agents", actor="test")
                assert rec.run_until_converged(timeout=180)
            finally:
                rec.close()
    finally:
        purge(settings)
        ctx.network.remove()
        shutil.rmtree(Path("/run/shiftdesk") / settings.instance, ignore_errors=True)
