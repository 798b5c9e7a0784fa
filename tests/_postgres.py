"""A throw-away PostgreSQL server for the tests (Debian's ``postgresql`` package).

initdb + pg_ctl in a private temporary directory, listening on 127.0.0.1 at a free port
only (no Unix socket in the system's directory), password authentication (scram), the
password in a 0600 ``.pgpass`` the tests point ``PGPASSFILE`` at. PostgreSQL refuses to
run as root: as root the server runs as the unprivileged ``postgres`` system user the
Debian package makes (its data directory is handed to that user); otherwise as the
current user.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "frip_test"
SERVER_USER = "postgres"  # made by Debian's postgresql-common


def binaries() -> Path | None:
    """The directory of the newest installed PostgreSQL server binaries, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def unavailable() -> str | None:
    """Why no test server can be started here, or None."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        return 'psycopg is not installed (pip install "frip-engine[postgres]"): postgres tests skip'
    if binaries() is None:
        return (
            "PostgreSQL is not installed (Debian package postgresql; `make test` installs it "
            "as root): the postgres gallery-store tests are skipped"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no unprivileged '{SERVER_USER}' user to run it"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """One running test server: ``env()`` holds the PG* variables that reach it."""

    root: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        return {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": SUPERUSER,
            "PGDATABASE": dbname,
            "PGPASSFILE": str(self.root / "pgpass"),
        }

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        user = SERVER_USER if os.geteuid() == 0 else None
        bin_dir = binaries()
        assert bin_dir is not None
        return subprocess.run(
            [str(bin_dir / args[0]), *args[1:]],
            user=user,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "30", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would, and wait until its backends (which
        notice its death on their own) are gone too, so it can be started again."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        for process in [pid, *map(int, children.stdout.split())]:
            while time.monotonic() < deadline and Path(f"/proc/{process}").exists():
                time.sleep(0.02)

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(autocommit=True, **_kwargs(self.env())) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


def _kwargs(env: dict[str, str]) -> dict[str, str]:
    return {
        "host": env["PGHOST"],
        "port": env["PGPORT"],
        "user": env["PGUSER"],
        "dbname": env["PGDATABASE"],
        "passfile": env["PGPASSFILE"],
    }


def start(durable: bool = False) -> Server:
    """initdb and start a server; the caller stops it (``stop``) and removes ``root``.
    Tests run it without fsync (nothing they check needs the disk flushed, the SIGKILL
    test included: the files survive a killed server); ``durable`` (benchmarks) keeps
    PostgreSQL's defaults (fsync, full page writes) and lets 4 GB of WAL accumulate
    between checkpoints, so that a run of 67 MB block commits is not checkpoint-bound."""
    root = Path(tempfile.mkdtemp(prefix="frip-pg-"))
    password = secrets.token_hex(16)
    server = Server(root, _free_port(), password)
    (root / "pwfile").write_text(password + "\n")
    pgpass = root / "pgpass"
    pgpass.write_text(f"127.0.0.1:{server.port}:*:{SUPERUSER}:{password}\n")
    pgpass.chmod(0o600)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SERVER_USER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        os.chown(root / "pwfile", owner.pw_uid, owner.pw_gid)
    root.chmod(0o700)
    server._run(
        "initdb",
        "-D",
        str(server.data),
        "-U",
        SUPERUSER,
        "--pwfile",
        str(root / "pwfile"),
        "--auth",
        "scram-sha-256",
        "--encoding",
        "UTF8",
        "--no-sync",
    )
    (root / "pwfile").unlink()
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"port = {server.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{root}'\n"
            "shared_buffers = 64MB\nmax_connections = 60\n"
        )
        conf.write("max_wal_size = 4GB\n" if durable else "fsync = off\nfull_page_writes = off\n")
    server.start()
    return server


def stop(server: Server) -> None:
    """Stop the server and delete its directory."""
    try:
        server.stop()
    finally:
        shutil.rmtree(server.root, ignore_errors=True)
