"""An in-memory Hypervisor with named failure scenarios, for tests and demos without libvirt.

Scenarios are constructor switches, never class-level state:
- boot_passes: how many readiness checks a started domain needs before it reports ready;
- never_ready: names whose guest never signals ready (boot timeout paths);
- fail_start / fail_overlay: names whose start / overlay creation raise PermanentError;
- flaky: how many calls raise TemporaryError before calls succeed (hiccup paths);
- fail_restore: restores from a template raise PermanentError (the cold-boot fallback path);
- broken_images: image ids whose desktops fail to start or restore (a bad image version);
- silent_clones: restored clones never confirm their identity (the identity-timeout path);
- quarantined: desktop name -> why the host stopped trusting its guest.
Templates boot like desktops (boot_passes), save at once, and restored clones are ready at once.
The instance outlives a simulated crash of the reconciler, like libvirtd outlives ours.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from controlplane.domain.app_policy import SignedAppPolicy
from controlplane.domain.console import Console, LocalConsole, RemoteConsole, Stream
from controlplane.domain.network import DesktopNetwork, DesktopNic
from controlplane.domain.ports import (
    AppDenial,
    BootImage,
    DesktopSpec,
    HostCapacity,
    HostObservation,
    Identity,
    ObservedDomain,
    ObservedTemplate,
    TemplateKey,
)
from controlplane.errors import AuthFailed, HostAgentUnreachable, PermanentError, TemporaryError


@dataclass
class FakeDomain:
    spec: DesktopSpec
    running: bool = False
    checks: int = 0
    cloned: bool = False


class FakeHypervisor:
    def __init__(self, *, boot_passes: int = 0, never_ready: frozenset[str] = frozenset(),
                 fail_start: frozenset[str] = frozenset(), fail_overlay: frozenset[str] = frozenset(),
                 flaky: int = 0, root: Path = Path("/fake"), fail_restore: bool = False,
                 broken_images: frozenset[int] = frozenset()) -> None:
        self.boot_passes = boot_passes
        self.never_ready = never_ready
        self.fail_start = fail_start
        self.fail_overlay = fail_overlay
        self.flaky = flaky
        self.root = root
        self.domains: dict[str, FakeDomain] = {}
        self.overlays: dict[str, Path] = {}
        self.calls: list[tuple[str, str]] = []
        self.join_secrets: dict[str, str] = {}
        self.fail_restore = fail_restore
        self.broken_images = broken_images
        self.silent_clones = False
        self.pages: dict[str, str] = {}
        self.quarantined: dict[str, str] = {}
        self.apps: dict[str, SignedAppPolicy] = {}  # the allowlist last delivered to each desktop
        self.denials: list[AppDenial] = []  # what tests make the "guests" report
        self.templates: dict[TemplateKey, FakeDomain] = {}  # booting templates
        self.saved: set[TemplateKey] = set()
        self.retired: set[TemplateKey] = set()
        self.backed_by: dict[str, TemplateKey] = {}  # a restored clone's overlay -> the template under it
        self.host = HostCapacity(vcpus=8, memory_mib=32768, disk_bytes=500 << 30, disk_free_bytes=400 << 30)
        self.unreachable = False  # True: every call fails as if this host's libvirtd were gone
        self.agent_unreachable = False  # True: its libvirt answers, its host agent (its files) does not
        self.images: frozenset[str] | None = None  # the golden images it says it has (None: it does not say)
        self.hang = threading.Event()  # capacity() waits for it: clear it to make this host hang
        self.hang.set()
        self.on_change: Callable[[], None] | None = None  # the reconciler's, once it watches
        self.remote: tuple[str, int] | None = None  # a console relay's address and port, for remote hosts
        self._lock = threading.Lock()

    def _reach(self) -> None:
        if self.unreachable:
            raise TemporaryError("connect to fake://: simulated: libvirtd is not answering", delay=1.0)

    def _call(self, verb: str, name: str) -> None:
        self._reach()
        self.calls.append((verb, name))
        if self.flaky > 0:
            self.flaky -= 1
            raise TemporaryError(f"{verb} {name}: simulated libvirt hiccup", delay=0.0)

    def observe(self) -> HostObservation:
        self._reach()  # libvirt first, as the real driver lists the domains before reading files
        if self.agent_unreachable:
            raise HostAgentUnreachable("host files of fake: simulated: the host agent is not answering", delay=1.0)
        return HostObservation(desktops=self.list_desktops(), templates=self.list_templates(),
                               overlays=frozenset(self.list_overlays()), capacity=self.capacity(), images=self.images)

    def list_desktops(self) -> dict[str, ObservedDomain]:
        self._reach()
        with self._lock:
            return {n: ObservedDomain(n, d.spec.pool, d.spec.desktop_id, d.running, self._ready(n),
                                      d.spec.generation, cloned=d.cloned, quarantined=self.quarantined.get(n))
                    for n, d in self.domains.items()}

    def _ready(self, name: str) -> bool:
        dom = self.domains.get(name)
        if dom is None or not dom.running or name in self.never_ready:
            return False
        dom.checks += 1
        if dom.cloned:
            return not self.silent_clones
        return dom.checks > self.boot_passes

    def list_overlays(self) -> set[str]:
        self._reach()
        with self._lock:
            return set(self.overlays)

    def create_overlay(self, spec: DesktopSpec) -> Path:
        with self._lock:
            self._call("create_overlay", spec.name)
            if spec.name in self.fail_overlay:
                raise PermanentError(f"create overlay {spec.name}: simulated failure")
            return self.overlays.setdefault(spec.name, self.root / f"{spec.name}.qcow2")

    def define(self, spec: DesktopSpec) -> None:
        with self._lock:
            self._call("define", spec.name)
            if spec.join_secret:
                self.join_secrets[spec.name] = spec.join_secret
            dom = self.domains.get(spec.name)
            if dom is None:
                self.domains[spec.name] = FakeDomain(spec)
            else:
                dom.spec = spec

    def start(self, name: str) -> None:
        with self._lock:
            self._call("start", name)
            if name not in self.domains:
                raise PermanentError(f"start {name}: domain is not defined")
            dom = self.domains[name]
            if name in self.fail_start or dom.spec.image.image_id in self.broken_images:
                raise PermanentError(f"start {name}: simulated failure")
            if not dom.running:
                dom.running, dom.checks = True, 0

    def is_ready(self, name: str) -> bool:
        self._reach()
        with self._lock:
            return self._ready(name)

    def watch(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change  # never called: a fake guest is ready when a pass asks (boot_passes)

    def reboot(self, name: str) -> None:
        if name not in self.domains:
            raise PermanentError(f"reboot {name}: domain is not defined")
        self.destroy(name)
        self.start(name)

    def destroy(self, name: str) -> None:
        with self._lock:
            self._call("destroy", name)
            if name in self.domains:
                self.domains[name].running = False

    def undefine(self, name: str) -> None:
        with self._lock:
            self._call("undefine", name)
            self.domains.pop(name, None)
            self.join_secrets.pop(name, None)

    def delete_overlay(self, name: str) -> None:
        with self._lock:
            self._call("delete_overlay", name)
            self.overlays.pop(name, None)
            self.backed_by.pop(name, None)

    def vnc_socket(self, name: str) -> Path:
        return self.root / f"{name}.vnc"

    def console(self, name: str) -> Console:
        """The socket here, unless `remote` names a relay (address, port) the tests run."""
        if self.remote is not None:
            return RemoteConsole(self.remote[0], self.remote[1], name)
        return LocalConsole(self.vnc_socket(name))

    def running_socket(self, name: str, stream: Stream) -> Path:
        with self._lock:
            dom = self.domains.get(name)
            if dom is None or not dom.running:
                raise PermanentError(f"console: {name!r} is not a running desktop of this host")
        return self.vnc_socket(name) if stream == Stream.VNC else self.root / f"{name}.chan"

    def screenshot(self, name: str) -> bytes:
        """A 64x48 PNG in a colour of the desktop's own (tests tell two apart)."""
        with self._lock:
            dom = self.domains.get(name)
            if dom is None or not dom.running:
                raise PermanentError(f"screenshot: desktop {name} is not running")
        out = io.BytesIO()
        Image.new("RGB", (64, 48), tuple(hashlib.sha256(name.encode()).digest()[:3])).save(out, format="PNG")
        return out.getvalue()

    def discard_join_secret(self, name: str) -> None:
        with self._lock:
            self.join_secrets.pop(name, None)

    def capacity(self) -> HostCapacity:
        self._reach()
        self.hang.wait()  # cleared: a libvirtd that takes the call and never answers
        return self.host

    def selftest(self) -> float:
        return 0.0

    def show_page(self, name: str, url: str) -> bool:
        with self._lock:
            self._call("show_page", name)
            self.pages[name] = url
            return name in self.domains

    def deliver_apps(self, name: str, signed: SignedAppPolicy) -> bool:
        """Records what each desktop was sent; a desktop that is not running has no agent."""
        with self._lock:
            dom = self.domains.get(name)
            if dom is None or not dom.running:
                return False
            if self.apps.get(name) != signed:
                self._call("deliver_apps", name)
                self.apps[name] = signed
            return True

    def app_denials(self) -> list[AppDenial]:
        with self._lock:
            out, self.denials = self.denials, []
        return out

    def list_templates(self) -> dict[TemplateKey, ObservedTemplate]:
        self._reach()
        with self._lock:
            found: dict[TemplateKey, ObservedTemplate] = {}
            for key, dom in self.templates.items():
                dom.checks += 1
                found[key] = ObservedTemplate(key, defined=True, running=dom.running,
                                              ready=dom.running and dom.checks > self.boot_passes,
                                              saved=key in self.saved)
            for key in self.saved - set(self.templates):
                found[key] = ObservedTemplate(key, defined=False, running=False, ready=False, saved=True)
            for key in self.retired:
                found[key] = ObservedTemplate(key, defined=False, running=False, ready=False, saved=False,
                                              retired=True, backs_desktops=key in self.backed_by.values())
            return found

    def template(self, key: TemplateKey) -> ObservedTemplate | None:
        return self.list_templates().get(key)

    def build_template(self, key: TemplateKey, image: BootImage) -> None:
        with self._lock:
            self._call("build_template", key.slug)
            spec = DesktopSpec(name=f"template-{key.slug}", pool="", desktop_id=0, image=image)
            self.templates.setdefault(key, FakeDomain(spec, running=True))

    def save_template(self, key: TemplateKey) -> None:
        with self._lock:
            self._call("save_template", key.slug)
            dom = self.templates.pop(key, None)
            if key not in self.saved and (dom is None or not dom.running):
                raise PermanentError(f"save template {key.slug}: it is not running")
            self.saved.add(key)

    def remove_template(self, key: TemplateKey) -> None:
        with self._lock:
            self._call("remove_template", key.slug)
            self.templates.pop(key, None)
            self.saved.discard(key)
            self.retired.discard(key)

    def retire_template(self, key: TemplateKey) -> None:
        with self._lock:
            self._call("retire_template", key.slug)
            self.templates.pop(key, None)
            self.saved.discard(key)
            self.retired.add(key)

    def restore_clone(self, spec: DesktopSpec) -> Path:
        with self._lock:
            self._call("restore_clone", spec.name)
            if spec.template not in self.saved or self.fail_restore or spec.image.image_id in self.broken_images:
                raise PermanentError(f"restore {spec.name}: simulated failure")
            if spec.join_secret:
                self.join_secrets[spec.name] = spec.join_secret
            self.domains.setdefault(spec.name, FakeDomain(spec, running=True, cloned=True))
            self.backed_by[spec.name] = spec.template
            return self.overlays.setdefault(spec.name, self.root / f"{spec.name}.qcow2")


class FakeHostNetwork:
    """The host network as a dict of admitted desktops; its calls go to CALLS (pass the fake
    hypervisor's list to check what came first)."""

    def __init__(self, network: DesktopNetwork, calls: list[tuple[str, str]] | None = None) -> None:
        self.network = network
        self.admitted: dict[str, DesktopNic] = {}
        self.calls = calls if calls is not None else []
        self.syncs = 0
        self.fail_next = 0
        self._lock = threading.Lock()

    def sync(self, nics: Collection[DesktopNic]) -> None:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise TemporaryError("nft: simulated failure", delay=0.0)
            self.syncs += 1
            self.admitted = {nic.name: nic for nic in nics}

    def admit(self, nic: DesktopNic) -> None:
        with self._lock:
            self.calls.append(("admit", nic.name))
            self.admitted[nic.name] = nic


class FakeDirectory:
    """An in-memory Directory: users with passwords, groups already flattened, computer accounts.

    `down=True` makes every call a TemporaryError (the DC is unreachable)."""

    def __init__(self, users: dict[str, tuple[str, set[str]]] | None = None, *, disabled: set[str] | None = None,
                 down: bool = False) -> None:
        self.users = users or {}
        self.disabled = disabled or set()
        self.down = down
        self.computers: dict[str, str] = {}
        self.manages_computers = True

    def _up(self) -> None:
        if self.down:
            raise TemporaryError("directory unreachable: simulated", delay=1.0)

    def lookup(self, username: str) -> Identity | None:
        self._up()
        if username not in self.users:
            return None
        return Identity(username=username, dn=f"CN={username},OU=Fake", display_name=username.title(),
                        groups=frozenset(g.lower() for g in self.users[username][1]),
                        enabled=username not in self.disabled)

    def authenticate(self, username: str, password: str) -> Identity:
        if not isinstance(password, str) or not password.strip():
            raise AuthFailed("blank password refused before any bind")
        who = self.lookup(username)
        if who is None:
            raise AuthFailed("unknown user")
        if username in self.disabled:
            raise AuthFailed("account disabled")
        if not hmac.compare_digest(self.users[username][0], password):
            raise AuthFailed("wrong password")
        return who

    def set_computer(self, desktop: str) -> str:
        self._up()
        self.computers[desktop] = secrets.token_urlsafe(32)
        return self.computers[desktop]

    def delete_computer(self, desktop: str) -> None:
        self._up()
        self.computers.pop(desktop, None)

    def list_computers(self) -> set[str]:
        self._up()
        return set(self.computers)
