"""aiohttp vs httpx as the proxy's upstream client (DESIGN §9), reproducibly, with a floor.

    .venv/bin/python bench/upstream_clients.py [--n1 2000] [--n32 5000] [--concurrency 32]

Starts ``cognitude mock-upstream`` in its own process (so the server never shares a GIL with
the client being measured) and sends it the same non-streaming chat completion POST with
``aiohttp.ClientSession`` and with ``httpx.AsyncClient``, both pooled and keep-alive, on
uvloop like the proxy:

* concurrency 1: ``--n1`` sequential requests; p50 / p99 of each request's wall time;
* concurrency ``--concurrency``: ``--n32`` requests from that many coroutines sharing one
  client; throughput (requests / wall time) and per-request p50 / p99.

A third row, ``floor``, is not a candidate: keep-alive connections on ``asyncio.Protocol``
that write each request with one bytes format and parse the response with httptools (the
C parser uvicorn uses). No TLS, timeouts, reconnects or chunked uploads: it shows how much
of a client's cost is the client (what a hand-written one could save at best).

Each measurement is preceded by an unrecorded warm-up (connections opened, code paths hot)
and is bounded in count and in time (``--max-seconds-each``; a cut-short run is marked
"partial"). "client CPU µs/req" is this process's CPU time per request: on the proxy that is
CPU the upstream call takes away from every other request. Prints a markdown table and
writes it, with the machine, to ``bench/upstream_clients.md`` (which ``bench/overhead.py``
copies into ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httptools
import httpx
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402  (sibling module)
from benchlib import percentile  # noqa: E402

BODY = orjson.dumps({
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "You are a concise assistant."},
                 {"role": "user", "content": "Explain in two sentences what a response "
                                             "cache does for an LLM application."}],
    "temperature": 0,
})
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
POOL = 64  # connections per client; above --concurrency so the pool never queues

Post = Callable[[], Awaitable[int]]


@dataclass
class Run:
    client: str
    concurrency: int
    n: int = 0
    errors: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    lat_ms: list[float] | None = None
    partial: bool = False

    @property
    def throughput(self) -> float:
        return self.n / self.wall_s if self.wall_s else float("nan")


async def measure(client: str, post: Post, concurrency: int, count: int, warmup: int,
                  max_s: float) -> Run:
    run = Run(client, concurrency)
    lats: list[float] = []
    # Work is handed out by a shared counter, so the total is exact at any concurrency.
    state = {"next": 0, "limit": warmup}

    async def worker(record: bool, deadline: float) -> None:
        while state["next"] < state["limit"] and time.perf_counter() < deadline:
            state["next"] += 1
            t = time.perf_counter()
            try:
                status = await post()
            except (aiohttp.ClientError, httpx.HTTPError, OSError, TimeoutError):
                status = 0
            if record:
                if status == 200:
                    lats.append((time.perf_counter() - t) * 1000)
                else:
                    run.errors += 1

    deadline = time.perf_counter() + max_s
    await asyncio.gather(*(worker(False, deadline) for _ in range(concurrency)))
    state["next"], state["limit"] = 0, count
    gc.collect()
    gc.disable()  # a collection pause would be charged to whichever client ran then
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        deadline = t0 + max_s
        await asyncio.gather(*(worker(True, deadline) for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - t0
        run.cpu_s = time.process_time() - c0
    finally:
        gc.enable()
    run.n = len(lats) + run.errors
    run.partial = run.n < count
    run.lat_ms = sorted(lats)
    return run


class _FloorConn(asyncio.Protocol):
    """One keep-alive connection of the floor client (see the module docstring)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def post(self, head: bytes, body: bytes) -> int:
        self.headers, self.body = [], []
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(head + body)
        status = await self.waiter
        b"".join(self.body)  # what a caller would keep
        return status


class FloorClient:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[_FloorConn] = []

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        conn = self.idle.pop() if self.idle else None
        if conn is None or conn.transport is None or conn.transport.is_closing():
            _, conn = await asyncio.get_running_loop().create_connection(
                _FloorConn, benchlib.LOOPBACK, self.port)
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = (f"POST {path} HTTP/1.1\r\nhost: {benchlib.LOOPBACK}:{self.port}\r\n{lines}"
                f"content-length: {len(body)}\r\n\r\n").encode()
        status = await conn.post(head, body)
        self.idle.append(conn)
        return status

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def bench(port: int, args: argparse.Namespace) -> list[Run]:
    url = f"http://{benchlib.LOOPBACK}:{port}/v1/chat/completions"
    runs: list[Run] = []
    a_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL), skip_auto_headers=("User-Agent",),
        timeout=aiohttp.ClientTimeout(total=10))
    h_client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL),
        timeout=10.0)

    async def a_post() -> int:
        async with a_session.post(url, data=BODY, headers=HEADERS) as resp:
            await resp.read()
            return resp.status

    async def h_post() -> int:
        resp = await h_client.post(url, content=BODY, headers=HEADERS)
        return resp.status_code

    floor = FloorClient(port)

    async def f_post() -> int:
        return await floor.post("/v1/chat/completions", BODY, HEADERS)

    clients: list[tuple[str, Post]] = [("aiohttp", a_post), ("httpx", h_post),
                                       ("floor", f_post)]
    try:
        # Interleaved per concurrency level, so drift on a shared machine hits both alike.
        for conc, count in ((1, args.n1), (args.concurrency, args.n32)):
            for name, post in clients:
                run = await measure(name, post, conc, count, args.warmup,
                                    args.max_seconds_each)
                runs.append(run)
                print(f"  {name:8s} c={conc:<3d} n={run.n} err={run.errors} "
                      f"{run.throughput:8.0f} req/s  p50={percentile(run.lat_ms or [], 50):.3f}"
                      f" ms{'  (partial)' if run.partial else ''}", flush=True)
    finally:
        await a_session.close()
        await h_client.aclose()
        floor.close()
    return runs


HEADER = ["client", "concurrency", "requests", "errors", "req/s", "p50 ms", "p99 ms",
          "max ms", "client CPU µs/req"]


def rows(runs: list[Run]) -> list[list[str]]:
    out = []
    for r in runs:
        lat = r.lat_ms or []
        out.append([r.client, str(r.concurrency), str(r.n) + (" (partial)" if r.partial else ""),
                    str(r.errors), f"{r.throughput:.0f}", f"{percentile(lat, 50):.3f}",
                    f"{percentile(lat, 99):.3f}", f"{percentile(lat, 100):.3f}",
                    f"{r.cpu_s * 1e6 / r.n:.0f}" if r.n else "n/a"])
    return out


def ratio_line(runs: list[Run]) -> str:
    by = {(r.client, r.concurrency): r for r in runs}
    parts = []
    for conc in sorted({r.concurrency for r in runs}):
        a, h = by.get(("aiohttp", conc)), by.get(("httpx", conc))
        if not (a and h and a.lat_ms and h.lat_ms):
            continue
        if conc == 1:
            parts.append(f"c=1 p50: aiohttp {percentile(a.lat_ms, 50):.3f} ms vs httpx "
                         f"{percentile(h.lat_ms, 50):.3f} ms")
        else:
            parts.append(f"c={conc} throughput: aiohttp {a.throughput:.0f} vs httpx "
                         f"{h.throughput:.0f} req/s (httpx p99 {percentile(h.lat_ms, 99):.1f} ms)")
        f = by.get(("floor", conc))
        if f and f.n and a.n:
            parts.append(f"c={conc} client CPU: aiohttp {a.cpu_s * 1e6 / a.n:.0f} µs/req vs "
                         f"the floor {f.cpu_s * 1e6 / f.n:.0f}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n1", type=int, default=2000, help="requests at concurrency 1")
    p.add_argument("--n32", type=int, default=5000, help="requests at --concurrency")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--warmup", type=int, default=200, help="unrecorded requests before each")
    p.add_argument("--max-seconds-each", type=float, default=30.0)
    p.add_argument("--output", type=Path, default=benchlib.BENCH / "upstream_clients.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    for name in ("n1", "n32", "concurrency"):
        if not 1 <= getattr(args, name) <= 1_000_000:
            p.error(f"--{name} must be in 1..1000000")
    if not 0 < args.max_seconds_each <= 600:
        p.error("--max-seconds-each must be in (0, 600]")

    machine = benchlib.machine_info()
    with tempfile.TemporaryDirectory(prefix="cognitude-bench-") as tmp:
        mock = benchlib.MockProcess(Path(tmp))
        try:
            print(f"mock upstream pid {mock.pid} on {mock.url}", flush=True)
            runs = uvloop.run(bench(mock.port, args))
        finally:
            mock.stop()
    table = benchlib.markdown_table(HEADER, rows(runs))
    print()
    print(table)
    print()
    print(ratio_line(runs))
    if not args.no_write:
        versions = benchlib.package_versions(("aiohttp", "httpx", "uvloop", "uvicorn",
                                              "httptools"))
        facts = {**machine, **versions}
        args.output.write_text(
            "# Upstream client comparison: aiohttp vs httpx (and the floor)\n\n"
            "Generated by `bench/upstream_clients.py` "
            f"(`{' '.join(['bench/upstream_clients.py', *sys.argv[1:]])}`) on "
            f"{machine['date (UTC)']} UTC: the same non-streaming chat POST to "
            "`cognitude mock-upstream` (its own process) on loopback, every client pooled "
            f"and keep-alive on uvloop, {args.warmup} warm-up requests before each row. "
            "`floor` is not a candidate: `asyncio.Protocol` connections writing each request "
            "with one format and parsing the response with httptools, without TLS, timeouts "
            "or reconnects; it bounds what any client could save.\n\n"
            + table + "\n\n" + ratio_line(runs) + ".\n\n"
            + benchlib.markdown_table(["what", "value"], [[k, v] for k, v in facts.items()])
            + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
