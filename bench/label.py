"""Bench of the labelling server: judgments/s and submit latency (p50/p99) at 50 concurrent
annotators, on SQLite and on PostgreSQL, loopback only.

    python bench/label.py [--clients 50] [--per-client 40] [--workers 1] [--store-threads 0]
                          [--only sqlite|postgresql] [--pg-url postgresql://...]

Each client is one annotator looping GET /api/tasks/next → POST /api/judgments against a real
``rlhfkit label serve`` process (uvicorn); the latency is the POST's, the rate counts judgments
acknowledged (2xx) per second of wall time. The clients share the machine with the server, so
each result also gives the CPU milliseconds per judgment of the server's processes, of the
client and of the whole machine (``bench_one``). Without --pg-url a throwaway PostgreSQL
cluster is started (initdb + pg_ctl, unix socket, as the ``postgres`` user when run as root).

The same pieces drive tests/label/test_load.py (loaded from this file): ``throwaway_postgres``,
``LiveServer``, ``prepare`` and ``run_clients``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import itertools
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

_db_counter = itertools.count()


# ----------------------------------------------------------------------------- PostgreSQL
def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--"] + argv if os.geteuid() == 0 else argv


def postgres_missing() -> str | None:
    """Why a throwaway cluster cannot start here, or None."""
    if not (pg_bin("initdb") and pg_bin("pg_ctl")):
        return "PostgreSQL server binaries (initdb, pg_ctl) not found"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user"
    return None


@contextlib.contextmanager
def throwaway_postgres():
    """A fresh cluster (unix socket in a temp dir, no TCP, a free port number) → (sock, port)."""
    root = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-"))
    root.chmod(0o755)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    pg_ctl = pg_bin("pg_ctl")
    subprocess.run(_as_postgres([pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U",
                                 "postgres", "-E", "UTF8", "--no-locale"]),
                   check=True, capture_output=True)
    options = f"-k {sock} -p {port} -c listen_addresses='' -c max_connections=300"
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l",
                                 str(root / "log"), "-w", "start"]),
                   check=True, capture_output=True)
    try:
        yield str(sock), port
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_postgres_db(server) -> str:
    """CREATE DATABASE on the throwaway cluster → its postgresql:// URL."""
    import psycopg

    sock, port = server
    name = f"label_{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(host=sock, port=port, user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not user input
    return f"postgresql://postgres@/{name}?host={sock}&port={port}"


# ----------------------------------------------------------------------------- server
class LiveServer:
    """``python -m rlhfkit label serve`` in a child process on 127.0.0.1."""

    def __init__(self, db: str, admin_token: str = "", port: int | None = None, log=None,
                 workers: int = 1, store_threads: int = 0):
        self.db, self.admin_token, self.workers = db, admin_token, workers
        self.store_threads = store_threads
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "LiveServer":
        argv = [sys.executable, "-m", "rlhfkit", "label", "serve", "--db", self.db,
                "--port", str(self.port), "--workers", str(self.workers),
                "--store-threads", str(self.store_threads)]
        if self.admin_token:
            argv += [f"--admin-token={self.admin_token}"]  # a token may start with '-'
        self.process = subprocess.Popen(argv, stdout=self.log or subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT if self.log else
                                        subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label serve exited with {self.process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/openapi.json", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"label serve not answering on {self.url} after {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, nothing is flushed."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def prepare(db: str, n_tasks: int, n_annotators: int, k: int = 4) -> tuple[str, list[str]]:
    """A new store with ``n_tasks`` tasks of K candidates and ``n_annotators`` annotators →
    (admin token, annotator tokens)."""
    from rlhfkit.label.store import add_annotator, add_task, count_added, init_store

    store, admin_token = init_store(db)
    rng = random.Random(0)
    with store.transaction() as conn:
        for i in range(n_tasks):
            add_task(conn, (("user", f"Prompt {i}: write a line about the sea."),),
                     [f"Response {j} to prompt {i}." for j in range(k)], ["bench"] * k,
                     [{"temperature": 1.0}] * k, rng, count=False)
        count_added(conn, n_tasks)
    tokens = [add_annotator(store, f"annotator{i:03d}") for i in range(n_annotators)]
    store.close()
    return admin_token, tokens


# ----------------------------------------------------------------------------- clients
class Connection:
    """One keep-alive HTTP/1.1 connection, the bare minimum (uvicorn always sends
    Content-Length here). httpx spends ~3 ms of CPU per request on 2 cores, more than the
    server: a bench on a shared machine must not measure its own client."""

    def __init__(self, url: str):
        host_port = url.split("://", 1)[1]
        self.host, self.port = host_port.split(":")[0], int(host_port.split(":")[1])
        self.reader = self.writer = None

    async def request(self, method: str, path: str, token: str, body=None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\n"
                + ("Content-Type: application/json\r\n" if body is not None else "") + "\r\n")
        try:
            self.writer.write(head.encode() + data)
            status = int((await self.reader.readuntil(b"\r\n")).split()[1])
            length = 0
            while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            return status, await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            self.close()
            raise ConnectionError(f"{method} {path}: connection lost") from None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Result:
    acked: list = field(default_factory=list)  # (annotator index, task id, judgment id, status)
    latencies: list = field(default_factory=list)  # seconds of POSTs answered at first try
    statuses: dict = field(default_factory=dict)  # status → count, every response
    transport_errors: int = 0
    seconds: float = 0.0

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def _request(conn: Connection, result: Result, method: str, path: str, token: str,
                   deadline: float, body=None) -> tuple[int, bytes, bool]:
    """Send until a non-5xx answer (a killed server is retried until it is back) →
    (status, body, answered at the first try)."""
    first = True
    while True:
        try:
            status, data = await conn.request(method, path, token, body)
            result.count(status)
            if status < 500:
                return status, data, first
        except ConnectionError:
            result.transport_errors += 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{method} {path}: no answer before the deadline")
        first = False
        await asyncio.sleep(0.05)


async def _annotate(url: str, result: Result, index: int, token: str, n: int,
                    deadline: float, on_ack) -> None:
    rng = random.Random(index)
    conn = Connection(url)
    done = 0
    try:
        while done < n:
            status, data, _ = await _request(conn, result, "GET", "/api/tasks/next", token,
                                             deadline)
            if status == 204:
                return
            if status != 200:
                raise RuntimeError(f"GET /api/tasks/next → {status} {data[:200]!r}")
            task = json.loads(data)
            ranks = list(range(1, len(task["candidates"]) + 1))
            rng.shuffle(ranks)
            body = {"task_id": task["task_id"], "ranks": ranks, "flags": [], "comment": "",
                    "seconds": 1.0}
            start = time.perf_counter()
            status, data, first = await _request(conn, result, "POST", "/api/judgments", token,
                                                 deadline, body)
            if first:
                result.latencies.append(time.perf_counter() - start)
            if status not in (200, 201):
                raise RuntimeError(f"POST /api/judgments → {status} {data[:200]!r}")
            result.acked.append((index, task["task_id"], json.loads(data)["judgment_id"], status))
            done += 1
            if on_ack is not None:
                await on_ack(len(result.acked))
    finally:
        conn.close()


async def run_clients(url: str, tokens: list[str], per_client: int, on_ack=None,
                      timeout: float = 120.0) -> Result:
    """Every token is one annotator (one connection) submitting ``per_client`` judgments, all
    concurrently."""
    result = Result()
    deadline = time.monotonic() + timeout
    start = time.perf_counter()
    await asyncio.gather(*(_annotate(url, result, i, token, per_client, deadline, on_ack)
                           for i, token in enumerate(tokens)))
    result.seconds = time.perf_counter() - start
    return result


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


# ----------------------------------------------------------------------------- bench
def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (uvicorn's workers), from /proc."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for children in glob.glob(f"/proc/{p}/task/*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in Path(children).read_text().split()]
    return found


def _process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def bench_one(db: str, clients: int, per_client: int, workers: int = 1,
              store_threads: int = 0) -> dict:
    """One store: warm up, then time ``clients × (per_client − 1)`` judgments → figures, with
    the CPU time per judgment of the server (its processes), of this client and of the whole
    machine (the rest is mostly PostgreSQL's backends, or other jobs)."""
    admin_token, tokens = prepare(db, clients * per_client, clients)
    server = LiveServer(db, admin_token, workers=workers, store_threads=store_threads).start()
    try:
        # warm-up: one judgment per client (connections, caches), not timed
        _run(run_clients(server.url, tokens, 1))
        pids = _descendants(server.process.pid)
        cpu = _process_cpu(pids), time.process_time(), _machine_busy()
        result = _run(run_clients(server.url, tokens, per_client - 1))
        cpu = [after - before for before, after in zip(cpu, (
            _process_cpu(pids), time.process_time(), _machine_busy()))]
    finally:
        server.stop()
    n = len(result.acked)
    return {"judgments": n, "seconds": round(result.seconds, 2),
            "judgments_per_s": round(n / result.seconds, 1),
            "p50_ms": round(1000 * percentile(result.latencies, 50), 1),
            "p99_ms": round(1000 * percentile(result.latencies, 99), 1),
            "cpu_ms_per_judgment": {name: round(1000 * seconds / n, 3) for name, seconds in
                                    zip(("server", "client", "machine"), cpu)},
            "statuses": result.statuses}


def _run(coroutine):
    """The clients on uvloop when it is there (uvicorn[standard] brings it): the client shares
    the cores with the server it measures, so it should cost as little as it can."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def cpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                   check=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=40)
    parser.add_argument("--pg-url", default="", help="an empty PostgreSQL database to use")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--store-threads", type=int, default=0,
                        help="store threads per server process (0: the server's default)")
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores visible; {args.clients} clients × "
          f"{args.per_client} judgments; {args.workers} server process(es), store threads "
          f"{args.store_threads or 'default'}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if args.only != "postgresql":
            print("sqlite    ", bench_one(str(Path(tmp) / "bench.sqlite"), args.clients,
                                          args.per_client, args.workers, args.store_threads),
                  flush=True)
        if args.only != "sqlite":
            url = args.pg_url or new_postgres_db(stack.enter_context(throwaway_postgres()))
            print("postgresql", bench_one(url, args.clients, args.per_client, args.workers,
                                          args.store_threads), flush=True)


if __name__ == "__main__":
    main()
