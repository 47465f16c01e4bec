#!/usr/bin/env bash
# Prepare a Debian 12 host for ShiftDesk: packages, libvirt daemons, QEMU user.
# Idempotent: run it as often as you like. No systemd needed (CI has none).
set -euo pipefail

APT_PACKAGES=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
  busybox-static cpio e2fsprogs ca-certificates
  samba samba-ad-dc samba-ad-provision winbind krb5-user ldb-tools
  chromium fonts-dejavu-core
)

log() { printf '[setup-host] %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm installs the portal's noVNC (pinned in agents/package-lock.json). Use the machine's Node.js
# when it has one (it may come from another repository than Debian's); else Debian's.
if ! command -v npm >/dev/null; then
  log "installing nodejs and npm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

# The half-present /dev/kvm trap (DESIGN.md): /dev/kvm is 0600 root, so QEMU running as
# libvirt-qemu cannot open it and libvirt re-probes QEMU on every call (30+ s per define).
# Running QEMU as root makes the picture consistent; desktops use TCG unless KVM is proven.
conf=/etc/libvirt/qemu.conf
if ! grep -q '^user = "root"' "$conf"; then
  log "configuring QEMU to run as root in $conf"
  printf '\n# shiftdesk: consistent /dev/kvm view, see DESIGN.md\nuser = "root"\ngroup = "root"\n' >>"$conf"
  if pgrep -x libvirtd >/dev/null; then
    log "restarting libvirtd to pick up qemu.conf"
    pkill -x libvirtd || true
    for _ in $(seq 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
  fi
fi
# A stale capabilities cache from before the fix keeps the slow path alive.
if [ ! -e /var/cache/libvirt/qemu/.shiftdesk-fixed ]; then
  rm -rf /var/cache/libvirt/qemu/capabilities
  mkdir -p /var/cache/libvirt/qemu && touch /var/cache/libvirt/qemu/.shiftdesk-fixed
fi

pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
if ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd"
  libvirtd -d
fi
for _ in $(seq 100); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.1
done
virsh -c qemu:///system version >/dev/null
log "libvirt ready on qemu:///system"
