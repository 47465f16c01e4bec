"""Does KVM really run guests here? Ask a real guest, not /dev/kvm's existence.

On nested hosts /dev/kvm exists but the first guest instruction that needs emulation hangs or
faults. The probe boots the golden kernel under `-accel kvm` for a few seconds and looks for
the kernel's first console line. Anything else (no device, no output, an error) means TCG.
The answer is cached per kernel in RUN_DIR, so only the first start of a host pays for it.
Like libvirt's, the probe's QEMU is not root: it starts as QEMU's user (so /dev/kvm is tried
with that user's rights, as libvirt will) under QEMU's seccomp sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
from pathlib import Path

QEMU = "qemu-system-x86_64"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def kvm_boots(kernel: Path, timeout: float = 5.0, runas: str | None = None) -> bool:
    """Does KERNEL print its banner under KVM within TIMEOUT, run as user RUNAS (if given)?"""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cmd = [QEMU, "-accel", "kvm", "-m", "128", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
           "-serial", "stdio", "-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults",
           "-sandbox", SANDBOX]
    as_user: dict = {}
    if runas:
        user = pwd.getpwnam(runas)
        as_user = {"user": user.pw_uid, "group": user.pw_gid,
                   "extra_groups": os.getgrouplist(runas, user.pw_gid)}
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False, **as_user)
        output = done.stdout
    except subprocess.TimeoutExpired as err:
        output = err.stdout or b""
    except OSError:
        return False
    return b"Linux version" in output


def cached_domain_type(kernel: Path, cache_dir: Path, runas: str | None = None) -> str:
    """'kvm' when a probe of KERNEL booted under KVM (as user RUNAS), else 'qemu'. Cached by the
    kernel's sha256 and the user."""
    key = f"{hashlib.sha256(kernel.read_bytes()).hexdigest()} as {runas or 'root'}"
    cache = cache_dir / "kvm-probe.json"
    try:
        known = json.loads(cache.read_text())
    except (FileNotFoundError, ValueError):
        known = {}
    if key not in known:
        known[key] = "kvm" if kvm_boots(kernel, runas=runas) else "qemu"
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known))
    return str(known[key])
