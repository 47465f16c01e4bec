"""Instant clones: a per-clone copy of a template's libvirt save file, under the clone's own name.

libvirt restores a saved domain under the XML stored in the save file and refuses `restore
--xml` with another UUID (its ABI check compares the two). The file is a small header, the
domain XML and a cookie, then QEMU's migration stream:

    0   magic "LibvirtQemudSave" (16 bytes; "LibvirtQemudPart" while libvirt is still writing)
    16  uint32 LE version, data_len, was_running, compressed, cookieOffset, then 14 unused
    92  data_len bytes: the XML, NUL, the cookie XML at cookieOffset, NUL, padding NULs
    92 + data_len: QEMU's stream

So a clone is: the same header, *its* XML (new name, UUID, generation ID, disk, sockets), the
same cookie, then the template's stream, fed to libvirt through a fifo from the template's own
file (`CloneFeed`): clones share the one save file and copy nothing. The XML is
edited as libvirt wrote it (addresses, labels and all), not re-rendered from our model, so
nothing the device state depends on changes beyond what a clone must change. This trick
lives here and nowhere else; the rest of ShiftDesk sees "restore a clone".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from controlplane.drivers.libvirt.domxml import NS
from controlplane.errors import PermanentError

MAGIC = b"LibvirtQemudSave"
PARTIAL = b"LibvirtQemudPart"
HEADER = struct.Struct("<16s5I56x")  # 92 bytes
MAX_DATA = 4 * 1024 * 1024  # the XML and cookie of one domain: far below this, ever
PIPE_SIZE = 1024 * 1024  # the feed's pipe buffer (the kernel's default for root's maximum)


@dataclass(frozen=True)
class SaveHeader:
    version: int
    data_len: int
    was_running: int
    compressed: int
    cookie_offset: int
    xml: str
    cookie: bytes  # NUL-terminated cookie XML, or b"" when the file has none

    @property
    def stream_offset(self) -> int:
        return HEADER.size + self.data_len


def read_header(path: Path) -> SaveHeader:
    """The header, XML and cookie of a finished save file. PermanentError if it is not one."""
    with path.open("rb") as fh:
        raw = fh.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise PermanentError(f"save file {path.name}: truncated header")
        magic, version, data_len, was_running, compressed, cookie_offset = HEADER.unpack(raw)
        if magic == PARTIAL:
            raise PermanentError(f"save file {path.name}: libvirt never finished writing it")
        if magic != MAGIC:
            raise PermanentError(f"save file {path.name}: not a libvirt QEMU save file")
        if not 0 < data_len <= MAX_DATA or (cookie_offset and cookie_offset >= data_len):
            raise PermanentError(f"save file {path.name}: implausible data length {data_len}")
        data = fh.read(data_len)
    if len(data) < data_len:
        raise PermanentError(f"save file {path.name}: truncated data")
    xml_end = data.index(b"\0") if b"\0" in data else data_len
    cookie = b""
    if cookie_offset:
        end = data.find(b"\0", cookie_offset)
        cookie = data[cookie_offset:(end if end >= 0 else data_len)] + b"\0"
    return SaveHeader(version, data_len, was_running, compressed, cookie_offset,
                      data[:xml_end].decode(), cookie)


def clone_head(template: Path, xml: str) -> tuple[bytes, SaveHeader]:
    """A clone's header, XML and cookie (what precedes QEMU's stream), and TEMPLATE's header."""
    head = read_header(template)
    if head.compressed:
        raise PermanentError(f"save file {template.name}: compressed save files are not supported")
    data = bytearray(xml.encode() + b"\0")
    cookie_offset = 0
    if head.cookie:
        cookie_offset = len(data)
        data += head.cookie
    data += b"\0" * (-len(data) % 4096)  # keep QEMU's stream page-aligned, as libvirt does
    header = HEADER.pack(MAGIC, head.version, len(data), head.was_running, head.compressed, cookie_offset)
    return header + bytes(data), head


class CloneFeed:
    """A clone's save file, served at PATH while the block runs: its header and XML, then
    TEMPLATE's stream read in the kernel (sendfile). Nothing is copied: a per-clone file held the
    whole memory image (1 GiB guest: about 700 MB) once more on disk and in the page cache, for
    each clone of a burst at once.

    PATH is a fifo, and every open of it gets the file from the start: as soon as a reader has
    opened one fifo, a fresh one takes its name for the next. libvirt 9.0 opens a save file once;
    later versions read the header in one open and restore from another.

        with CloneFeed(template, staged, xml) as feed:
            conn.restoreFlags(str(feed.path), None, flags)
    """

    def __init__(self, template: Path, path: Path, xml: str) -> None:
        self.head, saved = clone_head(template, xml)
        self.template, self.path, self.stream_offset = template, path, saved.stream_offset
        self.served = 0  # readers that read it to the end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"feed-{path.name}", daemon=True)

    def __enter__(self) -> CloneFeed:
        self._fresh_fifo()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for _ in range(300):  # the writer waiting for a reader is let go: its write fails, it stops
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
            self._thread.join(timeout=0.1)
            if not self._thread.is_alive():
                break
        self.path.unlink(missing_ok=True)

    def _fresh_fifo(self) -> None:
        """A new fifo under PATH's name (a reader that opened the old one keeps it)."""
        scratch = self.path.with_name(f".{self.path.name}.new")
        scratch.unlink(missing_ok=True)
        os.mkfifo(scratch, 0o600)
        scratch.replace(self.path)

    def _serve(self) -> None:
        with self.template.open("rb") as src:
            size = os.fstat(src.fileno()).st_size
            while not self._stop.is_set():
                try:
                    fd = os.open(self.path, os.O_WRONLY)  # waits for a reader
                except OSError:
                    return  # the fifo is gone
                try:
                    self._fresh_fifo()  # for the next open, which must start from the start
                    if not self._stop.is_set():
                        self._feed(fd, src.fileno(), size)
                        self.served += 1
                except OSError:
                    continue  # the reader closed early (it looked at the header only)
                finally:
                    os.close(fd)

    def _feed(self, fd: int, src: int, size: int) -> None:
        with contextlib.suppress(OSError):  # fewer, larger hand-overs to QEMU than 64 KiB at a time
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        view = memoryview(self.head)
        while view:
            view = view[os.write(fd, view):]
        offset = self.stream_offset
        while offset < size:
            sent = os.sendfile(fd, src, offset, min(size - offset, 1 << 30))
            if sent == 0:
                return  # the template shrank: libvirt finds the stream cut short and says so
            offset += sent


@dataclass(frozen=True)
class CloneNames:
    """What makes a restored clone a different domain from its template and its siblings."""

    name: str
    uuid: str
    genid: str
    pool: str
    desktop_id: int
    generation: int
    template: str
    created: int
    volume: str
    serial: Path
    vnc: Path
    channel: Path | None


def rewrite_for_clone(xml: str, new: CloneNames) -> str:
    """The template's saved XML, renamed to NEW. Everything else stays byte-for-byte libvirt's."""
    root = ET.fromstring(xml)  # noqa: S314 - from our own save file, written by our libvirtd
    _set(root, "name", new.name)
    _set(root, "uuid", new.uuid)
    _set(root, "genid", new.genid)
    tag = root.find(f"metadata/{{{NS}}}desktop")
    if tag is None:
        raise PermanentError("template save file: no ShiftDesk metadata")
    for key, value in (("pool", new.pool), ("desktop-id", str(new.desktop_id)),
                       ("generation", str(new.generation)), ("role", "desktop"),
                       ("template", new.template), ("created", str(new.created))):
        _set(tag, f"{{{NS}}}{key}", value)
    cmdline = root.find("os/cmdline")
    if cmdline is not None and cmdline.text:
        words = [w for w in cmdline.text.split() if not w.startswith("shiftdesk.name=")]
        cmdline.text = " ".join([*words, f"shiftdesk.name={new.name}"])
    disk = root.find("devices/disk[@device='disk']")
    if disk is None or disk.find("source") is None:
        raise PermanentError("template save file: no disk")
    for backing in disk.findall("backingStore"):
        disk.remove(backing)
    disk.find("source").set("volume", new.volume)  # type: ignore[union-attr]
    for serial in root.findall("devices/serial/source") + root.findall("devices/console/source"):
        serial.set("path", str(new.serial))
    for graphics in root.findall("devices/graphics[@type='vnc']"):
        graphics.set("socket", str(new.vnc))
        for listen in graphics.findall("listen[@type='socket']"):
            listen.set("socket", str(new.vnc))
    channels = root.findall("devices/channel[@type='unix']/source")
    if channels and new.channel is None:
        raise PermanentError("template save file: has a host channel the clone would not get")
    for source in channels:
        source.set("path", str(new.channel))
    return ET.tostring(root, encoding="unicode")


def _set(parent: ET.Element, tag: str, text: str) -> None:
    el = parent.find(tag)
    if el is None:
        el = ET.SubElement(parent, tag)
    el.text = text
