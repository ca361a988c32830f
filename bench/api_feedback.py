"""Feedback writes through the API: writes/s and latency with 32 concurrent clients.

    python bench/api_feedback.py [--backends sqlite,postgres] [--clients 32] [--requests 6000]

The server is `create_app` on uvicorn in a process of its own (as `selftrain serve`
runs it, model loaded); the clients are 32 keep-alive connections driven by a minimal
asyncio HTTP/1.1 client in this process, so the figure is the server's, not httpx's.
Each client posts ratings for interactions owned by its key's user. Afterwards the
feedback rows are counted in the database: every 201 must be a row, and nothing else.

Targets (issue 8), on the 2-core machine: >= 500 writes/s, p99 < 100 ms, zero errors,
zero lost rows. Writes JSON to bench/out/api_feedback.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
DEFAULT_MODEL = "/tmp/demo-ws/models/smollm2-135m-instruct"
TARGET_RATE, TARGET_P99_MS = 500.0, 100.0


def serve_forever(workspace: str, port: int) -> None:
    """The server process (`--serve`): what `selftrain serve` does."""
    import uvicorn

    from selftrain.config import load_settings
    from selftrain.serve.app import create_app
    from selftrain.store.db import Database

    settings = load_settings(workspace)
    uvicorn.run(create_app(settings, Database(settings.resolved_database_url)), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(workspace: Path, database_url: str, base_model: str, n_interactions: int) -> tuple[str, list[int]]:
    from selftrain.serve.keys import create_key
    from selftrain.store.db import Database
    from selftrain.store.records import record_interaction

    (workspace / "selftrain.toml").write_text(
        f'base_model = "{base_model}"\n' + (f'database_url = "{database_url}"\n' if database_url else ""))
    db = Database(database_url or f"sqlite:///{workspace / 'selftrain.db'}")
    with db.session() as session:
        _, key = create_key(session, "bench")
        ids = [record_interaction(session, user="bench", source="api", prompt=f"p{i}", code="x = 1").id
               for i in range(n_interactions)]
    db.close()
    return key, ids


async def client(port: int, key: str, ids: list[int], n: int, offset: int, latencies: list, errors: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(n):
            interaction = ids[(offset + i) % len(ids)]
            body = json.dumps({"rating": 1 + (offset + i) % 5, "comment": "bench"}).encode()
            request = (f"POST /api/interactions/{interaction}/feedback HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            if status != 201:
                errors.append(status)
    finally:
        writer.close()


async def drive(port: int, key: str, ids: list[int], clients: int, requests: int) -> dict:
    latencies: list[float] = []
    errors: list = []
    per_client = requests // clients
    began = time.perf_counter()
    results = await asyncio.gather(*(client(port, key, ids, per_client, c * per_client, latencies, errors)
                                     for c in range(clients)), return_exceptions=True)
    wall = time.perf_counter() - began
    errors += [repr(r) for r in results if isinstance(r, BaseException)]
    latencies.sort()
    q = lambda p: 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None
    return {"requests": len(latencies), "seconds": wall, "writes_per_s": len(latencies) / wall,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": 1000 * latencies[-1] if latencies else None,
            "mean_ms": 1000 * statistics.fmean(latencies) if latencies else None, "errors": len(errors),
            "error_samples": errors[:5]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def count_feedback(database_url: str) -> int:
    from sqlalchemy import func, select

    from selftrain.store.db import Database
    from selftrain.store.schema import Feedback

    db = Database(database_url, upgrade=False)
    with db.session() as session:
        n = session.scalar(select(func.count()).select_from(Feedback))
    db.close()
    return n


def run_backend(backend: str, args) -> dict:
    from sqlalchemy import create_engine, text

    workspace = Path(tempfile.mkdtemp(prefix=f"bench-feedback-{backend}-"))
    admin, pg_name, url = None, None, ""
    if backend == "postgres":
        pg_name = f"selftrain_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
        url = f"postgresql+psycopg://root@127.0.0.1:5432/{pg_name}"
    key, ids = prepare(workspace, url, args.model, args.interactions)
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(workspace), str(port)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 180
        while True:  # the server listens once the model is loaded
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"the {backend} server did not start")
                time.sleep(0.2)
        asyncio.run(drive(port, key, ids, args.clients, min(args.requests, 2 * args.clients)))  # warm up
        before = count_feedback(url or f"sqlite:///{workspace / 'selftrain.db'}")
        cpu_before = cpu_seconds(server.pid)
        result = asyncio.run(drive(port, key, ids, args.clients, args.requests))
        # Server CPU per write: what a write costs whatever else the machine is doing.
        result["server_cpu_ms_per_write"] = 1000 * (cpu_seconds(server.pid) - cpu_before) / max(1, result["requests"])
        rows = count_feedback(url or f"sqlite:///{workspace / 'selftrain.db'}") - before
    finally:
        server.terminate()
        server.wait(30)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{pg_name}" WITH (FORCE)'))
            admin.dispose()
    ok = result["requests"] - result["errors"]
    result.update(backend=backend, clients=args.clients, rows_written=rows, lost_rows=ok - rows,
                  meets_target=(result["writes_per_s"] >= TARGET_RATE and result["p99_ms"] < TARGET_P99_MS
                                and result["errors"] == 0 and rows == ok))
    return result


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve_forever(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=6400, help="Total feedback posts per backend.")
    parser.add_argument("--interactions", type=int, default=500)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base_model of the served workspace.")
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "api_feedback.json"))
    args = parser.parse_args()
    load = os.getloadavg()
    rows = [run_backend(b, args) for b in args.backends.split(",")]
    print(f"\nFeedback writes, {args.clients} concurrent clients, {os.cpu_count()} CPUs, "
          f"load average before: {load[0]:.2f}")
    print(f"{'backend':<10}{'writes/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
          f"{'rows':>7}{'lost':>6}{'cpu ms/w':>9}  target")
    for r in rows:
        print(f"{r['backend']:<10}{r['writes_per_s']:>10.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['max_ms']:>9.1f}{r['errors']:>8}{r['rows_written']:>7}{r['lost_rows']:>6}"
              f"{r['server_cpu_ms_per_write']:>9.2f}  "
              f"{'met' if r['meets_target'] else 'MISSED'}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"load_average": load, "cpus": os.cpu_count(), "results": rows},
                                          indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
