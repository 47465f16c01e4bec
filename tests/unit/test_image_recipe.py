"""images/build.py's pure helpers: recipe validation (errors name the field), shadow dates,
the keyboard snippet, the mmdebstrap call, the unit symlinks and the guests' network settings."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("image_build", ROOT / "images/build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def recipe(name: str) -> dict:
    return json.loads((ROOT / "images/recipes" / name / "recipe.json").read_text())


def test_busybox_recipe_gets_the_values_it_always_ran_with():
    checked = build.validate_recipe(recipe("busybox-desktop"))
    assert checked["builder"] == "busybox"
    assert (checked["readiness"], checked["memory_mib"], checked["vcpus"]) == ("serial", 256, 1)


def test_agent_desktop_recipe_is_valid():
    checked = build.validate_recipe(recipe("agent-desktop"))
    assert checked["builder"] == "mmdebstrap"
    assert checked["readiness"] == "channel"
    assert checked["keyboard"]["layout"] == "us"
    assert "firefox-esr" in checked["packages"]
    assert checked["kernel_package"] == "linux-image-amd64"  # the cloud kernel has no display driver


BAD = [
    (lambda r: r.update(builder="docker"), "builder:"),
    (lambda r: r.update(name="Agent Desktop"), "name:"),
    (lambda r: r.update(cmdline="root=/dev/sda"), "cmdline:"),
    (lambda r: r.update(packages="firefox-esr"), "packages:"),
    (lambda r: r.update(packages=["firefox-esr", "rm -rf /"]), "packages:"),
    (lambda r: r.update(disk_mib=True), "disk_mib:"),
    (lambda r: r.update(memory_mib=64), "memory_mib:"),
    (lambda r: r.update(vcpus=0), "vcpus:"),
    (lambda r: r.update(readiness="serial-ish"), "readiness:"),
    (lambda r: r.pop("suite"), "suite:"),
    (lambda r: r.update(sources=["deb file:/mnt bookworm main"]), "sources:"),
    (lambda r: r["keyboard"].update(layout=""), "keyboard.layout:"),
    (lambda r: r["keyboard"].update(variant='us"; rm'), "keyboard.variant:"),
    (lambda r: r["keyboard"].update(extra="x"), "keyboard:"),
]


@pytest.mark.parametrize(("mutate", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_recipe_names_the_field(mutate, field):
    data = copy.deepcopy(recipe("agent-desktop"))
    mutate(data)
    with pytest.raises(build.RecipeError, match=f"^{field}"):
        build.validate_recipe(data)


def test_recipe_must_be_an_object():
    with pytest.raises(build.RecipeError, match="^recipe:"):
        build.validate_recipe(["not", "a", "recipe"])


def test_shadow_dates_are_pinned_and_other_fields_kept():
    text = "root:*:20782:0:99999:7:::\nmessagebus:!:20782::::::\nnobody:*::0:99999:7:::\n"
    day = str(build.EPOCH // 86400)
    assert build.pin_shadow_dates(text).splitlines() == [
        f"root:*:{day}:0:99999:7:::", f"messagebus:!:{day}::::::", "nobody:*::0:99999:7:::"]


def test_xorg_keyboard_lists_only_the_set_fields():
    text = build.xorg_keyboard({"model": "pc105", "layout": "de", "variant": "", "options": "caps:none"})
    assert 'Option "XkbLayout" "de"' in text and 'Option "XkbOptions" "caps:none"' in text
    assert "XkbVariant" not in text and text.startswith('Section "InputClass"')


def test_mmdebstrap_keeps_debs_in_the_cache_and_uses_only_the_recipes_sources(tmp_path):
    r = build.validate_recipe(recipe("agent-desktop"))
    cmd = build.mmdebstrap_command(r, tmp_path / "root", tmp_path / "cache")
    assert f"--setup-hook=sync-in {tmp_path / 'cache'} /var/cache/apt/archives/" in cmd
    assert f"--customize-hook=sync-out /var/cache/apt/archives {tmp_path / 'cache'}" in cmd
    assert "--skip=essential/unlink" in cmd and "--skip=download/empty" in cmd
    assert cmd[-len(r["sources"]):] == r["sources"] and cmd[-len(r["sources"]) - 2] == "bookworm"
    include = next(a for a in cmd if a.startswith("--include="))
    assert include.split("=", 1)[1].split(",")[0] == "linux-image-amd64"


def image_with_units(root: Path) -> Path:
    """ShiftDesk's units in /etc (the recipe's overlay), Debian's in /lib, as in a real build."""
    etc, lib = root / "etc/systemd/system", root / "lib/systemd/system"
    for unit in build.ENABLE:
        folder = etc if unit.startswith("shiftdesk-") else lib
        folder.mkdir(parents=True, exist_ok=True)
        (folder / unit).write_text("[Unit]\n")
    return etc


def test_units_are_enabled_masked_and_the_default_is_graphical(tmp_path):
    etc = image_with_units(tmp_path)
    (etc / "getty.target.wants").mkdir(parents=True)
    (etc / "getty.target.wants/getty@tty1.service").symlink_to("/lib/systemd/system/getty@.service")
    build.set_units(tmp_path)
    assert not (etc / "getty.target.wants/getty@tty1.service").is_symlink()
    for unit in ("getty@.service", "autovt@.service", "ctrl-alt-del.target", "debug-shell.service"):
        assert (etc / unit).readlink() == Path("/dev/null")
    assert (etc / "graphical.target.wants/shiftdesk-session.service").readlink() == Path(
        "/etc/systemd/system/shiftdesk-session.service")
    assert (etc / "multi-user.target.wants/shiftdesk-guest-agent.service").is_symlink()
    assert (etc / "default.target").readlink() == Path("/lib/systemd/system/graphical.target")


def test_the_network_comes_up_by_itself_and_nothing_waits_for_it(tmp_path):
    etc = image_with_units(tmp_path)
    build.set_units(tmp_path)
    assert (etc / "multi-user.target.wants/systemd-networkd.service").readlink() == Path(
        "/lib/systemd/system/systemd-networkd.service")
    assert (etc / "sockets.target.wants/systemd-networkd.socket").is_symlink()
    assert (etc / "sysinit.target.wants/systemd-resolved.service").is_symlink()
    for unit in ("systemd-networkd-wait-online.service", "systemd-networkd-wait-online@.service"):
        assert (etc / unit).readlink() == Path("/dev/null")
    assert not {"systemd-networkd.service", "systemd-resolved.service"} & set(build.MASK)


def test_a_unit_the_image_lacks_is_a_build_error(tmp_path):
    image_with_units(tmp_path)
    (tmp_path / "lib/systemd/system/systemd-resolved.service").unlink()
    with pytest.raises(SystemExit, match="systemd-resolved.service"):
        build.set_units(tmp_path)


@pytest.mark.parametrize("name", ["busybox-desktop", "agent-desktop"])
def test_guests_boot_without_ipv6(name):
    assert "ipv6.disable=1" in build.validate_recipe(recipe(name))["cmdline"].split()


def test_the_agent_desktop_resolves_only_through_the_hosts_dns():
    rootfs = ROOT / "images/recipes/agent-desktop/rootfs"
    assert "systemd-resolved" in recipe("agent-desktop")["packages"]
    resolved = (rootfs / "etc/systemd/resolved.conf.d/shiftdesk.conf").read_text().splitlines()
    assert {"FallbackDNS=", "LLMNR=no", "MulticastDNS=no", "DNSOverTLS=no"} <= set(resolved)
    network = (rootfs / "etc/systemd/network/50-shiftdesk.network").read_text().splitlines()
    assert {"DHCP=ipv4", "LinkLocalAddressing=no", "IPv6AcceptRA=no", "ClientIdentifier=mac"} <= set(network)


def test_the_busybox_desktop_loads_the_nic_driver_in_its_initramfs():
    assert "virtio_net" in recipe("busybox-desktop")["initramfs_modules"]


def test_fapolicyd_trusts_the_images_programs_and_the_browser_but_no_other_app_or_interpreter(tmp_path):
    def program(path: str, body: bytes = b"\x7fELF") -> None:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(body)
        (tmp_path / path).chmod(0o755)

    for path in ("usr/bin/ls", "usr/bin/galculator", "usr/bin/python3.11", "usr/lib/firefox-esr/firefox-esr"):
        program(path)
    program("usr/bin/tint2", b"tint2 itself")
    (tmp_path / "usr/share/shiftdesk").mkdir(parents=True)
    (tmp_path / "usr/share/shiftdesk/apps.json").write_text(json.dumps({
        "firefox-esr": {"launcher": "b.desktop", "executables": ["/usr/lib/firefox-esr/"]},
        "galculator": {"launcher": "c.desktop", "executables": ["/usr/bin/galculator"]}}))
    (tmp_path / "etc/fapolicyd/rules.d").mkdir(parents=True)
    (tmp_path / "etc/fapolicyd/rules.d/90-deny-execute.rules").write_text("deny_audit perm=execute all : all\n")
    (tmp_path / "etc/fapolicyd/trust.d").mkdir()
    (tmp_path / "etc/fapolicyd/trust.d/fapolicyd.trust").write_text("/usr/bin/python3.11 4 x\n")
    build.write_app_trust(tmp_path)
    trust = tmp_path / "etc/fapolicyd/trust.d"
    base = (trust / "shiftdesk-base.trust").read_text().splitlines()
    assert [line.split()[0] for line in base] == ["/usr/bin/ls", "/usr/bin/tint2"]
    assert base[1].split()[1:] == ["12", hashlib.sha256(b"tint2 itself").hexdigest()]
    assert (trust / "shiftdesk-apps.trust").read_text().split()[0] == "/usr/lib/firefox-esr/firefox-esr"
    catalogue = json.loads((tmp_path / "usr/share/shiftdesk/apps.json").read_text())
    elf = hashlib.sha256(b"\x7fELF").hexdigest()
    assert catalogue["galculator"]["trust"] == [f"/usr/bin/galculator 4 {elf}"]
    assert sorted(p.name for p in trust.iterdir()) == ["shiftdesk-apps.trust", "shiftdesk-base.trust"]
    assert not (tmp_path / "etc/fapolicyd/rules.d/90-deny-execute.rules").exists()
