"""A throwaway PostgreSQL server on 127.0.0.1, for tests and benchmarks.

Uses Debian's server (``apt-get install -y postgresql``: ``initdb`` and ``postgres`` under
``/usr/lib/postgresql/<version>/bin``): a new cluster in a temporary folder, trust
authentication on loopback only, durability off (a test database needs none). PostgreSQL
refuses to run as root, so under root the cluster belongs to the ``postgres`` user the
package creates and the server runs as that user. ``new_database()`` gives each test its
own empty database.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

USER = "aml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindir() -> Path | None:
    on_path = shutil.which("pg_ctl") or shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class LocalPostgres:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.bindir = _bindir()
        self.directory: Path | None = None
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return _bindir() is not None

    def _as_owner(self) -> dict:
        """Popen arguments that run a command as the cluster's owner (postgres, under root)."""
        if os.geteuid() != 0:
            return {}
        import pwd

        pw = pwd.getpwnam("postgres")
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> "LocalPostgres":
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.directory = Path(tempfile.mkdtemp(prefix="aml-postgres-"))
        owner = self._as_owner()
        if owner:
            os.chown(self.directory, owner["user"], owner["group"])
        data, log = self.directory / "data", self.directory / "server.log"
        init = subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
                               "--no-locale", "--no-sync"], capture_output=True, text=True, **owner)
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-500:]}")
        with open(log, "ab") as out:
            if owner:
                os.chown(log, owner["user"], owner["group"])
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.directory),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=60"],
                stdout=out, stderr=subprocess.STDOUT, **owner)
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with code {self.proc.returncode}: "
                                   f"{log.read_text()[-500:] if log.exists() else ''}")
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", connect_timeout=1).close()
                return self
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not answer on port {self.port} within {timeout}s")

    def new_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
