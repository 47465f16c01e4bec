#!/usr/bin/env python3
"""Build a golden image from a recipe, using only Debian packages.

    python3 images/build.py images/recipes/busybox-desktop OUT_DIR [--cache DIR]

Output in OUT_DIR: disk.qcow2 (the root disk desktops clone), vmlinuz and initrd.img (direct
kernel boot), manifest.json (recipe, package versions, sha256 of every artifact).

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
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import unquote

EPOCH = 1_700_000_000  # pinned mtime for every file: reproducible bytes
NAMESPACE = uuid.UUID("6f1c1f0e-5d1a-4a8e-9a57-5d35c1e0c0de")


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
    (root / "etc/os-release").write_text(f"NAME=ShiftDesk\nID=shiftdesk\nVARIANT={recipe['name']}\n")
    pin_times(root)
    raw = work / "disk.raw"
    fs_uuid = str(uuid.uuid5(NAMESPACE, recipe["name"]))
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(EPOCH), SOURCE_DATE_EPOCH=str(EPOCH))
    run("mkfs.ext4", "-q", "-F", "-d", str(root), "-U", fs_uuid, "-L", "shiftdesk",
        "-E", f"hash_seed={fs_uuid},root_owner=0:0", "-N", "1024", "-b", "4096",
        str(raw), f"{int(recipe['disk_mib'])}M", env=env)
    pin_inode_ctimes(root, raw)
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out))


def pin_inode_ctimes(root: Path, raw: Path) -> None:
    """mkfs.ext4 -d copies each file's ctime, which utime() cannot set: pin it with debugfs."""
    paths = ["/"] + sorted("/" + str(p.relative_to(root)) for p in root.rglob("*"))
    script = "".join(f"set_inode_field {p} ctime @{EPOCH}\n" for p in paths)
    cmds = raw.with_suffix(".debugfs")
    cmds.write_text(script)
    run("debugfs", "-w", "-f", str(cmds), str(raw), env=dict(os.environ, E2FSPROGS_FAKE_TIME=str(EPOCH)))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(recipe_dir: Path, out_dir: Path, cache: Path) -> dict:
    recipe = json.loads((recipe_dir / "recipe.json").read_text())
    kpkg = kernel_package(recipe["kernel_package"])
    debs = {name: fetch_deb(name, cache) for name in [kpkg, *recipe["packages"]]}
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shiftdesk-build-") as tmp:
        work = Path(tmp)
        kernel_tree, busybox_tree = work / "kernel", work / "busybox"
        extract(debs[kpkg], kernel_tree)
        extract(debs["busybox-static"], busybox_tree)
        vmlinuz = sorted(kernel_tree.glob("boot/vmlinuz-*"))[-1]
        shutil.copyfile(vmlinuz, out_dir / "vmlinuz")
        build_initramfs(work, kernel_tree, busybox_tree, recipe_dir,
                        recipe["initramfs_modules"], out_dir / "initrd.img")
        build_rootfs(work, busybox_tree, recipe_dir, recipe, out_dir / "disk.qcow2")
    manifest = {
        "recipe": recipe["name"],
        "cmdline": recipe["cmdline"],
        "packages": {name: unquote(deb.name.split("_")[1]) for name, deb in debs.items()},
        "sha256": {f: sha256(out_dir / f) for f in ("disk.qcow2", "vmlinuz", "initrd.img")},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path, help="recipe directory (holds recipe.json)")
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--cache", type=Path, default=Path(".cache/debs"), help="where .debs are kept")
    args = parser.parse_args(argv)
    if not (args.recipe / "recipe.json").is_file():
        print(f"build: recipe: {args.recipe} has no recipe.json", file=sys.stderr)
        return 2
    manifest = build(args.recipe, args.out, args.cache)
    print(json.dumps(manifest, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
