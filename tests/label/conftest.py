"""Fixtures of the label tests: a throwaway PostgreSQL cluster (initdb + pg_ctl, unix socket in a
temp dir, a free port) started once per session, and ``db``: a fresh, empty store location on
SQLite and on PostgreSQL (every store/API test runs on both).

Without PostgreSQL the PostgreSQL cases skip, except under CI=true, where they fail: CI
installs Debian's ``postgresql`` (scripts/install.sh) and must run them.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from rlhfkit.label.store import init_store


def _load_bench():
    """bench/label.py holds the throwaway cluster, the live server and the load clients the
    bench and these tests share (written once)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "label.py"
    spec = importlib.util.spec_from_file_location("bench_label", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_label"] = module
    spec.loader.exec_module(module)
    return module


live = _load_bench()


@pytest.fixture(scope="session")
def postgres_server():
    """(socket dir, port) of a fresh cluster; stopped and removed at the end of the session."""
    problem = live.postgres_missing()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}: CI must run the PostgreSQL tests (scripts/install.sh "
                        "installs Debian's postgresql)")
        pytest.skip(problem)
    with live.throwaway_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    """A --db value for a new, empty store (no tables yet)."""
    if request.param == "sqlite":
        return str(tmp_path / "labels.sqlite")
    return live.new_postgres_db(request.getfixturevalue("postgres_server"))


@pytest.fixture
def store_and_admin(db):
    """(db, store, admin token) of an initialised store."""
    store, admin_token = init_store(db)
    yield db, store, admin_token
    store.close()
