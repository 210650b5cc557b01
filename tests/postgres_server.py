"""A real PostgreSQL server for the warehouse tests: Debian's ``postgresql`` package (``make system-deps``
installs it), started once per session on 127.0.0.1 and a free port, data in a temporary folder,
stopped when the session ends. PostgreSQL refuses to run as root: as root the server runs as the
``postgres`` user the package creates. Tests that use :func:`postgres` skip, saying why, where the
server binaries (``$KFMLOPS_PG_BIN``, default the newest Debian ``/usr/lib/postgresql/N/bin``) or the ADBC
driver are missing."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

PG_BIN = Path(os.environ.get("KFMLOPS_PG_BIN") or max(
    Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    default=Path("/usr/lib/postgresql/15/bin")))
USER, DATABASE = "kfmlops", "warehouse"
PASSWORD = "s3cret/Pw@x%!"  # characters a connection URI must escape


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str

    def uri(self, parameters: str) -> str:
        """A source URI on this server, without the password: ``parameters`` as after the ``?``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}?{parameters}"

    def _connect(self, database: str | None = None):
        from urllib.parse import quote

        from adbc_driver_postgresql import dbapi

        return dbapi.connect(f"postgresql://{self.user}:{quote(self.password, safe='')}@{self.host}:{self.port}/"
                             f"{database or self.database}", autocommit=True)

    def execute(self, sql: str, database: str | None = None) -> None:
        with self._connect(database) as connection, connection.cursor() as cursor:
            cursor.execute(sql)

    def load(self, name: str, table: pa.Table) -> None:
        """``table`` as table ``name`` (replacing one of that name), rows in order."""
        with self._connect() as connection, connection.cursor() as cursor:
            cursor.adbc_ingest(name, table, mode="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres():
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"no PostgreSQL server binaries at {PG_BIN} (apt-get install postgresql, or make system-deps)")
    try:
        import adbc_driver_postgresql  # noqa: F401
    except ImportError:
        pytest.skip("adbc-driver-postgresql is not installed (the warehouse extra)")
    as_postgres: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="kfmlops-pg-"))
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    password_file = root / "password"
    password_file.write_text(PASSWORD)
    if as_postgres:
        shutil.chown(password_file, "postgres")
    data, port = root / "data", _free_port()
    pg_ctl = [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
                    f"--pwfile={password_file}", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*pg_ctl, "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
                    f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off", "start"],
                   check=True, capture_output=True)
    try:
        server = Postgres("127.0.0.1", port, USER, PASSWORD, DATABASE)
        server.execute(f"CREATE DATABASE {DATABASE}", database="postgres")
        yield server
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
