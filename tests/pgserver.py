"""A real PostgreSQL server in a temporary folder on 127.0.0.1, for the tests and for
benchmarks/chaos.py: `initdb`, `pg_ctl start`, and a restart or a stop on demand (the fault
tests stop it under running workers). As root it runs as the `postgres` user, since
PostgreSQL refuses to run as root. .ci/run installs the server binaries."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time


class Unavailable(RuntimeError):
    """No PostgreSQL binaries here (or no user to run them as root)."""


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise Unavailable("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
        self.as_user: list[str] = []
        self.uid = self.gid = None
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no 'postgres' user to run the server") from None
            self.as_user, self.uid, self.gid = ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid
        self.root = tempfile.mkdtemp(prefix="vae-search-pg-")
        if self.uid is not None:
            os.chown(self.root, self.uid, self.gid)
        self.data, self.port = os.path.join(self.root, "data"), free_port()
        subprocess.run([*self.as_user, self.initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", self.data, "-l", os.path.join(self.root, "log"), "-w", "-t", "60", "start",
             "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off"],
            check=True, capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self.as_user, self.pg_ctl, "-D", self.data, "-m", mode, "-w", "stop"], capture_output=True)

    def restart(self, down_s: float = 0.0) -> None:
        """Fast shutdown (clients are disconnected), then start again."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
