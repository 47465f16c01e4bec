"""A throwaway PostgreSQL cluster for tests: Debian's PostgreSQL 15 binaries, run by the project
itself (no systemd, no Debian cluster), owned by the `postgres` user, listening on a Unix socket
in its own directory only (no TCP port), durability off (a test database is thrown away).

Each test gets its own database, copied from a migrated template (CREATE DATABASE ... TEMPLATE,
a file copy: milliseconds), so tests stay as independent as with a SQLite file each.
"""

from __future__ import annotations

import contextlib
import glob
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

OWNER = "shiftdesk"  # owns the schema and runs the migrations
APP = "shiftdesk_app"  # what the control plane connects as: may not UPDATE or DELETE the audit log


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup-host.sh (make test does)")
    return found[-1]


def _as_postgres(*cmd: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=120)


class Postgres:
    def __init__(self, parent: Path | None = None) -> None:
        """A cluster in a new directory under PARENT (default /var/tmp; a benchmark puts it in its
        own data directory, where its sweep finds it after a kill: bench/cleanup.py)."""
        self.dir = Path(tempfile.mkdtemp(prefix="shiftdesk-pg-", dir=parent or "/var/tmp"))
        self.data = self.dir / "data"

    def start(self) -> Postgres:
        shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o755)  # the socket: tests connect as root through it
        _as_postgres(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                     "--locale=C.UTF-8")
        options = f"-k {self.dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off " \
                  "-c full_page_writes=off -c max_connections=200"
        _as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o", options, "start")
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {OWNER} LOGIN")
            conn.execute(f"CREATE ROLE {APP} LOGIN")
        return self

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host=str(self.dir), user="postgres", dbname=dbname, autocommit=True)

    def url(self, dbname: str, role: str = OWNER) -> str:
        return f"postgresql+psycopg://{role}@/{dbname}?host={self.dir}"

    def create_database(self, template: str | None = None) -> str:
        """A new empty database owned by OWNER (a copy of TEMPLATE if given); its name."""
        name = f"t_{secrets.token_hex(6)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {OWNER}" + (f" TEMPLATE {template}" if template else ""))
            conn.execute(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")
            conn.execute(f"GRANT CONNECT ON DATABASE {name} TO {APP}")
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def migrated_template(self) -> str:
        """A database migrated to the newest schema, with APP granted its share, to copy per test."""
        from controlplane.db.engine import make_engine, migrate  # noqa: PLC0415 - after the cluster is up

        name = self.create_database()
        engine = make_engine(self.url(name))
        migrate(engine, app_role=APP)
        engine.dispose()
        return name

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # never started, or already gone
            _as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
