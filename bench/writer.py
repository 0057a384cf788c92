"""Usage writer benchmark (issue 3): rows/s, event-loop stall per batch, hot path while flushing.

    .venv/bin/python bench/writer.py [--rows 50000] [--flush-rows 500] [--probe-rate 1000]
                                     [--probe-seconds 3] [--rounds 2] [--fast]

Starts a private Valkey + PostgreSQL (``EmbeddedServices``), migrates, and drives the real
``cognitude.usage.UsageWriter`` on uvloop, as the proxy's lifespan creates it:

1. **Throughput and stalls.** ``--rows`` records are built, then submitted in one burst (the
   queue holds them all), and the writer drains them at its own pace: rows/s = rows / time
   until ``rows_written`` reaches the total. Meanwhile a ticker task sleeps 1 ms in a loop
   and records every wake-up: the longest gap within a batch, minus the 1 ms asked for, is
   that batch's worst event-loop stall; the loop thread's CPU (``time.thread_time``) between
   batch completions, minus the ticker's own cost measured idle, is the writer's CPU per
   batch. Batches are told apart by ``rows_written`` changing (no hooks into the writer).
2. **Hot path while flushing.** Real ``Gate.check`` calls (the proxy's one Redis round trip:
   three sliding windows + cache GET) at ``--probe-rate`` per second, open loop on a kernel
   timerfd (``bench/overhead.py``'s ``PeriodicTimer``: request i is due at i/rate and timed
   from then). Rounds alternate "quiet" (writer idle) and "flushing" (a feeder submits
   ``--flush-rate`` rows/s in 10 ms chunks, so the writer COPYs continuously), in the same
   run; the latency percentiles of the two conditions are compared.

Postgres runs durable by default (``fast=False``: fsync and synchronous_commit on), because
every batch is a commit and in production each commit waits for its WAL flush: that is what
bounds the writer, and ``--fast`` (no fsync) would overstate it. Valkey then has its AOF on,
as in a default ``cognitude serve``.

Bounded: ``--rows`` ≤ 1,000,000, the drain waits at most ``--max-seconds``; probes and feeder
are counted and stop at their round's end. Replaces the "Usage writer" section of
``bench/RESULTS.md``. Exit status 1 when the table does not hold exactly the rows written, or
the writer spilled, dropped or failed a batch (the numbers would not describe the normal path).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os import urandom
from pathlib import Path
from time import perf_counter, thread_time

import asyncpg
import redis.asyncio as aioredis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402  (sibling module, see its docstring)
from benchlib import percentile  # noqa: E402
from overhead import PeriodicTimer  # noqa: E402  (reused: the kernel-timer schedule)

from cognitude import db  # noqa: E402
from cognitude.embedded import EmbeddedServices  # noqa: E402
from cognitude.gate.gate import Gate, Limits  # noqa: E402
from cognitude.ledger.usage import UsageRecord, UsageWriter  # noqa: E402

SECTION = "Usage writer"
ORG = "org_bench_writer"
UNLIMITED = Limits(1_000_000_000, 1_000_000_000, 1_000_000_000)
TICK_S = 0.001
GOAL_MAX_MS = 50.0  # issue 4: no request slower than 50 ms at 1,000 req/s while flushing


def make_records(n: int, tag: str) -> list[UsageRecord]:
    """Realistic miss rows (every text column filled), unique request ids."""
    ts = datetime.now(UTC)
    return [
        UsageRecord(
            request_id=f"{tag}{urandom(10).hex()}", ts=ts, org_id=ORG, key_id="key_bench",
            endpoint="chat", model_requested="gpt-4o-mini", model_used="gpt-4o-mini",
            provider="openai", route=None, prompt_tokens=412, completion_tokens=38,
            cost_micros=84, baseline_cost_micros=84, cache_status="MISS", status_code=200,
            error_type=None, stream=False, latency_ms=351.27, upstream_ms=350.9,
            overhead_ms=0.37, end_user="customer-48213",
        )
        for _ in range(n)
    ]


def pg_ticks(services: EmbeddedServices) -> int:
    """utime+stime of the postmaster and all its backends (the COPY runs in one)."""
    total = 0
    for top in services.pids:
        for pid in benchlib.descendants(top):
            try:
                u, s = benchlib.cpu_ticks(pid)
            except OSError:
                continue  # exited meanwhile
            total += u + s
    return total


# --------------------------------------------------------------------------- phase 1

@dataclass
class Ticks:
    """(wake-up time, gap since the previous wake-up, rows_written seen, thread CPU)."""

    samples: list[tuple[float, float, int, float]] = field(default_factory=list)


async def ticker(writer: UsageWriter, out: Ticks, stop: asyncio.Event, max_s: float) -> None:
    last = perf_counter()
    end = last + max_s
    while not stop.is_set() and last < end:
        await asyncio.sleep(TICK_S)
        now = perf_counter()
        out.samples.append((now, now - last, writer.rows_written, thread_time()))
        last = now


@dataclass
class Drain:
    rows: int
    seconds: float
    batches: int  # batch completions seen (several in one tick count as one group)
    stall_ms: list[float]  # per group: longest gap minus 1 ms, sorted
    cpu_ms: list[float]  # per group: loop-thread CPU minus the ticker's, sorted
    rows_per_group: list[int]
    idle_gap_ms: list[float]  # the ticker with the writer idle, sorted
    ticker_cpu_us: float  # per tick, idle
    pg_cpu_ms: float
    loop_cpu_ms: float


async def drain_phase(writer: UsageWriter, services: EmbeddedServices, rows: int,
                      max_s: float) -> Drain:
    # Idle baseline: what a 1 ms sleep looks like, and what the ticker costs, with no writer.
    idle, stop = Ticks(), asyncio.Event()
    c0 = thread_time()
    task = asyncio.create_task(ticker(writer, idle, stop, 0.5))
    await asyncio.sleep(0.5)
    stop.set()
    await task
    ticker_cpu = (thread_time() - c0) / max(1, len(idle.samples))

    records = make_records(rows, "w")
    # Built outside the measurement; frozen so that the collector does not walk them again
    # (they stand for rows that, in the proxy, arrive one per request).
    gc.collect()
    gc.freeze()
    base = writer.rows_written
    for r in records:  # one synchronous burst: the queue is full before the clock starts
        writer.submit(r)
    del records
    ticks, stop = Ticks(), asyncio.Event()
    pg0, cpu0 = pg_ticks(services), thread_time()
    t0 = perf_counter()
    task = asyncio.create_task(ticker(writer, ticks, stop, max_s))
    deadline = t0 + max_s
    while writer.rows_written - base < rows and perf_counter() < deadline:
        await asyncio.sleep(0.002)
    t1 = perf_counter()
    stop.set()
    await task
    loop_cpu = (thread_time() - cpu0) * 1000
    pg_cpu = benchlib.ticks_to_ms(pg_ticks(services) - pg0)
    gc.unfreeze()

    stalls, cpus, sizes = [], [], []
    prev_rows, prev_cpu, worst, n_ticks = base, cpu0, 0.0, 0
    for _, gap, seen, cpu in ticks.samples:
        worst = max(worst, gap)
        n_ticks += 1
        if seen != prev_rows:  # a batch finished during this gap: close its group
            stalls.append(max(0.0, worst - TICK_S) * 1000)
            cpus.append(max(0.0, (cpu - prev_cpu) - n_ticks * ticker_cpu) * 1000)
            sizes.append(seen - prev_rows)
            prev_rows, prev_cpu, worst, n_ticks = seen, cpu, 0.0, 0
    return Drain(writer.rows_written - base, t1 - t0, len(sizes), sorted(stalls), sorted(cpus),
                 sizes, sorted(g * 1000 for _, g, _, _ in idle.samples), ticker_cpu * 1e6,
                 pg_cpu, loop_cpu)


# --------------------------------------------------------------------------- phase 2

@dataclass
class ProbeResult:
    condition: str  # "quiet" | "flushing"
    sent: int = 0
    errors: int = 0
    lat_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    rows_written: int = 0
    seconds: float = 0.0

    def merge(self, o: ProbeResult) -> None:
        self.sent += o.sent
        self.errors += o.errors
        self.lat_ms = sorted(self.lat_ms + o.lat_ms)
        self.lag_ms = sorted(self.lag_ms + o.lag_ms)
        self.rows_written += o.rows_written
        self.seconds += o.seconds


async def probe_round(gate: Gate, writer: UsageWriter, rate: int, seconds: float,
                      feed: list[UsageRecord] | None, feed_rate: int,
                      condition: str) -> ProbeResult:
    loop = asyncio.get_running_loop()
    res = ProbeResult(condition)
    n = max(1, round(rate * seconds))
    interval = 10**9 // rate
    start = time.monotonic_ns() + 20_000_000  # 20 ms from now: the reader is installed
    timer = PeriodicTimer(start, interval)
    tasks: set[asyncio.Task[None]] = set()
    done = asyncio.Event()
    nxt = 0

    async def one(due: int) -> None:
        try:
            await gate.check(ORG, UNLIMITED, "bench:writer:absent")
        except Exception:  # noqa: BLE001  (counted; the run is judged on them)
            res.errors += 1
            return
        res.lat_ms.append((time.monotonic_ns() - due) / 1e6)

    def on_tick() -> None:
        nonlocal nxt
        k = timer.expirations()
        now = time.monotonic_ns()
        for _ in range(k):
            if nxt >= n:
                break
            due = start + nxt * interval
            res.lag_ms.append((now - due) / 1e6)
            t = loop.create_task(one(due))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            nxt += 1
        if nxt >= n:
            loop.remove_reader(timer.fd)
            done.set()

    async def feeder() -> None:
        # Pre-built rows in 10 ms chunks: the writer then COPYs batch after batch.
        assert feed is not None
        chunk = max(1, feed_rate // 100)
        t, i = loop.time(), 0
        while not done.is_set() and i < len(feed):
            for r in feed[i:i + chunk]:
                writer.submit(r)
            i += chunk
            t += 0.01
            await asyncio.sleep(max(0.0, t - loop.time()))

    rows0, t0 = writer.rows_written, perf_counter()
    feed_task = asyncio.create_task(feeder()) if feed is not None else None
    loop.add_reader(timer.fd, on_tick)
    try:
        async with asyncio.timeout(seconds + 10):  # backstop; the count ends the round
            await done.wait()
            while tasks:
                await asyncio.wait(set(tasks))
    finally:
        loop.remove_reader(timer.fd)
        timer.close()
        if feed_task is not None:
            feed_task.cancel()
            await asyncio.gather(feed_task, return_exceptions=True)
    res.sent = nxt
    res.seconds = perf_counter() - t0
    res.rows_written = writer.rows_written - rows0
    res.lat_ms.sort()
    res.lag_ms.sort()
    return res


# --------------------------------------------------------------------------- run

@dataclass
class Outcome:
    drain: Drain
    probes: dict[str, ProbeResult]
    feed_rate: int
    table_rows: int
    expected_rows: int
    writer_counters: dict[str, int]
    pg_version: str


async def run(args: argparse.Namespace, services: EmbeddedServices, tmp: Path) -> Outcome:
    assert services.postgres_dsn and services.redis_url
    # The proxy's pool settings (postgres.pool_min / pool_max defaults).
    pool = await db.create_pool(services.postgres_dsn, 1, 10)
    redis = aioredis.Redis.from_url(services.redis_url, decode_responses=False,
                                    max_connections=64)
    writer = None
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
            pg_version = str(await conn.fetchval("SHOW server_version"))
        gate = Gate(redis)
        await gate.load()
        total_feed = round(args.flush_rate * args.probe_seconds * args.rounds * 1.2) + 100
        writer = UsageWriter(
            pool, flush_rows=args.flush_rows, flush_interval_ms=args.flush_interval_ms,
            queue_max=max(100_000, args.rows + total_feed + 1), spill_dir=tmp / "spill")
        await writer.start()

        print(f"phase 1: {args.rows} rows, batches of {args.flush_rows} ...", flush=True)
        drain = await drain_phase(writer, services, args.rows, args.max_seconds)
        rows_s = drain.rows / drain.seconds
        print(f"  {drain.rows} rows in {drain.seconds:.2f} s = {rows_s:,.0f} rows/s; worst "
              f"stall {drain.stall_ms[-1] if drain.stall_ms else float('nan'):.2f} ms",
              flush=True)

        # The feeder must stay below what the writer can do, or the queue (and then the
        # spill) grows and the round measures a backlog instead of steady flushing.
        feed_rate = min(args.flush_rate, int(rows_s * 0.5))
        feed = make_records(round(feed_rate * args.probe_seconds * args.rounds * 1.2) + 100,
                            "f")
        gc.collect()
        gc.freeze()
        probes = {c: ProbeResult(c) for c in ("quiet", "flushing")}
        # Warm the Redis pool and the script before anything is measured.
        for _ in range(200):
            await gate.check(ORG, UNLIMITED, "bench:writer:absent")
        pos = 0
        for rnd in range(args.rounds):
            order = ("quiet", "flushing") if rnd % 2 == 0 else ("flushing", "quiet")
            for cond in order:
                part = None
                if cond == "flushing":
                    size = round(feed_rate * args.probe_seconds * 1.1) + 100
                    part, pos = feed[pos:pos + size], pos + size
                else:
                    await asyncio.sleep(args.flush_interval_ms / 1000 * 2)  # let it go idle
                r = await probe_round(gate, writer, args.probe_rate, args.probe_seconds,
                                      part, feed_rate, cond)
                print(f"  round {rnd + 1} {cond:8s}: {r.sent} probes, p50 "
                      f"{percentile(r.lat_ms, 50):.3f} p99 {percentile(r.lat_ms, 99):.3f} max "
                      f"{percentile(r.lat_ms, 100):.3f} ms, {r.rows_written} rows written",
                      flush=True)
                probes[cond].merge(r)
        gc.unfreeze()
        del feed
        await writer.close(10.0)
        counters = {"rows_written": writer.rows_written, "rows_spilled": writer.rows_spilled,
                    "rows_dropped": writer.rows_dropped, "flush_errors": writer.flush_errors}
        writer = None
        async with pool.acquire() as conn:
            table_rows = int(await conn.fetchval("SELECT count(*) FROM usage_log"))
        return Outcome(drain, probes, feed_rate, table_rows, counters["rows_written"],
                       counters, pg_version)
    finally:
        if writer is not None:
            await writer.close(5.0)
        await redis.aclose()
        await asyncio.wait_for(pool.close(), 10)


# --------------------------------------------------------------------------- report

def _f(x: float, nd: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{nd}f}"  # x != x: NaN


def drain_table(o: Outcome, flush_rows: int) -> list[list[str]]:
    d = o.drain
    return [
        ["rows written", f"{d.rows:,}"],
        ["time to write them (s)", _f(d.seconds, 2)],
        ["**throughput (rows/s)**", f"**{d.rows / d.seconds:,.0f}**"],
        ["batches (flush_rows)", f"{d.batches} (≤ {flush_rows} rows each)"],
        ["worst loop stall per batch: p50 / p99 / max (ms)",
         f"{_f(percentile(d.stall_ms, 50))} / {_f(percentile(d.stall_ms, 99))} / "
         f"**{_f(percentile(d.stall_ms, 100))}**"],
        ["loop-thread CPU per batch: p50 / max (ms)",
         f"{_f(percentile(d.cpu_ms, 50))} / {_f(percentile(d.cpu_ms, 100))}"],
        ["loop-thread CPU per row (µs), whole drain",
         _f(d.loop_cpu_ms * 1000 / d.rows, 2) if d.rows else "n/a"],
        ["PostgreSQL CPU per 1,000 rows (ms)",
         _f(d.pg_cpu_ms * 1000 / d.rows, 1) if d.rows else "n/a"],
        ["idle baseline: 1 ms sleep took p50 / max (ms)",
         f"{_f(percentile(d.idle_gap_ms, 50))} / {_f(percentile(d.idle_gap_ms, 100))}"],
        ["ticker's own CPU per tick (µs, subtracted)", _f(d.ticker_cpu_us, 1)],
    ]


PROBE_HEADER = ["condition", "probes", "errors", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
                "timer lag p99 ms", "usage rows written during (rows/s)"]


def probe_rows(o: Outcome) -> list[list[str]]:
    rows = []
    for c in ("quiet", "flushing"):
        p = o.probes[c]
        rows.append([c, str(p.sent), str(p.errors), _f(percentile(p.lat_ms, 50)),
                     _f(percentile(p.lat_ms, 99)), _f(percentile(p.lat_ms, 99.9)),
                     _f(percentile(p.lat_ms, 100)), _f(percentile(p.lag_ms, 99)),
                     f"{p.rows_written:,} ({p.rows_written / p.seconds:,.0f})"
                     if p.seconds else "0"])
    return rows


def problems(o: Outcome) -> list[str]:
    out = []
    if o.table_rows != o.expected_rows:
        out.append(f"usage_log holds {o.table_rows} rows, the writer wrote {o.expected_rows}")
    for k in ("rows_spilled", "rows_dropped", "flush_errors"):
        if o.writer_counters[k]:
            out.append(f"{k} = {o.writer_counters[k]}")
    if o.drain.rows < 1:
        out.append("no rows written in phase 1")
    return out


def render(args: argparse.Namespace, o: Outcome, machine: dict[str, str],
           elapsed: float) -> str:
    md = benchlib.markdown_table
    q, f = o.probes["quiet"], o.probes["flushing"]
    d50 = percentile(f.lat_ms, 50) - percentile(q.lat_ms, 50)
    d99 = percentile(f.lat_ms, 99) - percentile(q.lat_ms, 99)
    fmax = percentile(f.lat_ms, 100)
    goal = "met" if fmax <= GOAL_MAX_MS else "MISSED"
    bad = problems(o)
    mode = ("`fast=True` (fsync and synchronous_commit off): an upper bound, not production"
            if args.fast else "durable (`fast=False`: fsync and synchronous_commit on, as in "
            "production, where every batch's commit waits for its WAL flush)")
    facts = {**machine, "postgresql": o.pg_version,
             **benchlib.package_versions(("asyncpg", "uvloop", "redis", "hiredis"))}
    return "\n".join([
        f"## {SECTION}\n",
        f"Generated by `bench/writer.py` on {machine['date (UTC)']} UTC in {elapsed:.0f} s: "
        f"`{' '.join(['bench/writer.py', *sys.argv[1:]])}`. The real `UsageWriter` "
        f"(flush_rows {args.flush_rows}, flush_interval_ms {args.flush_interval_ms}, the "
        "proxy's pool of 1-10 connections) on uvloop, against a private PostgreSQL run "
        f"{mode}, with every migration (partitioned `usage_log`, its indexes and the rollup "
        "trigger).\n",
        "### Throughput and event-loop stalls\n",
        f"{args.rows:,} realistic miss rows submitted in one burst, then drained by the writer "
        "as fast as it goes. A ticker task sleeping 1 ms in a loop measures the event loop: "
        "\"stall\" is how much longer than 1 ms its longest sleep within a batch took (the "
        "time no other coroutine, e.g. a request, could run); \"CPU per batch\" is the loop "
        "thread's CPU between two batch completions minus the ticker's own cost.\n",
        md(["measure", "value"], drain_table(o, args.flush_rows)) + "\n",
        "### Hot path with and without the writer flushing\n",
        f"Real `Gate.check` calls (the proxy's one Redis round trip per request) against "
        f"Valkey, open loop at {args.probe_rate} req/s on a kernel timer, timed from each "
        f"call's due time; {args.rounds} round(s) of {args.probe_seconds:g} s per condition, "
        "alternating, same process and loop. \"quiet\": the writer is idle. \"flushing\": a "
        f"feeder submits {o.feed_rate:,} rows/s (half the throughput above, at most "
        f"`--flush-rate`) in 10 ms chunks, so the writer COPYs continuously.\n",
        md(PROBE_HEADER, probe_rows(o)) + "\n",
        f"Flushing − quiet: p50 {d50:+.3f} ms, p99 {d99:+.3f} ms. Goal (issue 4) \"no "
        f"request slower than {GOAL_MAX_MS:g} ms at 1,000 req/s while the writer flushes\": "
        f"max {_f(fmax)} ms at {args.probe_rate} req/s, **{goal}**.\n",
        ("Checks: usage_log holds exactly the rows written "
         f"({o.table_rows:,}); nothing spilled, dropped or failed." if not bad else
         "**Checks FAILED:** " + "; ".join(bad) + "."),
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()) + ".\n",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000, help="rows for the throughput phase")
    p.add_argument("--flush-rows", type=int, default=500, help="usage.flush_rows")
    p.add_argument("--flush-interval-ms", type=int, default=200, help="usage.flush_interval_ms")
    p.add_argument("--probe-rate", type=int, default=1000, help="Gate.check calls per second")
    p.add_argument("--probe-seconds", type=float, default=3.0, help="per round and condition")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--flush-rate", type=int, default=10_000,
                   help="rows/s fed during 'flushing' rounds (capped at half the throughput)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="bound on the drain")
    p.add_argument("--fast", action="store_true",
                   help="PostgreSQL without fsync (an upper bound; default: durable)")
    p.add_argument("--output", type=Path, default=benchlib.BENCH / "RESULTS.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.rows <= 1_000_000:
        p.error("--rows must be in 1..1000000")
    if not 1 <= args.probe_rate <= 10_000 or not 0 < args.probe_seconds <= 60:
        p.error("--probe-rate must be in 1..10000 and --probe-seconds in (0, 60]")
    if not 1 <= args.rounds <= 10 or not 0 <= args.flush_rate <= 200_000:
        p.error("--rounds must be in 1..10 and --flush-rate in 0..200000")
    if not sys.platform.startswith("linux"):
        p.error("needs Linux (timerfd, /proc)")

    t_start, machine = benchlib.begin()
    with benchlib.workdir("cognitude-writer-", args.keep_tmp) as tmp:
        services = EmbeddedServices(tmp / "embedded", fast=args.fast)
        try:
            print(f"starting Valkey and PostgreSQL ({'fast' if args.fast else 'durable'}) "
                  f"under {tmp} ...", flush=True)
            services.start()
            outcome = uvloop.run(run(args, services, tmp))
            elapsed = time.monotonic() - t_start
            print()
            print(benchlib.markdown_table(["measure", "value"], drain_table(outcome,
                                                                            args.flush_rows)))
            print()
            print(benchlib.markdown_table(PROBE_HEADER, probe_rows(outcome)))
            if not args.no_write:
                benchlib.replace_section(args.output, SECTION, render(args, outcome, machine,
                                                                      elapsed))
                print(f"\nwrote the {SECTION!r} section of {args.output}")
            bad = problems(outcome)
            if bad:
                print("FAILED: " + "; ".join(bad), file=sys.stderr)
                return 1
            return 0
        except asyncpg.PostgresError as exc:
            print(f"PostgreSQL error: {exc}", file=sys.stderr)
            return 1
        finally:
            services.stop()


if __name__ == "__main__":
    sys.exit(main())
