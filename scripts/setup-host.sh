#!/usr/bin/env bash
# Prepare a Debian 12 host for ShiftDesk: packages, libvirt daemons, an unprivileged confined QEMU.
# Idempotent: run it as often as you like. No systemd needed (CI has none).
set -euo pipefail

APT_PACKAGES=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
  busybox-static cpio e2fsprogs ca-certificates mmdebstrap
  samba samba-ad-dc samba-ad-provision winbind krb5-user ldb-tools
  chromium fonts-dejavu-core
  nftables python3-nftables dnsmasq-base conntrack iproute2 squid-openssl python3
  postgresql
)

log() { printf '[setup-host] %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  # no package may start its own daemon (Debian's squid would listen on every address): ShiftDesk
  # starts what it needs, bound to its own addresses (libvirtd below; dnsmasq, Squid per network)
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi

# npm installs the portal's noVNC (pinned in agents/package-lock.json). Use the machine's Node.js
# when it has one (it may come from another repository than Debian's); else Debian's.
if ! command -v npm >/dev/null; then
  log "installing nodejs and npm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

# QEMU runs as libvirt-qemu, never root, confined by libvirt: its seccomp sandbox, DAC labels
# (dynamic_ownership: libvirt gives QEMU's user each file a domain uses while it runs) and AppArmor
# when the host has it (libvirt picks it up by itself). This block is ours; older versions of
# this script ran QEMU as root, and those lines are removed.
conf=/etc/libvirt/qemu.conf
want=$(sed -e '/^# BEGIN shiftdesk/,/^# END shiftdesk/d' \
           -e '/^# shiftdesk: consistent \/dev\/kvm view/d' -e '/^user = "root"$/d' -e '/^group = "root"$/d' "$conf"
       cat <<'CONF'
# BEGIN shiftdesk (scripts/setup-host.sh manages this block)
user = "libvirt-qemu"
group = "libvirt-qemu"
dynamic_ownership = 1
remember_owner = 1
seccomp_sandbox = 1
security_default_confined = 1
# END shiftdesk
CONF
)
if [ "$want" != "$(cat "$conf")" ]; then
  log "configuring QEMU to run as libvirt-qemu, sandboxed and DAC-labelled, in $conf"
  printf '%s\n' "$want" >"$conf.shiftdesk-new" && chmod 600 "$conf.shiftdesk-new" && mv "$conf.shiftdesk-new" "$conf"
fi
if [ -r /sys/module/apparmor/parameters/enabled ] && [ "$(cat /sys/module/apparmor/parameters/enabled)" = Y ]; then
  log "AppArmor is enabled: libvirt confines each QEMU with its own profile"
else
  log "AppArmor is not available on this host: QEMU is confined by seccomp and DAC labels"
fi

# The half-present /dev/kvm trap (DESIGN.md): when QEMU's user cannot open /dev/kvm (0600 root,
# as a container's devtmpfs leaves it), libvirt re-probes QEMU on every call (30+ s per define).
# Give QEMU's user the access udev gives it on a normal host: 0660 root:kvm, libvirt-qemu in kvm.
# Desktops still use TCG unless a real probe shows KVM runs guests.
getent group kvm >/dev/null || groupadd --system kvm
id -nG libvirt-qemu | tr ' ' '\n' | grep -qx kvm || usermod -a -G kvm libvirt-qemu
if [ -c /dev/kvm ] && [ "$(stat -c '%a %G' /dev/kvm)" != "660 kvm" ]; then
  log "giving the kvm group access to /dev/kvm (0660 root:kvm)"
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

# libvirt must see the new picture: a capabilities cache or a daemon from before it keeps the slow
# path (or root QEMU) alive. The fingerprint says what the running daemon and the cache were made for.
fingerprint="$(sha256sum "$conf" | cut -d' ' -f1) $(stat -c '%a %G' /dev/kvm 2>/dev/null || echo no-kvm)"
marker=/var/cache/libvirt/qemu/.shiftdesk-fixed
if [ "$(cat "$marker" 2>/dev/null)" != "$fingerprint" ]; then
  rm -rf /var/cache/libvirt/qemu/capabilities
  pid=$(cat /run/libvirtd.pid 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "restarting libvirtd to pick up qemu.conf and /dev/kvm (running domains keep running)"
    kill "$pid" || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  elif pgrep -x libvirtd >/dev/null; then
    log "restarting libvirtd to pick up qemu.conf and /dev/kvm (running domains keep running)"
    pkill -x libvirtd || true
    for _ in $(seq 100); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
  fi
  mkdir -p /var/cache/libvirt/qemu && printf '%s\n' "$fingerprint" >"$marker"
fi

pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  log "starting libvirtd"
  libvirtd -d
fi
for _ in $(seq 100); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.1
done
virsh -c qemu:///system version >/dev/null
if virsh -c qemu:///system capabilities | grep -q "<baselabel type='qemu'>+0:"; then
  log "QEMU would run as root: check $conf" >&2
  exit 1
fi
log "libvirt ready on qemu:///system (QEMU as libvirt-qemu)"
