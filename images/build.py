#!/usr/bin/env python3
"""Build a golden image from a recipe, using only Debian packages.

    python3 images/build.py images/recipes/busybox-desktop OUT_DIR [--cache DIR]
    python3 images/build.py images/recipes/agent-desktop OUT_DIR [--cache DIR]

Output in OUT_DIR: disk.qcow2 (the root disk desktops clone), vmlinuz and initrd.img (direct
kernel boot), manifest.json (recipe, cmdline, package versions, sha256 of every artifact, how
the desktop says it is ready, and the guest RAM and vCPUs it wants).

Two kinds of recipe (recipe.json "builder"):
- "busybox" (the default): a Debian kernel and busybox-static, unpacked with dpkg-deb, plus the
  recipe's init and optional rootfs/ overlay. Boots in seconds; says it is ready on its serial line.
- "mmdebstrap": a real Debian system installed by mmdebstrap from the Debian archive, plus the
  recipe's rootfs/ overlay, users and units. Says it is ready over the host channel.

Why this shape: `mkfs.ext4 -d` fills a filesystem from a directory without mounting anything,
so the build needs no loop devices and no root-only tricks beyond apt. Every timestamp, UUID
and hash seed is pinned, so the same recipe and package versions give the same bytes.
Standard library only: the build runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

EPOCH = 1_700_000_000  # pinned mtime for every file: reproducible bytes
NAMESPACE = uuid.UUID("6f1c1f0e-5d1a-4a8e-9a57-5d35c1e0c0de")


WORK_PREFIX = "shiftdesk-build-"
OWNER_FILE = ".owner-pid"  # the building process, so a later build can tell a dead one's leftovers
UNCLAIMED_S = 3600  # a work directory with no owner file yet is left alone this long


@contextmanager
def work_dir(parent: Path | None = None) -> Iterator[Path]:
    """A build's scratch directory, removed afterwards without ever deleting through a mount.

    mmdebstrap mounts /proc, /sys and device trees inside the root it builds and unmounts them
    when it ends; a build killed with SIGKILL leaves them mounted and its directory behind, and a
    plain recursive delete would then walk into the host's /dev. So each build first sweeps the
    leftovers of dead builds (`sweep_dead_builds`), and every removal unmounts first."""
    parent = Path(parent or tempfile.gettempdir())
    sweep_dead_builds(parent)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=parent))
    try:
        (work / OWNER_FILE).write_text(str(os.getpid()))
        yield work
    finally:
        release(work)


def sweep_dead_builds(parent: Path) -> list[Path]:
    """Release the work directories under PARENT whose build is gone; returns them."""
    swept = []
    for work in sorted(parent.glob(f"{WORK_PREFIX}*")):
        if work.is_dir() and not work.is_symlink() and not _owner_alive(work):
            release(work)
            swept.append(work)
    return swept


def _owner_alive(work: Path) -> bool:
    try:
        owner = (work / OWNER_FILE).read_text().strip()
    except FileNotFoundError:
        return time.time() - work.stat().st_mtime < UNCLAIMED_S  # just made, or from before owner files
    return owner.isdigit() and Path(f"/proc/{owner}").exists()


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below PATH, deepest first (from /proc/self/mountinfo)."""
    base = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
        if point == base or point.startswith(base + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def release(work: Path) -> None:
    """Unmount everything below WORK (lazily: a dead build's mounts may still be busy), then
    delete it; refused, leaving it in place, if anything is still mounted there."""
    for point in mounts_under(work):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    left = mounts_under(work)
    if left:
        raise RuntimeError(f"build work directory {work}: still mounted at {', '.join(map(str, left))}; not removed")
    shutil.rmtree(work, ignore_errors=True)


def run(*cmd: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=cwd)
    return done.stdout


def fetch_deb(package: str, cache: Path) -> Path:
    """Download PACKAGE's .deb into CACHE (once) and return its path."""
    cache.mkdir(parents=True, exist_ok=True)
    version = apt_candidate(package)
    found = sorted(cache.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))
    if found:
        return found[0]
    try:
        run("apt-get", "download", f"{package}={version}", cwd=cache)
    except subprocess.CalledProcessError:
        run("apt-get", "update", "-qq")
        run("apt-get", "download", f"{package}={version}", cwd=cache)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if not found:
        raise SystemExit(f"build: apt-get download {package} produced no .deb")
    return found[-1]


def apt_candidate(package: str) -> str:
    out = run("apt-cache", "policy", package)
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            cand = line.split(":", 1)[1].strip()
            if cand and cand != "(none)":
                return cand
    run("apt-get", "update", "-qq")
    out = run("apt-cache", "policy", package)
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            return line.split(":", 1)[1].strip()
    raise SystemExit(f"build: no candidate version for {package}")


def kernel_package(meta: str) -> str:
    """Resolve a kernel metapackage (linux-image-cloud-amd64) to the real image package."""
    out = run("apt-cache", "depends", "--no-recommends", "--no-suggests", meta)
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split(":", 1)[1].strip()
    return meta


def extract(deb: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    run("dpkg-deb", "-x", str(deb), str(into))


def pin_times(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))


def install_busybox(root: Path, busybox_tree: Path) -> None:
    for sub in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "var/lib/shiftdesk"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox_tree / "bin/busybox", root / "bin/busybox")
    applets = run(str(root / "bin/busybox"), "--list").split()
    for applet in applets:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")


def module_depends(path: Path) -> list[str]:
    """The `depends=` field of a module's .modinfo (no depmod or modinfo needed)."""
    data = path.read_bytes()
    start = data.find(b"\0depends=")
    if start < 0:
        return []
    end = data.index(b"\0", start + 1)
    value = data[start + len(b"\0depends="):end].decode()
    return [d.replace("-", "_") for d in value.split(",") if d]


def load_order(wanted: list[str], by_name: dict[str, Path]) -> list[str]:
    """Dependencies before dependents, so a plain `insmod` loop in the initramfs works."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in by_name:
            raise SystemExit(f"build: recipe field initramfs_modules: no module {name!r} in kernel")
        for dep in module_depends(by_name[name]):
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def build_initramfs(work: Path, kernel_tree: Path, busybox_tree: Path, recipe_dir: Path,
                    modules: list[str], out: Path) -> None:
    root = work / "initramfs"
    (root / "bin").mkdir(parents=True)
    (root / "lib/modules").mkdir(parents=True)
    shutil.copy2(busybox_tree / "bin/busybox", root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    by_name = {p.name[:-3]: p for p in kernel_tree.glob("lib/modules/*/kernel/**/*.ko")}
    order = load_order(modules, by_name)
    for name in order:
        shutil.copy2(by_name[name], root / "lib/modules" / f"{name}.ko")
    (root / "modules.order").write_text("\n".join(order) + "\n")
    shutil.copy2(recipe_dir / "initramfs-init", root / "init")
    (root / "init").chmod(0o755)
    pin_times(root)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listing = "\n".join(["."] + names) + "\n"
    with out.open("wb") as fh:
        subprocess.run(["cpio", "-o", "-H", "newc", "--reproducible", "-R", "0:0", "--quiet"],
                       input=listing.encode(), stdout=fh, cwd=root, check=True)


def build_rootfs(work: Path, busybox_tree: Path, recipe_dir: Path, recipe: dict, out: Path) -> None:
    root = work / "rootfs"
    install_busybox(root, busybox_tree)
    shutil.copy2(recipe_dir / "init", root / "sbin/init")
    (root / "sbin/init").chmod(0o755)
    if (recipe_dir / "rootfs").is_dir():
        copy_overlay(recipe_dir / "rootfs", root)
    (root / "etc/os-release").write_text(f"NAME=ShiftDesk\nID=shiftdesk\nVARIANT={recipe['name']}\n")
    pin_times(root)
    make_disk(work, root, recipe, out, ["-N", "1024"])


def make_disk(work: Path, root: Path, recipe: dict, out: Path, mkfs_extra: list[str]) -> None:
    """ext4 straight from the tree (no mount, no loop device), then qcow2.

    The UUID and hash seed derive from the recipe's name and mkfs runs on a faked clock, so the
    same tree always gives the same bytes."""
    raw = work / "disk.raw"
    fs_uuid = str(uuid.uuid5(NAMESPACE, recipe["name"]))
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(EPOCH), SOURCE_DATE_EPOCH=str(EPOCH))
    run("mkfs.ext4", "-q", "-F", "-d", str(root), "-U", fs_uuid, "-L", "shiftdesk",
        "-E", f"hash_seed={fs_uuid},root_owner=0:0", *mkfs_extra, "-b", "4096",
        str(raw), f"{int(recipe['disk_mib'])}M", env=env)
    pin_inode_times(root, raw)
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out))


def pin_inode_times(root: Path, raw: Path) -> None:
    """mkfs.ext4 -d copies each file's ctime, which utime() cannot set, and its access time,
    which anything reading the tree between `pin_times` and mkfs moves (a `find` over /var/tmp
    made two builds of the same packages differ in 1,927 directories' atimes): pin both with
    debugfs."""
    paths = ["/"] + sorted("/" + str(p.relative_to(root)) for p in root.rglob("*"))
    script = "".join(f"set_inode_field {p} ctime @{EPOCH}\nset_inode_field {p} atime @{EPOCH}\n" for p in paths)
    cmds = raw.with_suffix(".debugfs")
    cmds.write_text(script)
    run("debugfs", "-w", "-f", str(cmds), str(raw), env=dict(os.environ, E2FSPROGS_FAKE_TIME=str(EPOCH)))


# --- recipes --------------------------------------------------------------------------------------

BUILDERS = ("busybox", "mmdebstrap")
READINESS = ("serial", "channel")
BUSYBOX_DEFAULTS = {"readiness": "serial", "memory_mib": 256, "vcpus": 1}
KEYBOARD_FIELDS = ("model", "layout", "variant", "options")
XKB_VALUE = re.compile(r"[A-Za-z0-9_,:()+-]*")
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")


class RecipeError(ValueError):
    """A recipe.json that cannot be built; the message starts with the field's name."""


def load_recipe(recipe_dir: Path) -> dict:
    """Read and check RECIPE_DIR/recipe.json before any download, so mistakes cost nothing."""
    try:
        data = json.loads((recipe_dir / "recipe.json").read_text())
    except json.JSONDecodeError as exc:
        raise RecipeError(f"recipe.json: not JSON ({exc})") from None
    return validate_recipe(data)


def validate_recipe(data: object) -> dict:
    """The recipe with defaults filled in, or RecipeError naming the first bad field.

    Pure (no I/O) so every rule has a unit test. Busybox recipes predate the readiness, memory
    and vCPU fields: they get the values the busybox desktop has always run with."""
    if not isinstance(data, dict):
        raise RecipeError("recipe: must be a JSON object")
    recipe = dict(data)
    builder = recipe.setdefault("builder", "busybox")
    if builder not in BUILDERS:
        raise RecipeError(f"builder: must be one of {', '.join(BUILDERS)}, not {builder!r}")
    if builder == "busybox":
        for key, value in BUSYBOX_DEFAULTS.items():
            recipe.setdefault(key, value)
    _check_common(recipe)
    if builder == "mmdebstrap":
        _check_debian(recipe)
    return recipe


def _check_common(recipe: dict) -> None:
    """Fields every builder reads."""
    _want_str(recipe, "name", NAME)
    _want_str(recipe, "kernel_package", DEB_NAME)
    _want_str(recipe, "cmdline")
    if "root=/dev/vda" not in recipe["cmdline"].split():
        raise RecipeError("cmdline: must boot root=/dev/vda (the desktop's own disk)")
    _want_list(recipe, "packages", DEB_NAME)
    _want_list(recipe, "initramfs_modules", re.compile(r"[a-z0-9_]+"))
    _want_int(recipe, "disk_mib", 16, 65536)
    _want_int(recipe, "memory_mib", 128, 65536)
    _want_int(recipe, "vcpus", 1, 64)
    if recipe.get("readiness") not in READINESS:
        raise RecipeError(f"readiness: must be one of {', '.join(READINESS)}")


def _check_debian(recipe: dict) -> None:
    """Fields of the mmdebstrap builder: suite, APT sources and the keyboard layout."""
    _want_str(recipe, "suite", re.compile(r"[a-z]+"))
    _want_list(recipe, "sources", re.compile(r"deb https?://\S+ [a-z-]+( [a-z-]+)+"))
    keyboard = recipe.setdefault("keyboard", {"model": "pc105", "layout": "us", "variant": "", "options": ""})
    if not isinstance(keyboard, dict) or set(keyboard) != set(KEYBOARD_FIELDS):
        raise RecipeError(f"keyboard: must be an object with exactly {', '.join(KEYBOARD_FIELDS)}")
    for key in KEYBOARD_FIELDS:
        if not isinstance(keyboard[key], str) or not XKB_VALUE.fullmatch(keyboard[key]):
            raise RecipeError(f"keyboard.{key}: must be an XKB name (letters, digits, _,:()+-)")
    if not keyboard["layout"]:
        raise RecipeError("keyboard.layout: must not be empty (e.g. us)")


def _want_str(recipe: dict, field: str, pattern: re.Pattern[str] | None = None) -> None:
    value = recipe.get(field)
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{field}: must be a non-empty string")
    if pattern is not None and not pattern.fullmatch(value):
        raise RecipeError(f"{field}: {value!r} does not match {pattern.pattern}")


def _want_list(recipe: dict, field: str, pattern: re.Pattern[str]) -> None:
    value = recipe.get(field)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{field}: must be a list of strings")
    for item in value:
        if not pattern.fullmatch(item):
            raise RecipeError(f"{field}: {item!r} does not match {pattern.pattern}")


def _want_int(recipe: dict, field: str, low: int, high: int) -> None:
    value = recipe.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecipeError(f"{field}: must be an integer from {low} to {high}")


# --- the mmdebstrap builder -----------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
GUEST_FILES = {  # repo path -> path in the image, mode
    "images/guest-agent/shiftdesk-guest-agent": ("usr/local/lib/shiftdesk/shiftdesk-guest-agent", 0o755),
    "controlplane/domain/guest_channel.py": ("usr/local/lib/shiftdesk/shiftdesk_channel.py", 0o644),
}
AGENT_UID = 1000  # fixed: units name /run/user/1000, fapolicyd's rules restrict uid 1000
# Never trusted for the desktop user: each would run any script handed to it, allowed or not.
INTERPRETERS = ("python3*", "perl*", "lua*", "tclsh*", "wish*", "gdb*")
ENABLE = {  # unit -> target whose .wants/ pulls it in (the unit is ours in /etc or Debian's in /lib)
    "shiftdesk-session.service": "graphical.target",
    "shiftdesk-page.path": "graphical.target",
    "shiftdesk-guest-agent.service": "multi-user.target",
    # The app allowlist: fapolicyd enforces it, apply-apps sets it from the host's signed list;
    # the session's state lives on a noexec tmpfs (fapolicyd does not watch /run itself).
    "fapolicyd.service": "multi-user.target",
    "shiftdesk-apps.service": "multi-user.target",
    "run-shiftdesk-session.mount": "local-fs.target",
    # The NIC: IPv4 by DHCP from the host (/etc/systemd/network), names by the DNS server it gives.
    "systemd-networkd.service": "multi-user.target",
    "systemd-networkd.socket": "sockets.target",
    "systemd-resolved.service": "sysinit.target",
}
UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system")
# No way to a login prompt or a shell: no gettys at all (the session owns tty1), no debug or
# rescue shells, Ctrl+Alt+Del does nothing. Timers that would wake every idle desktop are off.
# Nothing waits for the network: a clone's NIC is plugged in after its restore, or not at all.
MASK = (
    "getty@.service", "autovt@.service", "serial-getty@.service", "console-getty.service",
    "container-getty@.service", "debug-shell.service", "rescue.service", "emergency.service",
    "ctrl-alt-del.target", "systemd-firstboot.service", "systemd-networkd-wait-online.service",
    "systemd-networkd-wait-online@.service", "apt-daily.timer", "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
)
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/info/*", "/usr/share/doc/*", "/usr/share/lintian/*",
                 "/usr/share/locale/*")
# initramfs-tools would build an initrd we never use (we build our own, reproducibly): give it a
# no-op update-initramfs while packages install, and the real one back afterwards.
NO_INITRAMFS = ('chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.real '
                '--add /usr/sbin/update-initramfs && printf "#!/bin/sh\\nexit 0\\n" > "$1/usr/sbin/update-initramfs"'
                ' && chmod 755 "$1/usr/sbin/update-initramfs"')
INITRAMFS_BACK = ('rm -f "$1/usr/sbin/update-initramfs" && chroot "$1" dpkg-divert --quiet --local --rename '
                  '--remove /usr/sbin/update-initramfs')


def mmdebstrap_command(recipe: dict, root: Path, cache: Path) -> list[str]:
    """The mmdebstrap call: Debian's packages only, and .debs kept in CACHE between builds.

    mmdebstrap's own sync-in/sync-out hooks fill apt's archive directory from CACHE before it
    downloads and copy it back before it cleans up, so a second build downloads nothing."""
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--quiet",
           "--skip=download/empty", "--skip=essential/unlink",
           "--include=" + ",".join([recipe["kernel_package"], *recipe["packages"]])]
    cmd += [f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES]
    cmd += ["--dpkgopt=path-include=/usr/share/doc/*/copyright"]
    # no fsync per unpacked file: the tree is thrown away once mkfs has copied it, so durability buys
    # nothing; the agent desktop's build went from 129 s to 112 s on the CI machine (two builds with
    # it give the same bytes, which differ from a build without it)
    cmd += ["--dpkgopt=force-unsafe-io"]
    cmd += ["--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
            f"--setup-hook=sync-in {cache} /var/cache/apt/archives/",
            f"--essential-hook={NO_INITRAMFS}",
            f"--customize-hook={INITRAMFS_BACK}",
            f"--customize-hook=sync-out /var/cache/apt/archives {cache}"]
    return [*cmd, recipe["suite"], str(root), *recipe["sources"]]


def build_debian(recipe_dir: Path, recipe: dict, out_dir: Path, cache: Path) -> dict[str, str]:
    """A real Debian desktop: mmdebstrap, our overlay and settings, then the same disk,
    initramfs and kernel layout as the busybox image. Returns every installed package's version."""
    cache.mkdir(parents=True, exist_ok=True)
    busybox = fetch_deb("busybox-static", cache)  # for the initramfs only, as in the busybox image
    with work_dir(Path("/var/tmp")) as work:
        root = work / "rootfs"
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
        subprocess.run(mmdebstrap_command(recipe, root, cache), check=True, env=env)
        customize(root, recipe_dir, recipe)
        scrub(root)
        pin_times(root)
        rebuild_font_cache(root)
        packages = installed_packages(root)
        shutil.copyfile(sorted(root.glob("boot/vmlinuz-*"))[-1], out_dir / "vmlinuz")
        extract(busybox, work / "busybox")
        build_initramfs(work, root / "usr", work / "busybox", recipe_dir,
                        recipe["initramfs_modules"], out_dir / "initrd.img")
        pin_times(root)  # again: every read since the first pin moved some access time
        make_disk(work, root, recipe, out_dir / "disk.qcow2", [])
    return packages


def customize(root: Path, recipe_dir: Path, recipe: dict) -> None:
    """Everything that makes plain Debian the agent desktop, in the order it depends on."""
    copy_overlay(recipe_dir / "rootfs", root)
    install_guest_agent(root)
    write_settings(root, recipe)
    add_users(root)
    write_app_trust(root)
    set_units(root)
    (root / "etc/machine-id").write_text("")
    chown_to(root, "etc/machine-id", "shiftdesk-agent")


def copy_overlay(overlay: Path, root: Path) -> None:
    """The recipe's rootfs/ tree, root-owned, 0755 for executables and 0644 for the rest
    (git keeps only the x bit, so modes are decided here, not by the checkout)."""
    for src in sorted(overlay.rglob("*")):
        dst = root / src.relative_to(overlay)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            dst.chmod(0o755)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if os.access(src, os.X_OK) else 0o644)


def install_guest_agent(root: Path) -> None:
    """The lead's in-guest agent and the wire-protocol module it imports, from this repo."""
    for src, (dst, mode) in GUEST_FILES.items():
        target = root / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / src, target)
        target.chmod(mode)


def write_settings(root: Path, recipe: dict) -> None:
    """Host name, resolver, mounts, keyboard layout (console and X), Firefox's policy path,
    no-downloads."""
    (root / "etc/hostname").write_text("shiftdesk\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tshiftdesk\n::1\tlocalhost ip6-localhost\n")
    # systemd-resolved's stub (the name Debian's package links); no copy of the build host's.
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    (root / "etc/fstab").write_text("/dev/vda\t/\text4\trw,relatime\t0\t0\n")
    kb = recipe["keyboard"]
    (root / "etc/default/keyboard").write_text(
        "".join(f'XKB{k.upper()}="{kb[k]}"\n' for k in ("model", "layout", "variant", "options"))
        + 'BACKSPACE="guess"\n')
    (root / "etc/X11/xorg.conf.d/00-keyboard.conf").write_text(xorg_keyboard(kb))
    dist = root / "usr/share/firefox-esr/distribution/policies.json"
    dist.unlink(missing_ok=True)
    dist.symlink_to("/etc/firefox-esr/policies/policies.json")
    nodl = root / "usr/share/shiftdesk/no-downloads"
    nodl.mkdir(parents=True, exist_ok=True)
    nodl.chmod(0o555)


def xorg_keyboard(kb: dict) -> str:
    """X's keyboard layout from the recipe: QEMU sends scancodes, the guest's layout maps them."""
    lines = ['Section "InputClass"', '    Identifier "shiftdesk-keyboard"', '    MatchIsKeyboard "on"']
    for key in ("model", "layout", "variant", "options"):
        if kb[key]:
            lines.append(f'    Option "Xkb{key.capitalize()}" "{kb[key]}"')
    return "\n".join([*lines, "EndSection"]) + "\n"


# The apps a desktop of a Debian image may run before the host's first allowlist replaces them:
# the session's browser only. The manifest says so, so the control plane knows a fresh desktop
# enforces no more than this (and may hand it out while a wider list is still being applied).
FIRST_APPS = ("firefox-esr",)


def write_app_trust(root: Path) -> None:
    """fapolicyd's trust for the desktop user (its rules let uid 1000 execute trusted files
    only): every executable of the image except the catalogue's apps and the script interpreters
    a user could hand a program to, in trust.d/shiftdesk-base.trust; of the apps, only
    FIRST_APPS (shiftdesk-apps.trust, until the host's first allowlist replaces it). The package's
    own trust and rules files go: these and the recipe's compiled.rules decide. The catalogue's
    directory entries are expanded here, and an app without an executable fails the build."""
    catalogue_file = root / "usr/share/shiftdesk/apps.json"
    catalogue = json.loads(catalogue_file.read_text())
    for app, entry in catalogue.items():
        if app.startswith("_"):
            continue
        entry["executables"] = sorted(image_path(root, p) for e in entry["executables"] for p in executables(root, e))
        if not entry["executables"]:
            raise SystemExit(f"build: app {app} has no executable in the image")
        entry["trust"] = trust_lines(root, entry["executables"]).splitlines()  # apply-apps hashes nothing
    catalogue_file.write_text(json.dumps(catalogue, indent=2, sort_keys=True) + "\n")
    apps = {p for app, entry in catalogue.items() if not app.startswith("_") for p in entry["executables"]}
    interpreters = {image_path(root, p) for pattern in INTERPRETERS for p in (root / "usr/bin").glob(pattern)}
    base = {image_path(root, p) for p in executables(root, "/usr/")} - apps - interpreters
    folder = root / "etc/fapolicyd/trust.d"
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    for old in folder.glob("*"):
        old.unlink()
    (root / "etc/fapolicyd/fapolicyd.trust").write_text("")
    (root / "etc/fapolicyd/rules.d/90-deny-execute.rules").unlink(missing_ok=True)
    (folder / "shiftdesk-base.trust").write_text(trust_lines(root, sorted(base)))
    (folder / "shiftdesk-apps.trust").write_text("".join(f"{line}\n" for app in FIRST_APPS
                                                         for line in catalogue[app]["trust"]))


def trust_lines(root: Path, paths: list[str]) -> str:
    """fapolicyd's file-trust format: path, size, sha256 (paths with white space cannot be said)."""
    lines = []
    for path in paths:
        if any(c.isspace() for c in path):
            continue
        data = (root / path.lstrip("/")).read_bytes()
        lines.append(f"{path} {len(data)} {hashlib.sha256(data).hexdigest()}\n")
    return "".join(lines)


def image_path(root: Path, path: Path) -> str:
    return "/" + str(path.relative_to(root))


def executables(root: Path, entry: str) -> list[Path]:
    """ENTRY (an image path; a directory when it ends in /) as the regular executable files it names."""
    path = root / entry.strip("/")
    candidates = sorted(path.rglob("*")) if entry.endswith("/") else [path]
    return [p for p in candidates if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o111]


def add_users(root: Path) -> None:
    """`agent` (the session, uid 1000) and `shiftdesk-agent` (the guest agent, system user):
    neither has a password or a shell. root keeps no password and gets no shell either."""
    nologin = "/usr/sbin/nologin"
    chroot(root, "useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
           "/var/lib/shiftdesk-agent", "--shell", nologin, "shiftdesk-agent")
    chroot(root, "useradd", "--uid", str(AGENT_UID), "--user-group", "--create-home", "--shell", nologin, "agent")
    (root / "home/agent").chmod(0o700)
    chroot(root, "usermod", "--lock", "--shell", nologin, "root")


def chroot(root: Path, *cmd: str) -> None:
    run("chroot", str(root), *cmd, env=dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH)))


def chown_to(root: Path, rel: str, user: str) -> None:
    """chown by the image's own passwd (the host's ids mean nothing in the guest)."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            os.chown(root / rel, int(fields[2]), int(fields[3]))
            return
    raise SystemExit(f"build: no user {user} in the image")


def set_units(root: Path) -> None:
    """Enable and mask units with the symlinks systemctl would make (no systemd on the host)."""
    etc = root / "etc/systemd/system"
    (etc / "getty.target.wants/getty@tty1.service").unlink(missing_ok=True)
    for unit, target in ENABLE.items():
        wants = etc / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit).unlink(missing_ok=True)
        (wants / unit).symlink_to(unit_path(root, unit))
    for unit in MASK:
        (etc / unit).unlink(missing_ok=True)
        (etc / unit).symlink_to("/dev/null")
    (etc / "default.target").unlink(missing_ok=True)
    (etc / "default.target").symlink_to("/lib/systemd/system/graphical.target")


def unit_path(root: Path, unit: str) -> str:
    """Where the image keeps UNIT: ours in /etc/systemd/system, else Debian's in /lib."""
    for folder in UNIT_DIRS:
        if (root / folder / unit).is_file():
            return f"/{folder}/{unit}"
    raise SystemExit(f"build: no unit {unit} in the image (ENABLE names it)")


def scrub(root: Path) -> None:
    """Remove what differs from build to build and nobody needs: logs, backups of files we
    changed (and systemd-resolved's backup of the build host's resolv.conf), caches that record
    build-time state, and the day of the build in /etc/shadow."""
    for path in sorted((root / "var/log").rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != "README":
            path.write_bytes(b"")
    for pattern in ("etc/*-", "etc/.resolv.conf.*.bak", "var/lib/dpkg/*-old", "var/cache/debconf/*-old",
                    "var/cache/ldconfig/aux-cache"):
        for path in root.glob(pattern):
            path.unlink()
    for path in root.glob("var/cache/fontconfig/*"):
        path.unlink()
    shadow = root / "etc/shadow"
    shadow.write_text(pin_shadow_dates(shadow.read_text()))


def pin_shadow_dates(text: str) -> str:
    """/etc/shadow's third field is the day each password last changed: the day of the build."""
    out = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2]:
            fields[2] = str(EPOCH // 86400)
        out.append(":".join(fields))
    return "\n".join(out) + "\n"


def rebuild_font_cache(root: Path) -> None:
    """fontconfig's caches record directory mtimes, so they are made after pin_times (then
    they are valid in the guest and nothing rescans fonts at boot), and pinned themselves."""
    chroot(root, "fc-cache", "--system-only", "--really-force")
    pin_times(root / "var/cache/fontconfig")


def installed_packages(root: Path) -> dict[str, str]:
    """Every installed package and its version, from the image's own dpkg database."""
    fmt = "${Package}\\t${Version}\\t${db:Status-Abbrev}\\n"
    out = run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", fmt)
    packages = {}
    for line in out.splitlines():
        name, version, status = line.split("\t")
        if status.startswith("ii"):
            packages[name] = version
    return dict(sorted(packages.items()))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(recipe_dir: Path, out_dir: Path, cache: Path) -> dict:
    """Build RECIPE_DIR into OUT_DIR with the builder its recipe names; write the manifest."""
    recipe = load_recipe(recipe_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if recipe["builder"] == "mmdebstrap":
        packages = build_debian(recipe_dir, recipe, out_dir, cache.resolve())
    else:
        packages = build_busybox(recipe_dir, recipe, out_dir, cache)
    manifest = {
        "recipe": recipe["name"],
        "cmdline": recipe["cmdline"],
        "packages": packages,
        "sha256": {f: sha256(out_dir / f) for f in ("disk.qcow2", "vmlinuz", "initrd.img")},
        "readiness": recipe["readiness"],
        "memory_mib": recipe["memory_mib"],
        "vcpus": recipe["vcpus"],
        **({"first_apps": list(FIRST_APPS)} if recipe["builder"] == "mmdebstrap" else {}),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def build_busybox(recipe_dir: Path, recipe: dict, out_dir: Path, cache: Path) -> dict[str, str]:
    """Kernel + busybox unpacked from their .debs: the seconds-to-boot image for tests."""
    kpkg = kernel_package(recipe["kernel_package"])
    debs = {name: fetch_deb(name, cache) for name in [kpkg, *recipe["packages"]]}
    out_dir.mkdir(parents=True, exist_ok=True)
    with work_dir() as work:
        kernel_tree, busybox_tree = work / "kernel", work / "busybox"
        extract(debs[kpkg], kernel_tree)
        extract(debs["busybox-static"], busybox_tree)
        vmlinuz = sorted(kernel_tree.glob("boot/vmlinuz-*"))[-1]
        shutil.copyfile(vmlinuz, out_dir / "vmlinuz")
        build_initramfs(work, kernel_tree, busybox_tree, recipe_dir,
                        recipe["initramfs_modules"], out_dir / "initrd.img")
        build_rootfs(work, busybox_tree, recipe_dir, recipe, out_dir / "disk.qcow2")
    return {name: unquote(deb.name.split("_")[1]) for name, deb in debs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path, help="recipe directory (holds recipe.json)")
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--cache", type=Path, default=Path(".cache/debs"), help="where .debs are kept")
    args = parser.parse_args(argv)
    if not (args.recipe / "recipe.json").is_file():
        print(f"build: recipe: {args.recipe} has no recipe.json", file=sys.stderr)
        return 2
    try:
        manifest = build(args.recipe, args.out, args.cache)
    except RecipeError as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
