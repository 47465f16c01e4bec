"""The files a libvirt host keeps for ShiftDesk beside its libvirtd, on its own disk.

A desktop's serial log (where a busybox desktop says it is ready), its join secret (a file QEMU
hands the guest through fw_cfg), the templates' save files with their retired marks, and a
clone's restore fifo are read and written by the host's libvirtd and QEMU, so they must be on
the host that runs the desktop. `LocalHostFiles` handles them in this machine's directories: the
libvirt driver of a host on this machine uses it, and so does the host agent of every other
host, serving them for the control plane through its console relay (`serve`, `feed`).
`RelayedHostFiles` is the control plane's side for another host: the same methods, each one
operation through that host's relay (domain/host_ops.py).

Callers name desktops and templates, never paths: every name is checked against this
installation before a path is made from it, so a caller cannot steer a path anywhere else.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.domain import console, host_ops, naming
from controlplane.domain.host_ops import HostOp
from controlplane.drivers.libvirt import host_access, save_image
from controlplane.errors import HostAgentUnreachable, InvalidInput, PermanentError, TemporaryError

READY_MARKER = "SHIFTDESK-READY name="
_SHA256 = re.compile(r"[0-9a-f]{64}")
RESTORE_SWEEP_S = 600.0  # a live restore takes seconds: a fifo this old is a crash's leftover


@dataclass(frozen=True)
class TemplateFiles:
    """Template names with a finished save file, and those marked retired."""

    saved: frozenset[str]
    retired: frozenset[str]


@dataclass(frozen=True)
class HostPaths:
    """Where a host keeps each file of a domain, by the domain's name: one layout for the control
    plane, which writes these paths into domain XML, and for the host (its agent), which reads
    and writes the files. Names are not checked here (LocalHostFiles does, before any I/O)."""

    run_dir: Path
    templates_dir: Path

    def serial_log(self, name: str) -> Path:
        return self.run_dir / f"{name}.serial"

    def join_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.join"

    def vnc_socket(self, name: str) -> Path:
        return self.run_dir / f"{name}.vnc"

    def channel_socket(self, name: str) -> Path:
        return self.run_dir / f"{name}.chan"

    def restore_fifo(self, name: str) -> Path:
        return self.run_dir / f"{name}.restore"

    def save_file(self, template: str) -> Path:
        return self.templates_dir / f"{template}.save"

    def retired_file(self, template: str) -> Path:
        return self.templates_dir / f"{template}.retired"


class LocalHostFiles:
    def __init__(self, *, instance: str, run_dir: Path, templates_dir: Path, image_store: Path | None = None,
                 grant: Callable[[list[Path]], None] | None = None,
                 probe: Callable[[Path], str] | None = None) -> None:
        self.instance = instance
        self.run_dir = run_dir
        self.templates_dir = templates_dir
        self.paths = HostPaths(run_dir, templates_dir)
        self.image_store = image_store  # IMAGE/<sha256 of its disk>/disk.qcow2 (services/images.py)
        # the host agent's libvirt driver: lets this host's QEMU search directories, and says
        # whether KVM really runs guests on this host (kvm_probe.py)
        self.grant = grant
        self.probe = probe
        self._desktop = naming.desktop_pattern(instance)
        self._template = re.compile(rf"{re.escape(naming.template_prefix(instance))}[a-z0-9-]{{1,40}}")

    # --- names -> paths ---------------------------------------------------------------------------

    def domain(self, name: str) -> str:
        """NAME if it is a desktop or template name of this installation; PermanentError if not."""
        if isinstance(name, str) and "--" not in name and (self._desktop.fullmatch(name)
                                                           or self._template.fullmatch(name)):
            return name
        raise PermanentError(f"{name!r} is not a desktop or template of installation {self.instance!r}")

    def template(self, name: str) -> str:
        if isinstance(name, str) and self._template.fullmatch(name) and "--" not in name:
            return name
        raise PermanentError(f"{name!r} is not a template of installation {self.instance!r}")

    def serial_log(self, name: str) -> Path:
        return self.paths.serial_log(self.domain(name))

    def join_file(self, name: str) -> Path:
        return self.paths.join_file(self.domain(name))

    def save_file(self, name: str) -> Path:
        return self.paths.save_file(self.template(name))

    def retired_file(self, name: str) -> Path:
        return self.paths.retired_file(self.template(name))

    def prepare(self, dirs: list[Path]) -> None:
        """Let this host's QEMU search DIRS (LibvirtHypervisor.grant_dirs: inside DATA_DIR only)."""
        if self.grant is None:
            raise PermanentError("this host's files have no QEMU to prepare directories for")
        self.grant(dirs)

    def domain_type(self, kernel: Path) -> str:
        """"kvm" if KERNEL boots under KVM on this host, else "qemu" (LibvirtHypervisor.probe_domain_type)."""
        if self.probe is None:
            raise PermanentError("this host's files have no libvirt to probe KVM with")
        return self.probe(kernel)

    def images(self) -> frozenset[str] | None:
        """The golden images this host has (their disks' sha256), None when it has no image store
        configured (then placement does not ask)."""
        if self.image_store is None:
            return None
        return frozenset(disk.parent.name for disk in self.image_store.glob("*/*/disk.qcow2")
                         if _SHA256.fullmatch(disk.parent.name))

    # --- desktops ---------------------------------------------------------------------------------

    def serial_ready(self, name: str) -> bool:
        """Whether NAME's serial line said it is ready since the log was last cleared."""
        try:
            text = self.serial_log(name).read_text(errors="replace")
        except FileNotFoundError:
            return False
        return f"{READY_MARKER}{name} " in text or text.rstrip().endswith(f"{READY_MARKER}{name}")

    def clear_serial(self, name: str) -> None:
        self.serial_log(name).unlink(missing_ok=True)

    def write_join(self, name: str, secret: str) -> None:
        path = self.join_file(name)  # the name checked before anything is made
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)

    def read_join(self, name: str) -> str:
        try:
            return self.join_file(name).read_text()
        except FileNotFoundError:
            return ""

    def discard_join(self, name: str) -> None:
        self.join_file(name).unlink(missing_ok=True)

    def close_sockets(self, name: str) -> None:
        name = self.domain(name)
        host_access.close_socket(self.paths.vnc_socket(name))
        host_access.close_socket(self.paths.channel_socket(name))

    # --- templates --------------------------------------------------------------------------------

    def template_files(self) -> TemplateFiles:
        """Every template's files (and restore fifos a crash left behind are swept)."""
        self._sweep_restores()
        return TemplateFiles(saved=frozenset(n for n in self._marked(".save") if self._finished(n)),
                             retired=frozenset(self._marked(".retired")))

    def _marked(self, suffix: str) -> list[str]:
        prefix = naming.template_prefix(self.instance)
        names = (path.name[:-len(suffix)] for path in sorted(self.templates_dir.glob(f"{prefix}*{suffix}")))
        return [name for name in names if self._template.fullmatch(name) and "--" not in name]

    def template_state(self, name: str) -> tuple[bool, bool]:
        """(saved, retired): a retired template is never saved, whatever its file says."""
        retired = self.retired_file(name).exists()
        return (not retired and self._finished(name)), retired

    def _finished(self, name: str) -> bool:
        return self.saved_xml(name) is not None

    def saved_xml(self, name: str) -> str | None:
        """The domain XML of NAME's finished save file; None if there is none."""
        try:
            return save_image.read_header(self.save_file(name)).xml
        except (FileNotFoundError, PermanentError):
            return None

    def begin_save(self, name: str) -> Path:
        """Where libvirt writes NAME's save file: a partial name, until `commit_save`."""
        partial = self.save_file(name).with_suffix(".partial")
        self.templates_dir.mkdir(mode=host_access.PRIVATE, parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        return partial

    def commit_save(self, name: str) -> None:
        path = self.save_file(name)
        path.with_suffix(".partial").rename(path)  # only a finished file ever carries the final name

    def discard_save(self, name: str) -> None:
        path = self.save_file(name)
        path.with_suffix(".partial").unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def retire(self, name: str) -> None:
        mark = self.retired_file(name)
        self.templates_dir.mkdir(mode=host_access.PRIVATE, parents=True, exist_ok=True)
        mark.touch()  # first: from here on nothing restores from it or builds over it
        self.discard_save(name)

    def unretire(self, name: str) -> None:
        self.retired_file(name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def feed(self, clone: str, template: str, xml: str) -> Iterator[Path]:
        """CLONE's restore fifo: TEMPLATE's save file under XML (save_image.CloneFeed)."""
        with save_image.CloneFeed(self.save_file(template), self.paths.restore_fifo(self.domain(clone)),
                                  xml) as fed:
            yield fed.path

    def _sweep_restores(self) -> None:
        for path in [*self.run_dir.glob("*.restore"), *self.run_dir.glob(".*.restore.new")]:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > RESTORE_SWEEP_S:
                    path.unlink()


def serve(files: LocalHostFiles, op: HostOp, args: dict[str, Any]) -> dict[str, Any]:
    """Carry out OP (any but FEED) with ARGS on FILES: the host agent's side of RelayedHostFiles."""
    if op == HostOp.TEMPLATE_FILES:
        found = files.template_files()
        return {"saved": sorted(found.saved), "retired": sorted(found.retired)}
    if op == HostOp.PREPARE:
        files.prepare([Path(d) for d in host_ops.texts(args, "dirs")])
        return {}
    if op == HostOp.IMAGES:
        have = files.images()
        return {"images": sorted(have) if have is not None else None}
    if op == HostOp.DOMAIN_TYPE:
        return {"domain_type": files.domain_type(Path(host_ops.text(args, "kernel")))}
    name = host_ops.text(args, "name")
    match op:
        case HostOp.SERIAL_READY:
            return {"ready": files.serial_ready(name)}
        case HostOp.CLEAR_SERIAL:
            files.clear_serial(name)
        case HostOp.WRITE_JOIN:
            files.write_join(name, host_ops.text(args, "secret"))
        case HostOp.READ_JOIN:
            return {"secret": files.read_join(name)}
        case HostOp.DISCARD_JOIN:
            files.discard_join(name)
        case HostOp.CLOSE_SOCKETS:
            files.close_sockets(name)
        case HostOp.TEMPLATE_STATE:
            saved, retired = files.template_state(name)
            return {"saved": saved, "retired": retired}
        case HostOp.SAVED_XML:
            return {"xml": files.saved_xml(name)}
        case HostOp.BEGIN_SAVE:
            return {"path": str(files.begin_save(name))}
        case HostOp.COMMIT_SAVE:
            files.commit_save(name)
        case HostOp.DISCARD_SAVE:
            files.discard_save(name)
        case HostOp.RETIRE:
            files.retire(name)
        case HostOp.UNRETIRE:
            files.unretire(name)
        case _:
            raise InvalidInput(f"request: {op.value} is not a one-shot operation", field="request")
    return {}


class RelayedHostFiles:
    """Another host's files, each method one operation through that host's console relay.

    A relay that cannot be reached or does not answer as the protocol says is HostAgentUnreachable
    (a TemporaryError: the step waits and is tried again; the host is not taken for dead); an
    operation the agent refused is a PermanentError with its reason."""

    def __init__(self, address: str, port: int, tls: Callable[[], ssl.SSLContext | None], *,
                 timeout: float = 10.0) -> None:
        self.address, self.port, self.timeout = address, port, timeout
        self._tls_factory = tls
        self._tls: ssl.SSLContext | None = None

    def serial_ready(self, name: str) -> bool:
        return bool(self._call(HostOp.SERIAL_READY, name=name)["ready"])

    def clear_serial(self, name: str) -> None:
        self._call(HostOp.CLEAR_SERIAL, name=name)

    def write_join(self, name: str, secret: str) -> None:
        self._call(HostOp.WRITE_JOIN, name=name, secret=secret)

    def read_join(self, name: str) -> str:
        return str(self._call(HostOp.READ_JOIN, name=name)["secret"])

    def discard_join(self, name: str) -> None:
        self._call(HostOp.DISCARD_JOIN, name=name)

    def close_sockets(self, name: str) -> None:
        self._call(HostOp.CLOSE_SOCKETS, name=name)

    def template_files(self) -> TemplateFiles:
        found = self._call(HostOp.TEMPLATE_FILES)
        return TemplateFiles(saved=frozenset(found["saved"]), retired=frozenset(found["retired"]))

    def template_state(self, name: str) -> tuple[bool, bool]:
        found = self._call(HostOp.TEMPLATE_STATE, name=name)
        return bool(found["saved"]), bool(found["retired"])

    def saved_xml(self, name: str) -> str | None:
        xml = self._call(HostOp.SAVED_XML, name=name)["xml"]
        return str(xml) if xml is not None else None

    def begin_save(self, name: str) -> Path:
        return Path(self._call(HostOp.BEGIN_SAVE, name=name)["path"])

    def commit_save(self, name: str) -> None:
        self._call(HostOp.COMMIT_SAVE, name=name)

    def discard_save(self, name: str) -> None:
        self._call(HostOp.DISCARD_SAVE, name=name)

    def retire(self, name: str) -> None:
        self._call(HostOp.RETIRE, name=name)

    def unretire(self, name: str) -> None:
        self._call(HostOp.UNRETIRE, name=name)

    def prepare(self, dirs: list[Path]) -> None:
        self._call(HostOp.PREPARE, dirs=[str(d) for d in dirs])

    def images(self) -> frozenset[str] | None:
        found = self._call(HostOp.IMAGES)["images"]
        return frozenset(str(sha) for sha in found) if found is not None else None

    def domain_type(self, kernel: Path) -> str:
        answer = str(self._call(HostOp.DOMAIN_TYPE, kernel=str(kernel))["domain_type"])
        if answer not in ("kvm", "qemu"):
            raise PermanentError(f"host {self.address}: domain type {answer[:16]!r} is neither kvm nor qemu")
        return answer

    @contextlib.contextmanager
    def feed(self, clone: str, template: str, xml: str) -> Iterator[Path]:
        """The clone's restore fifo on the other host, served while the context lasts (closing
        the connection tells the agent the restore is over)."""
        with self._open(HostOp.FEED) as conn:
            answer = self._exchange(conn, HostOp.FEED, {"name": clone, "template": template, "xml": xml})
            yield Path(answer["path"])

    def _call(self, op: HostOp, **args: Any) -> dict[str, Any]:
        with self._open(op) as conn:
            return self._exchange(conn, op, args)

    @contextlib.contextmanager
    def _open(self, op: HostOp) -> Iterator[ssl.SSLSocket]:
        if self._tls is None:
            self._tls = self._tls_factory()
            if self._tls is None:
                raise TemporaryError("no client certificate for console relays", delay=60)
        try:
            raw = socket.create_connection((self.address, self.port), timeout=self.timeout)
            conn = self._tls.wrap_socket(raw, server_hostname=self.address)
        except OSError as err:
            raise HostAgentUnreachable(f"host files of {self.address}: relay not reached: {err}", delay=5) from err
        with conn:
            try:
                conn.sendall(console.request(op.value, console.Stream.HOST))
                console.check_reply(_line(conn, console.MAX_LINE))
            except (OSError, TemporaryError) as err:
                raise HostAgentUnreachable(f"host files of {self.address}: {op.value}: {err}", delay=5) from err
            yield conn

    def _exchange(self, conn: ssl.SSLSocket, op: HostOp, args: dict[str, Any]) -> dict[str, Any]:
        try:
            conn.sendall(host_ops.encode(args))
            answer = host_ops.decode(_line(conn, host_ops.MAX_JSON))
        except (OSError, InvalidInput) as err:
            raise HostAgentUnreachable(f"host files of {self.address}: {op.value}: {err}", delay=5) from err
        if "error" in answer:
            raise PermanentError(f"host {self.address}: {op.value}: {answer['error']}")
        return answer


def _line(conn: ssl.SSLSocket, limit: int) -> bytes:
    """The one line the relay sends before it waits for us (after OK: our arguments; after the
    answer: our close), so it is the end of what has arrived: OSError for more, or past LIMIT."""
    out = bytearray()
    while not out.endswith(b"\n"):
        if len(out) > limit:
            raise OSError(f"reply longer than {limit} bytes")
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("connection closed before the reply")
        out += chunk
        if b"\n" in out[:-1]:
            raise OSError("more than one line in the reply")
    return bytes(out)
