"""The data directory is root's alone, and so is every database, key and secret file in it.

Modes must not depend on the umask of whoever started the control plane, and an installation
made by an older version (data dir 0755, database 0644) is tightened at the next start.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.config import Settings
from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.main import build_context, tls_files
from controlplane.services.tokens import load_or_create_key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", instance="modes", libvirt={"uri": "fake://"})


def start_and_write(settings: Settings) -> None:
    ctx = build_context(settings)
    tls_files(settings)
    with session_scope(ctx.engine) as session:  # a write, so the -wal and -shm files exist
        audit.append(session=session, actor="test", action="test.write", target="modes")
    for suffix in ("-wal", "-shm"):
        assert (settings.data_dir / f"shiftdesk.db{suffix}").exists()


def assert_private(data: Path) -> None:
    assert mode(data) == 0o700, oct(mode(data))
    assert mode(data / "tls") == 0o700, oct(mode(data / "tls"))
    for name in ("shiftdesk.db", "shiftdesk.db-wal", "shiftdesk.db-shm", "token.key",
                 "tls/ca.key", "tls/server.key"):
        assert mode(data / name) == 0o600, f"{name}: {oct(mode(data / name))}"


def test_a_fresh_data_dir_and_its_secrets_are_root_only(tmp_path, loose_umask):
    config = settings(tmp_path)
    start_and_write(config)
    assert_private(config.data_dir)


def test_an_older_installation_is_tightened_at_start(tmp_path, loose_umask):
    config = settings(tmp_path)
    data = config.data_dir
    (data / "tls").mkdir(parents=True)
    data.chmod(0o755)
    (data / "tls").chmod(0o755)
    (data / "shiftdesk.db").touch(mode=0o644)  # an empty file is an empty SQLite database
    (data / "token.key").write_bytes(os.urandom(32))
    (data / "token.key").chmod(0o644)
    start_and_write(config)
    assert_private(data)


def test_a_key_file_is_created_root_only(tmp_path, loose_umask):
    key = tmp_path / "keys" / "token.key"
    assert len(load_or_create_key(key)) == 32
    assert mode(key) == 0o600
