"""Ports: what the services need from the outside world, as Protocols the drivers implement.

Each method states its failure contract: what is left behind after an error, and whether
"not found" counts as success. Idempotent methods are what let the reconciler be killed at any
line and simply run again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from controlplane.domain.app_policy import SignedAppPolicy
from controlplane.domain.console import Console, Stream
from controlplane.domain.network import DesktopNetwork, DesktopNic


class Readiness(StrEnum):
    """How a guest says it is ready: a line on its serial port (busybox), or the in-guest agent
    over the host channel once the session shows its browser (agent desktops)."""

    SERIAL = "serial"
    CHANNEL = "channel"


class CloneMode(StrEnum):
    """How a pool makes desktops: restored from a saved template (about a second), or booted."""

    INSTANT = "instant"
    COLD = "cold"


@dataclass(frozen=True)
class BootImage:
    """What a desktop boots from: a golden qcow2 disk plus a kernel for direct kernel boot."""

    disk: Path
    kernel: Path
    initrd: Path | None
    cmdline: str
    image_id: int = 0
    readiness: Readiness = Readiness.SERIAL
    first_apps: frozenset[str] | None = None  # the apps it may run before the host's first list (None: unknown)


@dataclass(frozen=True)
class TemplateKey:
    """One instant-clone template per host, image version and machine shape (a restore must
    recreate the machine the memory was saved from, so memory and vCPUs are part of the key)."""

    image_id: int
    memory_mib: int
    vcpus: int
    shared: bool = True  # clones' memory may be merged by the host's KSM (see Pool.memory_sharing)

    @property
    def slug(self) -> str:
        return f"i{self.image_id}-m{self.memory_mib}-c{self.vcpus}" + ("" if self.shared else "-private")

    @classmethod
    def parse(cls, slug: str) -> TemplateKey | None:
        parts = slug.split("-")
        shared = parts[3:] != ["private"]
        if len(parts) not in (3, 4) or (len(parts) == 4 and shared):
            return None
        try:
            i, m, c = parts[:3]
            if (i[0], m[0], c[0]) != ("i", "m", "c"):
                return None
            return cls(int(i[1:]), int(m[1:]), int(c[1:]), shared)
        except (ValueError, IndexError):
            return None


@dataclass(frozen=True)
class ObservedTemplate:
    """A template as the host has it: booting (running, maybe ready) or saved (a finished file)."""

    key: TemplateKey
    defined: bool
    running: bool
    ready: bool
    saved: bool
    created: int = 0  # Unix time the template domain was defined (0: unknown)
    quarantined: str | None = None
    # Retired: its memory could not be restored, so it clones no more; its disk stays while any
    # desktop's disk is still backed by it (BACKS_DESKTOPS), and only then may it go and be rebuilt.
    retired: bool = False
    backs_desktops: bool = False


@dataclass(frozen=True)
class DesktopSpec:
    """Everything the hypervisor needs to create one desktop. No free text from users."""

    name: str
    pool: str
    desktop_id: int
    image: BootImage
    memory_mib: int = 256
    vcpus: int = 1
    generation: int = 1  # bumped by a rebuild: a domain of an older generation is recreated
    join_secret: str | None = field(default=None, repr=False)  # one-time AD join secret, first boot only
    template: TemplateKey | None = None  # restore from this saved template instead of booting
    share_memory: bool = True  # False: the host never merges this desktop's pages with another's (KSM)
    nic: DesktopNic | None = None  # its one NIC on the host's desktop network (None: no network)


@dataclass(frozen=True)
class ObservedDomain:
    """A ShiftDesk-tagged domain as libvirt reports it."""

    name: str
    pool: str
    desktop_id: int
    running: bool
    ready: bool
    generation: int = 1
    cloned: bool = False  # restored from a template: ready means its new identity is confirmed
    quarantined: str | None = None  # the host stopped trusting what this guest says, and why


@dataclass(frozen=True)
class HostCapacity:
    """What one host has for desktops, as its hypervisor reports it now."""

    vcpus: int
    memory_mib: int
    disk_bytes: int  # the desktops' storage pool: its size, and its free blocks (libvirt counts root's reserve)
    disk_free_bytes: int


@dataclass(frozen=True)
class HostObservation:
    """Everything a reconcile pass needs of one host, from one look at its domains: a pass that
    asked for desktops and templates separately would read every domain's metadata twice."""

    desktops: Mapping[str, ObservedDomain]
    templates: Mapping[TemplateKey, ObservedTemplate]
    overlays: frozenset[str]
    capacity: HostCapacity
    images: frozenset[str] | None = None  # sha256 of the golden images in its image store (None: not known)


@dataclass(frozen=True)
class AppDenial:
    """A guest's enforcer refused to run PATH, COUNT times, since the last report."""

    desktop: str
    path: str
    count: int


class Hypervisor(Protocol):
    def observe(self) -> HostObservation:
        """Desktops, templates, overlays and capacity at once (TemporaryError if unreachable)."""

    def list_desktops(self) -> dict[str, ObservedDomain]:
        """Domains tagged as this installation's desktops, by name. Untagged ones are never seen."""

    def list_overlays(self) -> set[str]:
        """Names of the desktops whose overlay volume exists in our storage pool."""

    def create_overlay(self, spec: DesktopSpec) -> Path:
        """Create the desktop's qcow2 overlay backed by the golden disk; return its path.

        Idempotent: an existing overlay with this name is kept and its path returned.
        On error no partial volume is left behind. Raises TemporaryError on libvirt hiccups.
        """

    def define(self, spec: DesktopSpec) -> None:
        """Define (or redefine) the domain. Idempotent. Leaves nothing running.

        A `spec.join_secret` is handed to the guest at boot through fw_cfg from a root-only file
        (never the command line, never a log) until `discard_join_secret`."""

    def start(self, name: str) -> None:
        """Start the domain. Already running is success. Missing raises PermanentError."""

    def discard_join_secret(self, name: str) -> None:
        """Remove the join secret from the host once the guest has it. Missing is success."""

    def is_ready(self, name: str) -> bool:
        """True once the guest has signalled readiness since its last start. Missing: False."""

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ON_CHANGE, from any thread, when a guest tells the host something that may change
        `is_ready` (it says ready, applies an allowlist, is quarantined), so that the reconciler
        looks again now rather than at its next pass. A driver that only learns readiness when
        asked never calls it. One watcher; a second replaces the first."""

    def reboot(self, name: str) -> None:
        """Hard reset (destroy + start): the guest must signal ready again. Missing: PermanentError."""

    def destroy(self, name: str) -> None:
        """Power off at once. Missing or already off is success."""

    def undefine(self, name: str) -> None:
        """Remove the domain definition (destroying it first). Missing is success."""

    def delete_overlay(self, name: str) -> None:
        """Delete the desktop's overlay volume. Missing is success."""

    def screenshot(self, name: str) -> bytes:
        """A PNG of the running desktop's screen now, scaled down (the console's view). PermanentError
        if it is not running."""

    def vnc_socket(self, name: str) -> Path:
        """The Unix socket of the desktop's VNC server (reachable by root only)."""

    def console(self, name: str) -> Console:
        """Where the gateway reaches the desktop's VNC server: its socket when this host is the
        gateway's own, else the console relay of the host it runs on (never plain VNC over a
        network)."""

    def running_socket(self, name: str, stream: Stream) -> Path:
        """On the desktop's own host (the console relay's question): the socket of NAME's STREAM
        (its VNC server or its host channel), read from its running definition. PermanentError
        unless NAME is a running desktop of this installation and has that socket."""

    def capacity(self) -> HostCapacity:
        """This host's CPUs, memory and desktop storage (TemporaryError if it cannot be reached)."""
        ...

    def selftest(self) -> float:
        """Define and undefine a dummy domain; return the milliseconds it took."""

    def show_page(self, name: str, url: str) -> bool:
        """Ask the desktop's in-guest agent to show URL in its browser. Best effort: False when the
        desktop has no host channel or its agent is not connected (nothing else changes)."""

    def deliver_apps(self, name: str, signed: SignedAppPolicy) -> bool:
        """Send SIGNED, the desktop's app allowlist, to its in-guest agent (a no-op if it was the
        last sent on the current connection). False while the agent is not connected and
        confirmed; the guest's answer shows in `ObservedDomain` (ready only once applied) or
        quarantines it (refused, or not applied in time)."""

    def app_denials(self) -> list[AppDenial]:
        """Executions the desktops' enforcers denied since the last call (drained)."""

    # --- instant clones -----------------------------------------------------------------------

    def list_templates(self) -> dict[TemplateKey, ObservedTemplate]:
        """This installation's templates on this host, booting or saved."""

    def template(self, key: TemplateKey) -> ObservedTemplate | None:
        """KEY's template alone (what `list_templates` says of it), or None: for a step that needs
        one template, without looking at every domain of the host. A retired one is said to back
        desktops (asking would cost a call per volume; a step needs only to know it is retired)."""

    def build_template(self, key: TemplateKey, image: BootImage) -> None:
        """Define and start KEY's template domain (cold boot). Idempotent; running is success."""

    def save_template(self, key: TemplateKey) -> None:
        """Save the ready template's memory to its file, then undefine the domain, so nothing can
        ever boot it again and write to the disk its clones are backed by. Idempotent: a saved
        template whose domain is still defined is only undefined. Never leaves a partial file
        where a finished one is expected."""

    def remove_template(self, key: TemplateKey) -> None:
        """Domain, save file and disk of KEY's template, whatever of them exists. Missing: success.
        Only for a template no desktop's disk is backed by: a template of the same key built
        again later would put other bytes under their overlays."""

    def retire_template(self, key: TemplateKey) -> None:
        """KEY's template clones no more (its save file goes; `saved` is False and `retired` True
        from now on) but keeps its disk, which clones made from it are backed by. Idempotent."""

    def restore_clone(self, spec: DesktopSpec) -> Path:
        """Create SPEC's desktop from its saved template (`spec.template`) and return its overlay's
        path: an overlay on the
        template's disk and a restore under the desktop's own name, UUID, disk and sockets. On
        error nothing of the attempt is left running or defined (the overlay stays, like after a
        failed cold start). Raises PermanentError when the template cannot be used."""


class HostNetwork(Protocol):
    """The host's isolated desktop network: which desktops it admits (their port, MAC and
    address), and nothing more."""

    network: DesktopNetwork

    def sync(self, nics: Collection[DesktopNic]) -> None:
        """Admit exactly NICS: bridge, firewall and DHCP are made so whatever was found; ports of
        desktops not in NICS are refused from now on. Idempotent; cheap when nothing changed.
        Raises TemporaryError when a host tool fails (the next pass tries again)."""

    def admit(self, nic: DesktopNic) -> None:
        """Admit one more desktop (before its NIC comes up). Idempotent."""


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC time."""


class ImageBuilder(Protocol):
    def build(self, recipe: str, out_dir: Path) -> dict:
        """Build RECIPE into OUT_DIR (disk.qcow2, vmlinuz, initrd.img, manifest.json).

        Returns the manifest. On error OUT_DIR may hold partial files; the caller discards it.
        Raises ExpectedError for an unknown recipe, PermanentError when the build fails.
        """


@dataclass(frozen=True)
class Identity:
    """Who a directory says a user is: account name, DN and every group, nested ones included."""

    username: str
    dn: str
    display_name: str
    groups: frozenset[str]  # canonical full DNs and SIDs (domain/groups.py), never cn
    enabled: bool = True  # False when the account is disabled or locked out


class Directory(Protocol):
    manages_computers: bool  # False when no computers OU is configured: desktops get no AD account

    def authenticate(self, username: str, password: str) -> Identity:
        """Bind as the user. Raises AuthFailed (wrong password, unknown, disabled, locked, blank
        password) or TemporaryError (directory unreachable). Never binds with a blank password."""

    def lookup(self, username: str) -> Identity | None:
        """The user's identity via the service account (no password), or None if unknown."""

    def set_computer(self, desktop: str) -> str:
        """Create or reset the computer account of DESKTOP; return a new one-time join secret."""

    def delete_computer(self, desktop: str) -> None:
        """Delete the computer account of DESKTOP. Missing is success."""

    def list_computers(self) -> set[str]:
        """Desktop names of this installation's computer accounts."""


class DirectoryAdmin(Protocol):
    """Writes a directory's content: used for the demo domain of `make run`, never a customer's AD.
    Every step is idempotent (an existing entry is kept; a user's password is set again)."""

    base_dn: str
    url: str  # ldaps:// where the directory serves
    ca_file: str  # the CA that validates its certificate

    def ensure_ou(self, name: str, parent: str | None = None) -> str:
        """The OU's DN (under PARENT, or the base DN)."""

    def ensure_user(self, ou: str, name: str, password: str, *, display: str) -> str:
        """An enabled user with this password; its DN."""

    def ensure_group(self, ou: str, name: str, members: list[str]) -> str:
        """A global security group holding at least MEMBERS (DNs); its DN."""

    def delegate_computers(self, account_dn: str) -> None:
        """Let ACCOUNT_DN create and delete computer accounts (desktops joining the domain)."""

    def close(self) -> None:
        """Release the connection."""
