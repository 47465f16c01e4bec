"""Files only their owner may read (keys, tokens, passwords), written one way everywhere.

The directory is made 0700 (and tightened to 0700 if an older version or the umask left it
looser); the file is created 0600 under a temporary name and renamed into place, so it is
never readable by others for an instant and a crash leaves the old file or the new one, never
half of one.
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o077:
        directory.chmod(0o700)


def write_private(path: Path, data: bytes | str) -> None:
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
