"""Fixtures of the label tests: a throwaway PostgreSQL cluster (initdb + pg_ctl, unix socket in a
temp dir, a free port) started once per session, and ``db``: a fresh, empty store location on
SQLite and on PostgreSQL (every store/API test runs on both).

Without PostgreSQL the PostgreSQL cases skip, except under CI=true, where they fail: CI
installs Debian's ``postgresql`` (scripts/install.sh) and must run them.
"""
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from rlhfkit.label.store import init_store

_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run as the ``postgres`` user."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--"] + argv


@pytest.fixture(scope="session")
def postgres_server():
    """(socket dir, port) of a fresh cluster; stopped and removed at the end of the session."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    problem = None
    if not (initdb and pg_ctl):
        problem = "PostgreSQL server binaries (initdb, pg_ctl) not found"
    elif os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            problem = "running as root and there is no 'postgres' user"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}: CI must run the PostgreSQL tests (scripts/install.sh "
                        "installs Debian's postgresql)")
        pytest.skip(problem)
    root = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-"))
    root.chmod(0o755)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres",
                                 "-E", "UTF8", "--no-locale"]),
                   check=True, capture_output=True)
    options = f"-k {sock} -p {port} -c listen_addresses='' -c max_connections=200"
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l",
                                 str(root / "log"), "-w", "start"]), check=True,
                   capture_output=True)
    try:
        yield str(sock), port
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_postgres_db(server) -> str:
    import psycopg

    sock, port = server
    name = f"label_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(host=sock, port=port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not user input
    return f"postgresql://postgres@/{name}?host={sock}&port={port}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    """A --db value for a new, empty store (no tables yet)."""
    if request.param == "sqlite":
        return str(tmp_path / "labels.sqlite")
    return new_postgres_db(request.getfixturevalue("postgres_server"))


@pytest.fixture
def store_and_admin(db):
    """(db, store, admin token) of an initialised store."""
    store, admin_token = init_store(db)
    yield db, store, admin_token
    store.close()
