"""RFB encodings the filter lets a browser negotiate (everything else is stripped)."""

from __future__ import annotations

RAW, COPYRECT, TIGHT, ZRLE, TIGHT_PNG = 0, 1, 7, 16, -260
DESKTOP_SIZE, LAST_RECT, CURSOR, X_CURSOR = -223, -224, -239, -240
EXTENDED_DESKTOP_SIZE, ALPHA_CURSOR = -308, -314
QEMU_POINTER_MOTION, QEMU_EXTENDED_KEY, QEMU_LED = -257, -258, -261
EXTENDED_MOUSE_BUTTONS, TIGHT_NO_ZLIB = -316, -317

PIXEL = {RAW, COPYRECT, TIGHT, ZRLE, TIGHT_PNG}
PSEUDO = {DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE, LAST_RECT, CURSOR, X_CURSOR, ALPHA_CURSOR,
          QEMU_POINTER_MOTION, QEMU_EXTENDED_KEY, QEMU_LED, EXTENDED_MOUSE_BUTTONS, TIGHT_NO_ZLIB}
JPEG_QUALITY = range(-32, -22)  # -32..-23
COMPRESS_LEVEL = range(-256, -246)  # -256..-247
FINE_QUALITY = range(-512, -411)  # -512..-412 (fine quality and subsampling)
QUALITY_LEVEL_EXT = range(-768, -762)  # -768..-763


def allowed(encoding: int) -> bool:
    return (encoding in PIXEL or encoding in PSEUDO or encoding in JPEG_QUALITY or encoding in COMPRESS_LEVEL
            or encoding in FINE_QUALITY or encoding in QUALITY_LEVEL_EXT)
