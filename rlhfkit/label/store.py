"""The label store: SQLAlchemy 2 over SQLite (default, one file) or PostgreSQL (psycopg 3).

One code path for both databases: SQLAlchemy Core tables and bound parameters (no SQL is ever
built from strings). What differs is set once in ``connect``:

- SQLite: WAL journal (readers never block the writer), ``synchronous=FULL`` (every commit is
  fsync'ed: a judgment answered 2xx survives ``kill -9`` and a power cut), a busy timeout for
  other processes (the CLI while the server runs), and every transaction ``BEGIN IMMEDIATE``
  behind a process-wide lock: SQLite has one writer at a time anyway, and taking the write lock
  up front means a read-then-write transaction never fails half-way on a lock upgrade. WAL
  checkpoints run after the write lock is released (``Store._after_commit``), not inside a
  commit.
- PostgreSQL: a connection pool; a commit is durable (``synchronous_commit`` on, the server's
  default); queue picks lock the task row ``FOR UPDATE SKIP LOCKED``.

On SQLite the server's writes (leases, submits, skips) share transactions: ``Store.write``, a
group commit — one commit for all the writes that queued while the previous group committed,
each answered only after that commit.

The tables, the schema version and the settings' row: schema.py. A store of an older schema
version is migrated on open (migrations.py).
Tests: tests/label/test_store.py and tests/label/test_queue.py.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from rlhfkit.label.migrations import MIGRATIONS, migrate
from rlhfkit.label.schema import (
    ADDED_SHARD,
    READ_SETTINGS,
    RECOUNT,
    SCHEMA_VERSION,
    Settings,
    add_count_rows,
    annotators,
    candidates,
    create_triggers,
    judgments,
    meta,
    metadata,
    parse_settings,
    prompts,
    queue_counts,
    tasks,
)

ORDERS = ("fifo", "random", "uncertainty")
FLAGS = ("all_bad",)

# more open tasks (add_task, count_added); one fewer: the trigger schema.COUNT_COMPLETED;
# all of them afresh: schema.RECOUNT
COUNT_ADDED = (update(queue_counts).where(queue_counts.c.shard == ADDED_SHARD)
               .values(open_tasks=queue_counts.c.open_tasks + bindparam("added")))


class StoreError(Exception):
    """A store that cannot be opened or used as asked: one line for the user."""


def hash_token(token: str) -> str:
    """Tokens are 192 random bits: a plain SHA-256 suffices (no dictionary to guess from)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """192 random bits, URL-safe, never starting with '-': a command line reads such a token as
    an option (``--admin-token -Xy…`` → "expected one argument"), one token in 64."""
    while True:
        token = secrets.token_urlsafe(24)
        if not token.startswith("-"):
            return token


def database_url(db: str) -> str:
    """``--db`` value → SQLAlchemy URL: a path means SQLite, postgresql://… means psycopg 3."""
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    return db


def _sqlite_pragmas(dbapi_connection, _record):
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # no checkpoint inside a commit (it would hold the write lock): Store._checkpoint runs
    # them after the lock is released
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _sqlite_begin(connection):
    # writes take the write lock up front; reads stay deferred (WAL readers never wait)
    write = connection.get_execution_options().get("write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def connect(db: str) -> Engine:
    try:
        url = make_url(database_url(db))
    except ArgumentError as err:
        raise StoreError(f"--db {db!r}: expected a file path or postgresql://user@host/dbname "
                         f"({err})") from None
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, pool_size=8, max_overflow=16)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    elif url.get_backend_name() == "postgresql":
        # no pool_pre_ping: a round trip per transaction (a fifth of the bench's throughput);
        # a connection the server dropped fails its first statement, SQLAlchemy then renews
        # the pool and the app retries the request once (app.py: _store_call). The pool hands
        # out the connection used last (LIFO: the few a server keeps busy stay warm, with their
        # prepared statements) and psycopg prepares a statement at its first execution
        # (its default: the sixth), so that a new connection plans each query fewer times
        engine = create_engine(url, pool_size=16, max_overflow=48, pool_use_lifo=True,
                               connect_args={"prepare_threshold": 0})
    else:
        raise StoreError(f"--db {db!r}: only SQLite (a file path) and PostgreSQL are supported")
    return engine


@dataclass
class _Write:
    """One caller's part of a group commit (``Store.write``)."""
    fn: Callable
    finished: bool = False
    result: object = None
    error: BaseException | None = None


class Store:
    """An open label store: ``with store.transaction() as conn:`` runs one write transaction;
    ``store.engine.connect()`` reads."""

    SETTINGS_TTL = 1.0  # seconds a server keeps the queue settings before reading them again
    # SQLite: a passive WAL checkpoint after this many writes of this process (a judgment
    # writes ~10 pages: about SQLite's own default of one per 1,000 pages)
    CHECKPOINT_EVERY = 100
    # Store.write: writes share commits (group commit), by database
    GROUP_COMMIT = {"sqlite": True, "postgresql": False}

    def __init__(self, engine: Engine):
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # SQLite admits one writer: queue our own transactions (threads, then processes: a
        # lock file beside the database) instead of spinning in SQLite's busy handler.
        self._thread_lock = threading.Lock()
        self._lock_file = None
        if self.is_sqlite and engine.url.database:
            self._lock_file = open(engine.url.database + ".lock", "a")
        self._settings: tuple[float, Settings] | None = None
        self._queued: list[_Write] = []  # Store.write calls waiting for the next group
        self._queued_lock = threading.Lock()
        # held by the caller running a group (SQLite: the write lock of this process)
        self._leader = self._thread_lock if self.is_sqlite else threading.Lock()
        self._commits = 0  # write transactions since this process's last checkpoint
        self._checkpointing = threading.Lock()

    @contextlib.contextmanager
    def _file_lock(self):
        """The write lock between processes (held by a thread that holds _thread_lock)."""
        if self._lock_file is None:
            yield
            return
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _write_lock(self):
        if not self.is_sqlite:
            yield
            return
        with self._thread_lock, self._file_lock():
            yield

    def _begin_write(self):
        conn = self.engine.connect()
        conn.execution_options(write=True)  # SQLite: BEGIN IMMEDIATE (see _sqlite_begin)
        return conn

    @contextlib.contextmanager
    def transaction(self):
        with self._write_lock(), self._begin_write() as conn:
            with conn.begin():
                yield conn
        self._after_commit()

    def write(self, fn: Callable):
        """``fn(conn)`` in a write transaction → its result, returned once that transaction is
        committed (durable); an exception of ``fn`` is raised here, and nothing it wrote is kept.

        Concurrent calls share transactions (group commit): the calls that queue while a group
        commits make the next group, run one after another on one connection, then one COMMIT
        (one fsync for all) and only then does any of them return, so a ``kill -9`` loses only
        calls not yet answered. If a call raises, the group is rolled back and each of its
        calls runs again alone: the others are kept, the failing one gets its exception
        (``fn`` may therefore run twice: it must act only through ``conn``). A group is run by
        the first of its callers to get the write lock; the others find their part done.
        GROUP_COMMIT says where: on SQLite (one writer, one fsync per commit); on PostgreSQL
        each call is its own transaction (grouping measured no faster there: docs/label.md).
        Tests: tests/label/test_store.py (test_group_commit_*)."""
        if not self.GROUP_COMMIT[self.engine.dialect.name]:
            with self.transaction() as conn:
                return fn(conn)
        call = _Write(fn)
        with self._queued_lock:
            self._queued.append(call)
        with self._leader:
            if not call.finished:
                self._run_group()
        self._after_commit()
        if call.error is not None:
            raise call.error
        return call.result

    def _run_group(self) -> None:
        """Run every queued call (the caller holds _leader)."""
        with self._file_lock():
            with self._queued_lock:  # all that queued while we waited for the lock
                group, self._queued = self._queued, []
            outcomes = []
            try:
                outcomes = self._commit(group)
            finally:  # also when something escaped (then the group learns it failed)
                interrupted = None, RuntimeError("the group was interrupted")
                for call, (result, error) in itertools.zip_longest(group, outcomes,
                                                                   fillvalue=interrupted):
                    call.result, call.error, call.finished = result, error, True

    def _commit(self, group: list[_Write]) -> list[tuple[object, BaseException | None]]:
        """(result, error) of each call: together in one transaction, or, if any call (or the
        commit) failed, each alone."""
        try:
            with self._begin_write() as conn, conn.begin():
                results = [call.fn(conn) for call in group]
            return [(result, None) for result in results]
        except Exception as err:
            if len(group) == 1:
                return [(None, err)]
        outcomes = []
        for call in group:
            try:
                with self._begin_write() as conn, conn.begin():
                    outcomes.append((call.fn(conn), None))
            except Exception as err:
                outcomes.append((None, err))
        return outcomes

    def _after_commit(self) -> None:
        """SQLite: every CHECKPOINT_EVERY write transactions, a passive checkpoint, outside the
        write lock (it copies committed pages into the database file; a writer may run
        meanwhile, and a checkpoint another process runs makes this one a no-op)."""
        if not self.is_sqlite:
            return
        self._commits += 1
        if self._commits < self.CHECKPOINT_EVERY or not self._checkpointing.acquire(False):
            return
        try:
            self._commits = 0
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            self._checkpointing.release()

    def get_meta(self, conn, key: str, default: str | None = None) -> str | None:
        value = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
        return default if value is None else value

    def set_meta(self, conn, key: str, value: str) -> None:
        if conn.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount == 0:
            conn.execute(insert(meta).values(key=key, value=value))

    def settings(self, conn) -> Settings:
        """The queue settings, read at most once a second (`label config` may change them)."""
        now = time.monotonic()
        if self._settings is None or now - self._settings[0] > self.SETTINGS_TTL:
            self._settings = now, parse_settings(conn.execute(READ_SETTINGS).scalar())
        return self._settings[1]

    def open_connections(self, n: int) -> int:
        """Open up to ``n`` pooled connections now, one cheap query on each, and leave them in
        the pool → how many it holds. A server calls this before it takes requests: else its
        pool opens them while the first requests wait (PostgreSQL: connect, authentication,
        the session's first statements). At most the pool's size: a connection above it would
        be closed as soon as it went back. Test: tests/label/test_app.py."""
        n = min(n, self.engine.pool.size())
        with contextlib.ExitStack() as stack:
            for _ in range(n):  # all checked out at once: n distinct connections
                stack.enter_context(self.engine.connect()).exec_driver_sql("SELECT 1")
        return self.engine.pool.checkedin()

    def close(self) -> None:
        self.engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()


def init_store(db: str, settings: Settings = Settings()) -> tuple[Store, str]:
    """Create the tables in a new store; returns (store, admin token). An existing store is an
    error (the judgments in it are never overwritten)."""
    check_settings(settings)
    engine = connect(db)
    try:
        existing = set(inspect(engine).get_table_names())
    except OperationalError as err:
        raise StoreError(f"--db {db}: cannot open ({str(err.orig).splitlines()[0]})") from None
    if existing & set(metadata.tables):
        engine.dispose()
        raise StoreError(f"--db {db}: already holds a label store (tables "
                         f"{sorted(existing & set(metadata.tables))}); use another file/database")
    metadata.create_all(engine)
    store = Store(engine)
    admin_token = new_token()
    with store.transaction() as conn:
        create_triggers(conn)
        store.set_meta(conn, "schema_version", str(SCHEMA_VERSION))
        store.set_meta(conn, "settings", json.dumps(settings.__dict__))
        store.set_meta(conn, "admin_token_hash", hash_token(admin_token))
        add_count_rows(conn)
    return store, admin_token


def open_store(db: str) -> Store:
    """Open an existing store, checking its schema version; an older version with a migration
    (``MIGRATIONS``) is brought up to date first."""
    if "://" not in db and not Path(db).expanduser().is_file():
        raise StoreError(f"--db {db}: no such file; create a store with `rlhfkit label init "
                         "--db ...`")
    engine = connect(db)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            version = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")
                                   ).scalar() if "meta" in names else None
    except OperationalError as err:
        engine.dispose()
        raise StoreError(f"--db {db}: cannot open ({str(err.orig).splitlines()[0]})") from None
    if version is None:
        engine.dispose()
        raise StoreError(f"--db {db}: not a label store (no schema version); create one with "
                         "`rlhfkit label init --db ...`")
    if version != str(SCHEMA_VERSION) and version not in MIGRATIONS:
        engine.dispose()
        raise StoreError(f"--db {db}: schema version {version}, this rlhfkit reads version "
                         f"{SCHEMA_VERSION}")
    store = Store(engine)
    if version != str(SCHEMA_VERSION):
        migrate(store)
    return store


def check_settings(settings: Settings) -> None:
    if settings.overlap < 1:
        raise StoreError(f"overlap={settings.overlap}: expected an integer ≥ 1")
    if settings.order not in ORDERS:
        raise StoreError(f"order={settings.order!r}: expected one of {', '.join(ORDERS)}")
    if settings.lease_seconds <= 0:
        raise StoreError(f"lease_seconds={settings.lease_seconds}: expected a number > 0")


# every task to a new overlap; ``open`` from its own row: a submit counting a judgment at the
# same moment locks the row too, so on PostgreSQL one of the two sees the other's result
SET_OVERLAP = (update(tasks).where(tasks.c.overlap != bindparam("new_overlap"))
               .values(overlap=bindparam("new_overlap"),
                       open=tasks.c.judged < bindparam("new_overlap")))


def update_settings(store: Store, **changes) -> Settings:
    store._settings = None  # read them fresh
    with store.transaction() as conn:
        settings = Settings(**{**store.settings(conn).__dict__, **changes})
        check_settings(settings)
        store.set_meta(conn, "settings", json.dumps(settings.__dict__))
        # after the settings row is written (and locked): add_task reads it FOR SHARE, so a
        # task added at the same time gets the new overlap or is committed before this runs
        if conn.execute(SET_OVERLAP, {"new_overlap": settings.overlap}).rowcount:
            # every task's row is locked now (they all had the old overlap): a submit
            # counting a judgment either committed before (the count sees it) or waits for
            # this transaction and then counts against the new overlap
            conn.execute(RECOUNT)
    store._settings = None
    return settings


# ----------------------------------------------------------------------------- content
# the settings as add_task reads them: FOR SHARE (PostgreSQL) waits for an update_settings
# in flight, and makes a later one wait for this transaction (SET_OVERLAP then sees the task)
_SETTINGS_SHARED = READ_SETTINGS.with_for_update(read=True)


def add_task(conn, messages, responses: list[str], models: list[str], settings: list[dict],
             rng, tag: str | None = None, count: bool = True) -> int:
    """One prompt and its K candidates → a task id (inside the caller's transaction); ``tag``
    names the batch it belongs to (``tasks.tag``). ``count`` False: the caller counts the
    tasks it added with one ``count_added`` before it commits — an import does, because on
    PostgreSQL each update of one row in one transaction costs more than the one before (its
    old versions stay until the commit: 190 µs per update over 5,000, 607 µs over 60,000)."""
    now = time.time()
    overlap = parse_settings(conn.execute(_SETTINGS_SHARED).scalar()).overlap
    text = messages[0][1] if len(messages) == 1 else "".join(
        f"{role}: {content}\n\n" for role, content in messages).strip()
    prompt_id = conn.execute(insert(prompts).values(
        text=text, messages=[list(m) for m in messages], created_at=now)).inserted_primary_key[0]
    task_id = conn.execute(insert(tasks).values(
        prompt_id=prompt_id, random_key=rng.random(), judged=0, overlap=overlap, open=True,
        created_at=now, tag=tag)).inserted_primary_key[0]
    conn.execute(insert(candidates), [
        {"task_id": task_id, "slot": slot, "text": text_, "model": model, "settings": setting}
        for slot, (text_, model, setting) in enumerate(zip(responses, models, settings))])
    if count:
        count_added(conn, 1)
    return task_id


def count_added(conn, n: int) -> None:
    """``n`` tasks added in this transaction (``add_task(..., count=False)``) → queue_counts."""
    if n:
        conn.execute(COUNT_ADDED, {"added": n})


def add_annotator(store: Store, name: str) -> str:
    """A new annotator → their token (shown once; only its hash is stored)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise StoreError(f"annotator name {name!r}: expected 1–100 characters")
    token = new_token()
    try:
        with store.transaction() as conn:
            conn.execute(insert(annotators).values(name=name, token_hash=hash_token(token),
                                                   active=True, created_at=time.time()))
    except IntegrityError:
        raise StoreError(f"annotator {name!r} already exists") from None
    return token


def set_annotator_active(store: Store, name: str, active: bool) -> None:
    with store.transaction() as conn:
        changed = conn.execute(update(annotators).where(annotators.c.name == name)
                               .values(active=active)).rowcount
    if not changed:
        raise StoreError(f"no annotator named {name!r}")


def counts(conn) -> dict:
    return {"tasks": conn.execute(select(func.count()).select_from(tasks)).scalar(),
            "judgments": conn.execute(select(func.count()).select_from(judgments)).scalar()}
