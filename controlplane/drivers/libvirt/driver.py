"""LibvirtHypervisor: the Hypervisor port on libvirt-python.

Every domain it creates carries a ShiftDesk tag (installation, pool, desktop id) in its
metadata; listing only ever returns tagged domains of this installation, so a test run and a
demo can share one libvirtd without ever touching each other's desktops.

QEMU runs as its own unprivileged user under libvirt's seccomp sandbox and DAC labels
(scripts/setup-host.sh); host_access.py says which directories it may search and why.
"""

from __future__ import annotations

import dataclasses
import functools
import pwd
import ssl
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt

from controlplane.domain import guest_channel, naming
from controlplane.domain.app_policy import SignedAppPolicy
from controlplane.domain.console import Console, LocalConsole, RemoteConsole, Stream
from controlplane.domain.network import DesktopNic
from controlplane.domain.ports import (
    AppDenial,
    BootImage,
    DesktopSpec,
    HostCapacity,
    HostObservation,
    ObservedDomain,
    ObservedTemplate,
    Readiness,
    TemplateKey,
)
from controlplane.drivers.console_relay import RelayedChannels
from controlplane.drivers.libvirt import events, host_access, kvm_probe, linked_clone, save_image
from controlplane.drivers.libvirt.boot_facts import Boot, BootFacts
from controlplane.drivers.libvirt.domxml import (
    NS,
    OS,
    Devices,
    Disk,
    Domain,
    FwCfgFile,
    HostChannel,
    Interface,
    SerialLog,
    Tag,
    VncGraphics,
    without_fw_cfg,
)
from controlplane.drivers.libvirt.errors import is_not_found, translate
from controlplane.drivers.libvirt.guest_link import GuestLinks
from controlplane.drivers.libvirt.host_files import HostPaths, LocalHostFiles, RelayedHostFiles
from controlplane.drivers.libvirt.screenshot import capture_png
from controlplane.errors import PermanentError

JOIN_FW_CFG = "opt/org.shiftdesk/join"


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we handle them as exceptions instead."""


libvirt.registerErrorHandler(_quiet, None)

# Every libvirt-python call releases the GIL, even one libvirt answers locally (a domain's name,
# ID or UUID from the listing; freeing its object). The reconciler observes hosts on several
# threads, so a host's 10,000 such calls each had to win the GIL back from the other threads:
# measured with 20 hosts of 200 desktops, one observation took 0.13 s on one thread and 0.29 s on
# eight. These local calls are made under this lock, one host at a time; the calls that go to a
# host (listing, metadata) are made outside it, in parallel, so a host that hangs holds no other.
_LOCAL_CALLS = threading.Lock()


class LibvirtHypervisor:
    def __init__(self, *, uri: str, instance: str, storage_pool: str, overlay_dir: Path,
                 run_dir: Path, readiness: str = "serial", domain_type: str = "qemu",
                 probe_cache: Path | None = None, data_dir: Path | None = None,
                 tb_cache_mib: int | None = 128, links: GuestLinks | None = None,
                 policy_key: bytes | None = None, console_port: int = 16600,
                 console_tls: Callable[[], ssl.SSLContext | None] = lambda: None,
                 image_store: Path | None = None) -> None:
        self.uri = uri
        self.console_port = console_port  # the console relays' (gateway/console_server.py), on remote hosts
        self.instance = instance
        self.pool_name = storage_pool
        self.overlay_dir = overlay_dir
        self.run_dir = run_dir
        self.readiness = readiness
        self.domain_type = domain_type  # "auto": decided by a real KVM probe at first define
        self.probe_cache = probe_cache or run_dir
        self.data_dir = data_dir  # QEMU's group may search from here down to the files it opens
        self.qemu: host_access.QemuUser | None = None  # who QEMU runs as, learnt at connect
        self.tb_cache_mib = tb_cache_mib
        # With POLICY_KEY (the app-allowlist signer's public key, pinned by each guest with its
        # identity) a channel desktop is ready only once it applies the allowlist sent to it.
        self.enforce_apps = policy_key is not None
        self.remote_address = events.remote_address(uri)  # None: a libvirt of this machine
        # another host's channels are its sockets: reached through its console relay, never by path
        dial = (RelayedChannels(self.remote_address, console_port, console_tls).dial
                if self.remote_address is not None else None)
        self.links = links or GuestLinks(policy_key=policy_key or bytes(32), dial=dial)
        self.templates_dir = overlay_dir.parent / "templates"  # saved template memory, root only
        self.paths = HostPaths(run_dir, self.templates_dir)  # the files' paths, as the host's agent has them
        # the host's files (serial logs, join secrets, save files, restore fifos) are on its own disk:
        # another host's are reached through its agent's relay, like its channels
        self.files: LocalHostFiles | RelayedHostFiles = (
            LocalHostFiles(instance=instance, run_dir=run_dir, templates_dir=self.templates_dir,
                           image_store=image_store, grant=self.grant_dirs, probe=self.probe_domain_type)
            if self.remote_address is None else RelayedHostFiles(self.remote_address, console_port, console_tls))
        self._desktop_re = naming.desktop_pattern(instance)
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._boots = BootFacts()  # each running domain's tag and serial readiness, read once per boot
        # each retired template's clones: the volumes its disk backed when first asked (see _backs_desktops)
        self._backed: dict[TemplateKey, frozenset[str]] = {}

    # --- connection ---------------------------------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                remote = events.remote(self.uri)
                if remote:
                    events.ensure_running()  # before the connection opens: keepalive needs it
                self._boots.clear()
                self._backed.clear()
                try:
                    self._conn = libvirt.open(self.uri)
                    if remote:
                        events.keep_alive(self._conn)
                except libvirt.libvirtError as err:
                    raise translate(err, f"connect to {self.uri}") from err
                self.qemu = host_access.QemuUser.from_capabilities(self._conn.getCapabilities())
                if self.remote_address is None:  # another host's agent prepares its own directories
                    self._grant_qemu(self.run_dir.parent, self.overlay_dir)
                    host_access.prepare_run_dir(self.run_dir, self.qemu)
            return self._conn

    def grant_dirs(self, dirs: list[Path]) -> None:
        """Connect (which prepares this host's own directories) and let QEMU search DIRS: what the
        host agent does when the control plane asks (host_files.LocalHostFiles.prepare)."""
        self.conn  # noqa: B018 - connecting learns who QEMU runs as
        self._grant_qemu(*dirs)

    def _grant_qemu(self, *dirs: Path) -> None:
        """Let an unprivileged QEMU search DIRS (inside DATA_DIR only); see host_access. Another
        host's agent does it there: these are that host's directories."""
        if self.remote_address is not None:
            self.files.prepare(list(dirs))
            return
        if self.qemu is None or self.qemu.is_root or self.data_dir is None:
            return
        for directory in dirs:
            host_access.grant_search(self.data_dir, directory, self.qemu.gid)

    def _pool(self) -> libvirt.virStoragePool:
        return linked_clone.ensure_pool(self.conn, self.pool_name, self.overlay_dir,
                                        remote=self.remote_address is not None)

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as err:
            if is_not_found(err):
                return None
            raise translate(err, f"look up domain {name}") from err

    # --- observation --------------------------------------------------------------------------

    def observe(self) -> HostObservation:
        desktops, templates = self._scan(desktops=True, templates=True)
        return HostObservation(desktops=desktops, templates=templates, overlays=frozenset(self.list_overlays()),
                               capacity=self.capacity(), images=self.files.images())

    def list_desktops(self) -> dict[str, ObservedDomain]:
        return self._scan(desktops=True, templates=False)[0]

    def _scan(self, *, desktops: bool, templates: bool) -> tuple[dict[str, ObservedDomain],
                                                                 dict[TemplateKey, ObservedTemplate]]:
        """This installation's desktops and templates, from one listing of the host's domains.
        Only names of ours (`sd-<instance>`: desktops and templates alike) have their metadata read,
        so other installations and other software on the host cost a name each."""
        seen: list[tuple[str, Tag, bool, bool]] = []  # desktops: name, tag, running, ready
        kept: dict[TemplateKey, ObservedTemplate] = {}
        listed = self._list_ours()
        for dom, name, boot in listed:
            tag = self._tag(dom) if boot is None else self._boots.tag(boot, functools.partial(self._tag, dom))
            if tag is None or tag.instance != self.instance:
                continue
            if tag.role == "desktop" and desktops:
                seen.append((name, tag, boot is not None, boot is not None and self._signalled(name, tag, dom, boot)))
            elif (tag.role == "template" and templates and (key := TemplateKey.parse(tag.template)) is not None
                  and (template := self._observe_template(key, dom, tag, saved=False)) is not None):
                kept[key] = template  # (None: it went since the listing; its save file may say more)
        boots = [boot for _, _, boot in listed if boot is not None]
        with _LOCAL_CALLS:
            listed.clear()  # freeing a domain object is a libvirt call too
        self._boots.keep_only(boots)
        if templates:
            self._saved_templates(kept)
        guests = self.links.states([name for name, *_ in seen])  # after readiness: it may quarantine
        found = {name: ObservedDomain(name=name, pool=tag.pool, desktop_id=tag.desktop_id, running=running,
                                      ready=ready, generation=tag.generation, cloned=bool(tag.template),
                                      quarantined=guests[name].quarantined)
                 for name, tag, running, ready in seen}
        return found, kept

    def _list_ours(self) -> list[tuple[libvirt.virDomain, str, Boot | None]]:
        """Each domain named like ours, with its name and, while it runs, its boot: one listing
        (the call that goes to the host), then per domain only calls libvirt answers locally, made
        under _LOCAL_CALLS (see there)."""
        mine = f"{naming.PREFIX}-{self.instance}"
        domains = self.conn.listAllDomains(0)
        with _LOCAL_CALLS:
            named = [(dom, dom.name()) for dom in domains]
            del domains
            ours = [(dom, name, (dom.UUIDString(), dom_id) if (dom_id := dom.ID()) != -1 else None)
                    for dom, name in named if name.startswith(mine)]
            named.clear()
        return ours

    def _tag(self, dom: libvirt.virDomain) -> Tag | None:
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)
        except libvirt.libvirtError:
            return None  # no ShiftDesk metadata: not ours
        return _parse_tag(xml)

    def list_overlays(self) -> set[str]:
        prefix = f"{naming.PREFIX}-{self.instance}-"
        names = (naming.desktop_of_volume(v) for v in linked_clone.list_volumes(self._pool()))
        return {n for n in names if n and n.startswith(prefix)}

    def is_ready(self, name: str) -> bool:
        dom = self._lookup(name)
        if dom is None or not _active(dom, name):  # None: gone since the lookup
            return False
        tag = self._tag(dom)
        return tag is not None and self._signalled(name, tag, dom)

    def _signalled(self, name: str, tag: Tag, dom: libvirt.virDomain, boot: Boot | None = None) -> bool:
        """Ready since its last start: its agent confirmed the identity we sent and shows the
        session (host channel), or its serial line said so (read until it does, once per BOOT
        when known). A busybox clone (no channel) was restored from a template that had said so;
        a cold-booted one must say it again."""
        if self.readiness == "running":
            return True
        if tag.readiness == Readiness.CHANNEL:
            desktop = tag.role == "desktop"
            return self._channel_ready(name, dom, template=not desktop, apps=self.enforce_apps and desktop)
        if tag.template or (boot is not None and self._boots.said_ready(boot)):
            return True
        ready = self.files.serial_ready(name)
        if ready and boot is not None:
            self._boots.note_ready(boot)
        return ready

    def _channel_ready(self, name: str, dom: libvirt.virDomain, *, template: bool, apps: bool) -> bool:
        state = self.links.ensure(name, self.channel_socket(name))
        if not state.connected or state.quarantined:
            return False
        if not self.links.identity_sent(name):
            self._send_identity(name, dom, template=template)
            return False
        # with APPS: the guest applies the list we sent, or still runs its image's first list and
        # that is within the one it should run (a clone is handed out while a wider list applies)
        return state.ready and (not apps or (state.apps_sent is not None and state.apps_current)
                                or state.first_list_allowed)

    def _send_identity(self, name: str, dom: libvirt.virDomain, *, template: bool) -> None:
        self.links.send_identity(name, hostname=name.replace(".", "-"),  # a template's name has a dot
                                 machine_id=dom.UUIDString().replace("-", ""),
                                 join_secret=self.files.read_join(name), template=template)

    def watch(self, on_change: Callable[[], None]) -> None:
        self.links.watch(on_change)  # a serial-line desktop's readiness is read when asked

    def deliver_apps(self, name: str, signed: SignedAppPolicy) -> bool:
        """Over the link `is_ready` opened only: a list goes to a guest that confirmed its identity,
        and dialling here would open a channel to every booting desktop in every pass (to another
        host's, a TLS connection to its relay each)."""
        return self.links.send_apps(name, signed.policy.revision, signed.document, signed.signature,
                                    frozenset(signed.policy.apps))

    def app_denials(self) -> list[AppDenial]:
        return [AppDenial(desktop, path, count)
                for desktop, paths in self.links.drain_denials().items() for path, count in paths.items()]

    def show_page(self, name: str, url: str) -> bool:
        if not self.links.state(name).connected:
            return False
        return self.links.send_page(name, url)

    def serial_log(self, name: str) -> Path:
        return self.paths.serial_log(name)

    def channel_socket(self, name: str) -> Path:
        return self.paths.channel_socket(name)

    def screenshot(self, name: str) -> bytes:
        self.vnc_socket(name)  # the same check: a desktop of this installation, by name
        dom = self._lookup(name)
        if dom is None or not _active(dom, name):
            raise PermanentError(f"screenshot: desktop {name} is not running")
        try:
            return capture_png(self.conn, dom)
        except libvirt.libvirtError as err:
            raise translate(err, f"screenshot of {name}") from err

    def vnc_socket(self, name: str) -> Path:
        """Only for a desktop name of this installation: never a path a caller could steer."""
        if not isinstance(name, str) or not self._desktop_re.fullmatch(name) or "--" in name:
            raise PermanentError(f"vnc socket: {name!r} is not a desktop of installation {self.instance!r}")
        return self.paths.vnc_socket(name)

    def console(self, name: str) -> Console:
        """The socket, on a libvirt of this machine; else the relay of the host the URI names."""
        socket = self.vnc_socket(name)
        if self.remote_address is None:
            return LocalConsole(socket)
        return RemoteConsole(self.remote_address, self.console_port, name)

    def running_socket(self, name: str, stream: Stream) -> Path:
        """The socket the running domain's definition names. Not `vnc_socket` or `channel_socket`:
        the control plane that defined the domain chose the path (its directory for this host),
        not this process. A template of this installation has its host channel found too."""
        if not (stream == Stream.CHANNEL and self._template_key(name) is not None):
            self.vnc_socket(name)  # the same check: a desktop name of this installation
        dom = self._lookup(name)
        try:
            active = dom is not None and dom.isActive() and self._tag(dom) is not None
            xml = dom.XMLDesc(0) if dom is not None and active else ""
        except libvirt.libvirtError as err:
            raise translate(err, f"console of {name}") from err
        if not xml:
            raise PermanentError(f"console: {name} is not a running desktop of this host")
        devices = ET.fromstring(xml).find("devices")  # noqa: S314 - our own libvirtd
        socket = None
        if devices is not None and stream == Stream.VNC:
            graphics = devices.find("graphics[@type='vnc']")
            socket = graphics.get("socket") if graphics is not None else None
        elif devices is not None:
            for channel in devices.findall("channel[@type='unix']"):
                target, source = channel.find("target"), channel.find("source")
                if target is not None and target.get("name") == guest_channel.PORT_NAME and source is not None:
                    socket = source.get("path")
        if not socket:
            raise PermanentError(f"console: {name} has no {'VNC socket' if stream == Stream.VNC else 'host channel'}")
        return Path(socket)

    def join_file(self, name: str) -> Path:
        return self.paths.join_file(name)

    def discard_join_secret(self, name: str) -> None:
        """The guest has its secret. The definition stops pointing at the file first (QEMU refuses
        to start a domain whose fw_cfg file is missing), then the file goes: a crash in between
        leaves a file to remove, never a desktop that cannot start again."""
        self._drop_fw_cfg(name, lambda entry: entry.name == JOIN_FW_CFG)
        self.files.discard_join(name)

    def _drop_fw_cfg(self, name: str, drop: Callable[[FwCfgFile], bool]) -> None:
        dom = self._lookup(name)
        if dom is None:
            return
        try:
            xml = without_fw_cfg(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), drop)
            if xml is not None:
                self.conn.defineXML(xml)
        except libvirt.libvirtError as err:
            raise translate(err, f"drop the join secret from the definition of {name}") from err

    # --- actions ------------------------------------------------------------------------------

    def create_overlay(self, spec: DesktopSpec) -> Path:
        capacity = _virtual_size(spec.image.disk)
        return linked_clone.create_overlay(self._pool(), naming.volume_name(spec.name),
                                           spec.image.disk, capacity)

    def delete_overlay(self, name: str) -> None:
        linked_clone.delete_overlay(self._pool(), naming.volume_name(name))

    def domain_model(self, spec: DesktopSpec, uuid: str | None = None, *, genid: str | None = None) -> Domain:
        """A desktop's domain. The join secret goes through fw_cfg for serial images; an agent
        desktop gets it over the host channel with the rest of its identity."""
        channel = spec.image.readiness == Readiness.CHANNEL
        return Domain(
            name=spec.name,
            uuid=uuid,
            genid=genid,
            tag=Tag(instance=self.instance, pool=spec.pool, desktop_id=spec.desktop_id,
                    generation=spec.generation, readiness=spec.image.readiness.value),
            os=OS(kernel=spec.image.kernel, initrd=spec.image.initrd,
                  cmdline=f"{spec.image.cmdline} shiftdesk.name={spec.name}"),
            devices=Devices(
                disk=Disk(pool=self.pool_name, volume=naming.volume_name(spec.name)),
                serial=SerialLog(self.serial_log(spec.name)),
                graphics=VncGraphics(self.paths.vnc_socket(spec.name)),
                channel=HostChannel(self.channel_socket(spec.name), guest_channel.PORT_NAME) if channel else None,
                interface=_interface(spec.nic) if spec.nic is not None else None,
            ),
            memory_mib=spec.memory_mib,
            vcpus=spec.vcpus,
            domain_type=self.resolved_domain_type(spec.image.kernel),
            fw_cfg=[FwCfgFile(JOIN_FW_CFG, self.join_file(spec.name))] if spec.join_secret and not channel else [],
            tb_cache_mib=self.tb_cache_mib,
            share_memory=spec.share_memory,
        )

    def resolved_domain_type(self, kernel: Path) -> str:
        """The domain type of this host's desktops: the setting, or with "auto" what a real guest
        says (kvm_probe.py) on the host itself: another host's agent probes there (a control plane
        without KVM may drive hosts with it, and the other way round)."""
        if self.domain_type != "auto":
            return self.domain_type
        if self.remote_address is not None:
            self.domain_type = self.files.domain_type(kernel)
            return self.domain_type
        if not kernel.exists():
            return "qemu"  # nothing to probe with (unit tests on the test driver): the safe choice
        self.conn  # noqa: B018 - connecting learns who QEMU runs as
        runas = pwd.getpwuid(self.qemu.uid).pw_name if self.qemu and not self.qemu.is_root else None
        self.domain_type = kvm_probe.cached_domain_type(kernel, self.probe_cache, runas)
        return self.domain_type

    def probe_domain_type(self, kernel: Path) -> str:
        """`resolved_domain_type` for the control plane asking through this host's agent: only
        for a kernel inside DATA_DIR (the image store), never a path it could steer elsewhere."""
        if self.data_dir is None or self.data_dir.resolve() not in kernel.resolve().parents:
            raise PermanentError(f"domain type: kernel {kernel} is not in this host's image store")
        return self.resolved_domain_type(kernel)

    def define(self, spec: DesktopSpec) -> None:
        image = spec.image
        self.conn  # noqa: B018 - connecting learns who QEMU runs as
        self._grant_qemu(*{p.parent for p in (image.disk, image.kernel, image.initrd) if p is not None})
        if spec.join_secret:
            self.files.write_join(spec.name, spec.join_secret)
        existing = self._lookup(spec.name)
        uuid = existing.UUIDString() if existing is not None else None
        try:
            self.conn.defineXML(self.domain_model(spec, uuid).to_xml())
        except libvirt.libvirtError as err:
            raise translate(err, f"define {spec.name}") from err

    def start(self, name: str) -> None:
        dom = self._lookup(name)
        if dom is None or (active := _active(dom, name)) is None:
            raise PermanentError(f"start {name}: domain is not defined")
        if active:
            return
        # a secret discarded long ago (QEMU refuses to start without the file)
        self._drop_fw_cfg(name, lambda entry: entry.name == JOIN_FW_CFG and not self.files.read_join(name))
        self._booted_not_restored(dom)
        self.files.clear_serial(name)  # readiness counts from this boot's line only
        self.links.forget(name)  # and from this boot's agent only
        try:
            dom.create()
        except libvirt.libvirtError as err:
            if _active(dom, name):
                return  # a concurrent start won the race: same outcome
            raise translate(err, f"start {name}") from err
        self._close_sockets(name)

    def _booted_not_restored(self, dom: libvirt.virDomain) -> None:
        """A clone started cold (host restart, admin reboot) boots like any desktop: clear its
        template mark, so its readiness comes from this boot and not from its restore."""
        tag = self._tag(dom)
        if tag is None or not tag.template or tag.role != "desktop":
            return
        bare = dataclasses.replace(tag, template="").to_element()
        for el in bare.iter():  # libvirt puts the namespace on by itself and refuses one given
            el.tag = el.tag.rsplit("}", 1)[-1]
        try:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, ET.tostring(bare, encoding="unicode"),
                            "shiftdesk", NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        except libvirt.libvirtError as err:
            raise translate(err, f"mark {dom.name()} as booted") from err

    def _close_sockets(self, name: str) -> None:
        self.files.close_sockets(name)

    def reboot(self, name: str) -> None:
        if self._lookup(name) is None:
            raise PermanentError(f"reboot {name}: domain is not defined")
        self.destroy(name)
        self.start(name)

    def destroy(self, name: str) -> None:
        dom = self._lookup(name)
        self.links.forget(name)
        if dom is None or not _active(dom, name):
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as err:
            if is_not_found(err) or err.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                return  # it went away on its own
            raise translate(err, f"destroy {name}") from err

    def undefine(self, name: str) -> None:
        self.destroy(name)
        dom = self._lookup(name)
        if dom is not None:
            try:
                dom.undefine()
            except libvirt.libvirtError as err:
                if not is_not_found(err):
                    raise translate(err, f"undefine {name}") from err
        self.files.clear_serial(name)
        self.discard_join_secret(name)

    # --- instant clones (save_image.py holds the save-file trick) --------------------------------

    def template_name(self, key: TemplateKey) -> str:
        """`sd-<instance>.tpl-<key>`: never a desktop name (the dot), never one of our overlays."""
        return f"{naming.template_prefix(self.instance)}{key.slug}"

    def _template_key(self, name: str) -> TemplateKey | None:
        """The key of NAME if it is a template name of this installation."""
        prefix = naming.template_prefix(self.instance)
        return TemplateKey.parse(name[len(prefix):]) if name.startswith(prefix) else None

    def template_file(self, key: TemplateKey) -> Path:
        return self.paths.save_file(self.template_name(key))

    def retired_file(self, key: TemplateKey) -> Path:
        """The mark of a retired template (see `retire_template`)."""
        return self.paths.retired_file(self.template_name(key))

    def list_templates(self) -> dict[TemplateKey, ObservedTemplate]:
        return self._scan(desktops=False, templates=True)[1]

    def _saved_templates(self, found: dict[TemplateKey, ObservedTemplate]) -> None:
        """Mark the templates in FOUND that have a finished save file, add those that are only one
        (their domain is gone) and the retired ones: one look at the host's template files per
        pass (the host sweeps restore files a crash left behind meanwhile)."""
        files = self.files.template_files()
        for key in self._keys(files.saved - files.retired):
            seen = found.get(key)
            found[key] = (dataclasses.replace(seen, saved=True) if seen is not None else
                          ObservedTemplate(key=key, defined=False, running=False, ready=False, saved=True))
        for key in self._keys(files.retired):
            found[key] = self._retired(key, backs=self._backs_desktops(key))

    def _keys(self, names: frozenset[str]) -> list[TemplateKey]:
        return [key for name in sorted(names) if (key := self._template_key(name)) is not None]

    @staticmethod
    def _retired(key: TemplateKey, *, backs: bool) -> ObservedTemplate:
        return ObservedTemplate(key=key, defined=False, running=False, ready=False, saved=False, retired=True,
                                backs_desktops=backs)

    def _backs_desktops(self, key: TemplateKey) -> bool:
        """Whether any volume is backed by KEY's template disk. Asked once per retirement (a call
        per volume: see backed_by); then those volumes are only looked for by name in the pool's
        listing (one call): a retired template backs no new clone, so its set only shrinks (a
        desktop recreated under the same name keeps it a while longer, never too short)."""
        pool = self._pool()
        if (backed := self._backed.get(key)) is not None:
            try:
                pool.refresh(0)
                backed &= frozenset(pool.listVolumes())
            except libvirt.libvirtError as err:
                raise translate(err, "list volumes") from err
        else:
            try:
                disk = Path(pool.storageVolLookupByName(naming.volume_name(self.template_name(key))).path())
            except libvirt.libvirtError as err:
                if not is_not_found(err):
                    raise translate(err, f"look up the disk of template {key.slug}") from err
                return False
            backed = frozenset(linked_clone.backed_by(pool, disk))
        self._backed[key] = backed
        return bool(backed)

    def template(self, key: TemplateKey) -> ObservedTemplate | None:
        saved, retired = self.files.template_state(self.template_name(key))
        if retired:  # whether it still backs a desktop costs a call per volume: a pass asks
            # (`list_templates`); a step needs only to know it is retired
            return self._retired(key, backs=True)
        dom = self._lookup(self.template_name(key))
        tag = self._tag(dom) if dom is not None else None
        if (dom is not None and tag is not None
                and (seen := self._observe_template(key, dom, tag, saved=saved)) is not None):
            return seen
        if saved:
            return ObservedTemplate(key=key, defined=False, running=False, ready=False, saved=True)
        return None

    def _observe_template(self, key: TemplateKey, dom: libvirt.virDomain, tag: Tag, *,
                          saved: bool) -> ObservedTemplate | None:
        """The template domain DOM as it is (SAVED: as the host's files say, looked at by the
        caller), or None if it is gone: a template is undefined right after its save, so one listed
        a moment ago may no longer exist (another thread of this process, or another replica,
        observing while the reconciler saves it)."""
        if (running := _active(dom, f"template {key.slug}")) is None:
            return None
        name = dom.name()
        return ObservedTemplate(key=key, defined=True, running=running,
                                ready=running and self._signalled(name, tag, dom), saved=saved,
                                created=tag.created,
                                quarantined=self.links.state(name, heartbeats=False).quarantined)

    def _saved(self, key: TemplateKey) -> bool:
        """A finished save file, and not retired (retired while its file went: never restored from)."""
        return self.files.template_state(self.template_name(key))[0]

    def build_template(self, key: TemplateKey, image: BootImage) -> None:
        name = self.template_name(key)
        spec = DesktopSpec(name=name, pool="", desktop_id=0, image=image, memory_mib=key.memory_mib,
                           vcpus=key.vcpus, share_memory=key.shared)
        self.conn  # noqa: B018 - connecting learns who QEMU runs as
        self._grant_qemu(*{p.parent for p in (image.disk, image.kernel, image.initrd) if p is not None})
        linked_clone.create_overlay(self._pool(), naming.volume_name(name), image.disk, _virtual_size(image.disk))
        if self._lookup(name) is None:
            model = self.domain_model(spec, genid=str(uuidlib.uuid4()))
            model.tag = Tag(instance=self.instance, pool="", desktop_id=0, role="template", template=key.slug,
                            readiness=image.readiness.value, created=int(time.time()))
            try:
                self.conn.defineXML(model.to_xml())
            except libvirt.libvirtError as err:
                raise translate(err, f"define template {name}") from err
        self.start(name)

    def save_template(self, key: TemplateKey) -> None:
        name = self.template_name(key)
        if not self._saved(key):
            dom = self._lookup(name)
            if dom is None or not _active(dom, name):
                raise PermanentError(f"save template {name}: it is not running")
            partial = self.files.begin_save(name)
            try:
                dom.save(str(partial))
            except libvirt.libvirtError as err:
                self.files.discard_save(name)
                raise translate(err, f"save template {name}") from err
            self.files.commit_save(name)  # only a finished file ever carries the final name
        self.undefine(name)  # nothing may boot it again: its disk now backs every clone

    def remove_template(self, key: TemplateKey) -> None:
        name = self.template_name(key)
        self.undefine(name)
        self.files.discard_save(name)
        linked_clone.delete_overlay(self._pool(), naming.volume_name(name))
        self.files.unretire(name)  # last: a crash before it leaves it retired, not built anew
        self._backed.pop(key, None)

    def retire_template(self, key: TemplateKey) -> None:
        name = self.template_name(key)
        self.undefine(name)
        self.files.retire(name)  # the mark first, then the save file

    def restore_clone(self, spec: DesktopSpec) -> Path:
        if spec.template is None:
            raise PermanentError(f"restore {spec.name}: no template named")
        if self._lookup(spec.name) is not None:
            self.start(spec.name)  # restored before (a crash after the restore): it is this desktop
            self._plug_nic(spec)
            return Path(self._pool().storageVolLookupByName(naming.volume_name(spec.name)).path())
        template = self.template_name(spec.template)
        try:
            backing = Path(self._pool().storageVolLookupByName(naming.volume_name(template)).path())
        except libvirt.libvirtError as err:
            raise PermanentError(f"restore {spec.name}: template {template} has no disk") from err
        if (saved_xml := self.files.saved_xml(template)) is None:
            raise PermanentError(f"restore {spec.name}: template {template} is not saved")
        overlay = linked_clone.create_overlay(self._pool(), naming.volume_name(spec.name), backing,
                                              _virtual_size(spec.image.disk))
        channel = spec.image.readiness == Readiness.CHANNEL
        xml = save_image.rewrite_for_clone(saved_xml, save_image.CloneNames(
            name=spec.name, uuid=str(uuidlib.uuid4()), genid=str(uuidlib.uuid4()), pool=spec.pool,
            desktop_id=spec.desktop_id, generation=spec.generation, template=spec.template.slug,
            created=int(time.time()), volume=naming.volume_name(spec.name), serial=self.serial_log(spec.name),
            vnc=self.vnc_socket(spec.name), channel=self.channel_socket(spec.name) if channel else None))
        if spec.join_secret:
            self.files.write_join(spec.name, spec.join_secret)  # sent with its identity
        self.files.clear_serial(spec.name)
        self.links.forget(spec.name)
        self.links.restored(spec.name, spec.image.first_apps)  # what its guest runs until our first list
        try:
            with self.files.feed(spec.name, template, xml) as fifo:
                self.conn.restoreFlags(str(fifo), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
            dom = self.conn.lookupByName(spec.name)
            self.conn.defineXML(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
        except libvirt.libvirtError as err:
            self.undefine(spec.name)  # a half-made clone never lingers: the next try starts clean
            if not self.conn.isAlive():
                raise translate(err, f"restore {spec.name} from {template}") from err
            raise PermanentError(f"restore {spec.name} from {template}: {err.get_error_message()}") from err
        self._close_sockets(spec.name)
        self._plug_nic(spec)
        if channel and self.links.ensure(spec.name, self.channel_socket(spec.name)).connected:
            self._send_identity(spec.name, dom, template=False)  # now: a pass would send it 0.25 s later
        return overlay

    def _plug_nic(self, spec: DesktopSpec) -> None:
        """Give a restored clone its own NIC. The template was saved without one: a restored NIC
        keeps the MAC the guest saw before the save, whatever the clone's XML says, so clones
        would share one. Idempotent: a clone that has its NIC is left alone."""
        if spec.nic is None:
            return
        dom = self.conn.lookupByName(spec.name)
        if spec.nic.mac in dom.XMLDesc(0):
            return
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        try:
            dom.attachDeviceFlags(_interface(spec.nic).to_xml(), flags)
        except libvirt.libvirtError as err:
            raise translate(err, f"plug the NIC of {spec.name}") from err

    def capacity(self) -> HostCapacity:
        try:
            _model, memory_mib, cpus, *_ = self.conn.getInfo()
            _state, size, _allocation, free = self._pool().info()
        except libvirt.libvirtError as err:
            raise translate(err, "host capacity") from err
        return HostCapacity(vcpus=cpus, memory_mib=memory_mib, disk_bytes=size, disk_free_bytes=free)

    def selftest(self) -> float:
        """Time define + undefine of a throwaway domain (the half-present /dev/kvm trap check)."""
        root = ET.Element("domain", type="qemu")
        ET.SubElement(root, "name").text = f"{naming.PREFIX}-{self.instance}-selftest"
        ET.SubElement(root, "uuid").text = str(uuidlib.uuid4())
        ET.SubElement(root, "memory", unit="KiB").text = "65536"
        os_el = ET.SubElement(root, "os")
        ET.SubElement(os_el, "type", arch="x86_64").text = "hvm"
        conn = self.conn
        began = time.perf_counter()
        dom = conn.defineXML(ET.tostring(root, encoding="unicode"))
        dom.undefine()
        return (time.perf_counter() - began) * 1000


def _interface(nic: DesktopNic) -> Interface:
    return Interface(bridge=nic.bridge, mac=nic.mac, tap=nic.tap)


def _virtual_size(disk: Path) -> int:
    """Virtual size of a qcow2 file, from its header (bytes 24..32, big-endian)."""
    try:
        with disk.open("rb") as fh:
            header = fh.read(32)
    except FileNotFoundError as err:
        raise PermanentError(f"golden image disk {disk} is missing") from err
    if header[:4] != b"QFI\xfb":
        raise PermanentError(f"golden image disk {disk} is not qcow2")
    return int.from_bytes(header[24:32], "big")


def _active(dom: libvirt.virDomain, what: str) -> bool | None:
    """Whether DOM runs; None if it no longer exists (undefined since it was looked up or listed:
    another thread or replica acted meanwhile). Other libvirt errors are translated."""
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as err:
        if is_not_found(err):
            return None
        raise translate(err, f"observe {what}") from err


@functools.lru_cache(maxsize=32768)
def _parse_tag(xml: str) -> Tag:
    """Parsing is most of what observing a domain costs (measured: 26 of 36 µs per domain), and a
    domain's tag changes only when it is redefined, so each distinct text is parsed once. Keyed
    by the text itself, a cached tag can never be stale; Tag is frozen, so sharing it is safe."""
    return Tag.from_element(ET.fromstring(xml))  # noqa: S314 - from our own libvirtd
