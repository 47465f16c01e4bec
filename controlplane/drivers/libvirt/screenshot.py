"""A desktop's screen as a small PNG, through libvirt (virDomainScreenshot): for the console's
desktop view. QEMU hands over a PPM of the whole framebuffer; it is read with a size cap (a
guest chooses its resolution), scaled down and encoded as PNG with Pillow."""

from __future__ import annotations

import io

import libvirt
from PIL import Image

from controlplane.errors import PermanentError

MAX_PPM_BYTES = 64 << 20  # 4096 x 4096 x 3 plus a header: no guest resolution needs more
THUMB_WIDTH = 640


def capture_png(conn: libvirt.virConnect, dom: libvirt.virDomain, width: int = THUMB_WIDTH) -> bytes:
    stream = conn.newStream(0)
    try:
        dom.screenshot(stream, 0, 0)
        chunks, size = [], 0
        while chunk := stream.recv(1 << 20):
            if not isinstance(chunk, bytes):  # -2: would block (never for a blocking stream)
                continue
            size += len(chunk)
            if size > MAX_PPM_BYTES:
                raise PermanentError(f"screenshot of {dom.name()}: larger than {MAX_PPM_BYTES} bytes")
            chunks.append(chunk)
        stream.finish()
    except BaseException:
        stream.abort()
        raise
    with Image.open(io.BytesIO(b"".join(chunks))) as image:
        image.thumbnail((width, width * 2))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG", optimize=False)
    return out.getvalue()
