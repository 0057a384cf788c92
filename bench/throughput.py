"""Closed-loop maximum throughput: how many requests one proxy worker answers per second.

    .venv/bin/python bench/throughput.py [--connections 16,32,64] [--duration 8] [--warmup 2]
        [--scenarios hit,miss] [--procs 1] [--output bench/RESULTS.md] [--no-write]

Issue 4: "one worker sustains ≥ 3,000 req/s of hits and ≥ 1,500 req/s of misses with the
usage writer running and no errors". The environment is ``overhead.py``'s ``start_env``:
private Valkey + PostgreSQL, ``cognitude mock-upstream`` and ``cognitude serve`` with one
worker and the default config (usage writer and cold tier on), all on 127.0.0.1.

For every scenario and connection count K the generator opens K keep-alive HTTP/1.1
connections (split over ``--procs`` generator processes) and each sends its next request
as soon as the previous one answered (closed loop, no pipelining), for ``--warmup`` +
``--duration`` seconds, first straight at the mock ("direct": what the generator and the
loopback path can do without the proxy) and then through the proxy. Reported per run: the
requests answered inside the measured window per second, errors, p50/p99 of send → last
byte, the answering server's CPU (% of one core and ms per request, utime+stime from
``/proc``), Valkey's CPU and the generator's own CPU. Each request is sent at most once
per connection at a time, every load loop stops at its time limit and at ``MAX_PER_WORKER``
requests, and a worker that outlives its deadline by 15 s is killed.

After each proxy run the script waits for the usage writer and counts the ``usage_log``
rows of the bench org written during the run: they must equal the requests the proxy
answered (warm-up included, whatever the status), each request id exactly once.

The generator is the raw ``asyncio.Protocol`` client idea of ``overhead.py`` in closed-loop
form; workers are this same file run with ``--worker`` (JSON in, JSON out).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from benchlib import LOOPBACK, cpu_ticks, percentile, ticks_to_ms  # noqa: E402

TARGETS = {"hit": 3000, "miss": 1500}  # req/s, issue 4
MAX_PER_WORKER = 2_000_000  # count bound of one worker's loop (besides its time bound)
GENERATOR_BOUND_SHARE = 0.85  # a generator process above this share of a core is suspect


# --------------------------------------------------------------------------- worker side

class _Conn(asyncio.Protocol):
    """Closed loop on one keep-alive connection: send, parse the Content-Length reply,
    send the next. Only fixed-length JSON replies (hit and miss) are expected."""

    def __init__(self, w: _Worker) -> None:
        self.w = w
        self.transport: Any = None
        self.buf = bytearray()
        self.sent_ns = 0
        self.body_at = -1
        self.length = -1
        self.status = 0
        self.cache = b""
        self.retired = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self) -> None:
        self.sent_ns = time.monotonic_ns()
        self.transport.write(self.w.next_request())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.body_at < 0:
            parsed = benchlib.parse_head(buf)
            if parsed is None:
                return
            self.body_at, self.status, self.length, headers = parsed
            self.cache = headers.get(b"x-cognitude-cache", b"")
        if self.length < 0 or len(buf) < self.body_at + self.length:
            return
        now = time.monotonic_ns()
        status, cache = self.status, self.cache
        buf.clear()
        self.body_at = self.length = -1
        self.cache = b""
        self.w.done(self, now, status, cache)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.w.lost(self)


class _Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.port = spec["port"]
        self.head = spec["head"].encode()  # request line + headers, without Content-Length
        self.fixed = spec["body"].encode() if spec["fixed"] else b""
        self.body_prefix, self.body_suffix = (spec["body_prefix"].encode(),
                                              spec["body_suffix"].encode())
        self.expect_status = spec["status"]
        self.expect_cache = spec["cache"].encode() if spec["cache"] else None
        self.t_start = spec["t_start_ns"]
        self.ws = self.t_start + int(spec["warmup"] * 1e9)
        self.we = self.ws + int(spec["duration"] * 1e9)
        self.seq = 0
        self.answered = 0  # every 200 of the right kind, warm-up included
        self.ok = 0  # answered inside the window
        self.errors = 0
        self.errors_all = 0  # warm-up and tail included
        self.responses = 0  # every complete response, whatever its status
        self.error_kinds: dict[str, int] = {}
        self.lat_us: list[int] = []
        self.active = 0
        self.cpu0 = self.cpu1 = 0.0
        self.fut: asyncio.Future[None] | None = None

    def next_request(self) -> bytes:
        self.seq += 1
        if self.fixed:
            body = self.fixed
        else:
            body = self.body_prefix + str(self.seq).encode() + self.body_suffix
        return self.head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body

    def _err(self, kind: str, now: int) -> None:
        self.errors_all += 1
        if self.ws <= now < self.we:
            self.errors += 1
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def done(self, conn: _Conn, now: int, status: int, cache: bytes) -> None:
        self.responses += 1
        if status != self.expect_status:
            self._err(f"status {status}", now)
        elif self.expect_cache is not None and cache != self.expect_cache:
            self._err(f"cache {cache.decode()!r}", now)
        else:
            self.answered += 1
            if self.ws <= now < self.we:
                self.ok += 1
                self.lat_us.append((now - conn.sent_ns) // 1000)
        if now < self.we and self.seq < MAX_PER_WORKER:
            conn.send()
        else:
            self._retire(conn)

    def lost(self, conn: _Conn) -> None:
        if conn.retired:
            return
        self._err("connection lost", time.monotonic_ns())
        self._retire(conn)

    def _retire(self, conn: _Conn) -> None:
        if conn.retired:  # closing it below calls lost() again
            return
        conn.retired = True
        self.active -= 1
        if conn.transport is not None:
            conn.transport.close()
        if self.active <= 0 and self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.fut = loop.create_future()
        conns = []
        for _ in range(self.spec["conns"]):
            _, c = await loop.create_connection(lambda: _Conn(self), LOOPBACK, self.port)
            conns.append(c)
        gc.collect()
        gc.freeze()
        gc.disable()
        off = time.monotonic() - loop.time()  # loop clock → CLOCK_MONOTONIC
        loop.call_at(self.ws / 1e9 - off, self._mark, 0)
        loop.call_at(self.we / 1e9 - off, self._mark, 1)
        await asyncio.sleep(max(0.0, (self.t_start - time.monotonic_ns()) / 1e9))
        self.active = len(conns)
        for c in conns:
            c.send()
        try:  # time bound: the window, then 5 s for the last answers
            await asyncio.wait_for(asyncio.shield(self.fut),
                                   (self.we - time.monotonic_ns()) / 1e9 + 5.0)
        except TimeoutError:
            self.errors += self.active
            self.error_kinds["unanswered at deadline"] = self.active
        for c in conns:
            if c.transport is not None:
                c.transport.close()
        if not self.cpu1:
            self.cpu1 = time.process_time()
        return {"answered": self.answered, "ok": self.ok, "errors": self.errors,
                "error_kinds": self.error_kinds, "lat_us": self.lat_us, "sent": self.seq,
                "errors_all": self.errors_all, "responses": self.responses,
                "cpu_ms": (self.cpu1 - self.cpu0) * 1000}

    def _mark(self, which: int) -> None:
        if which == 0:
            self.cpu0 = time.process_time()
        else:
            self.cpu1 = time.process_time()


def worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    res = uvloop.run(_Worker(spec).run())
    Path(spec["out"]).write_text(json.dumps(res))  # not stdout: ~1 MB of latencies
    return 0


# --------------------------------------------------------------------------- parent side

def _request_spec(env: Any, scenario: str, target: str, k: int, wid: int) -> dict[str, Any]:
    from overhead import PROMPT, chat_body
    port = env.mock.port if target == "direct" else env.proxy_port
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
            "Content-Type: application/json\r\n")
    if target == "proxy":
        head += f"Authorization: Bearer {env.key}\r\n"
    spec: dict[str, Any] = {"port": port, "head": head, "status": 200,
                            "cache": None if target == "direct" else scenario,
                            "fixed": scenario == "hit", "body": "", "body_prefix": "",
                            "body_suffix": ""}
    if scenario == "hit":
        spec["body"] = chat_body(PROMPT).decode()
    else:
        # Unique per request and per run: "<prompt> (tp miss K<k> w<wid> r<nonce> #<seq>)".
        marker = "@@SEQ@@"
        doc = chat_body(f"{PROMPT} (tp miss K{k} w{wid} r{time.time_ns()} #{marker})").decode()
        spec["body_prefix"], spec["body_suffix"] = doc.split(marker)
    return spec


def _spawn_worker(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=benchlib._die_with_parent)


def run_load(env: Any, scenario: str, target: str, k: int, args: argparse.Namespace
             ) -> dict[str, Any]:
    procs = min(args.procs, k)
    t_start = time.monotonic_ns() + int(1.5e9)  # every worker connected and idle by then
    workers = []
    for wid in range(procs):
        spec = _request_spec(env, scenario, target, k, wid)
        spec.update(out=str(env.tmp / f"worker-{scenario}-{target}-{k}-{wid}.json"),
                    conns=k // procs + (1 if wid < k % procs else 0), t_start_ns=t_start,
                    warmup=args.warmup, duration=args.duration)
        workers.append(_spawn_worker(spec))
    pids = {"server": env.mock.pid if target == "direct" else env.proxy.pid,
            "valkey": env.valkey_pid}
    ws = t_start + int(args.warmup * 1e9)
    we = ws + int(args.duration * 1e9)
    time.sleep(max(0.0, (ws - time.monotonic_ns()) / 1e9))
    cpu0 = {n: cpu_ticks(p) for n, p in pids.items() if p > 0}
    time.sleep(max(0.0, (we - time.monotonic_ns()) / 1e9))
    cpu1 = {n: cpu_ticks(p) for n, p in pids.items() if p > 0}
    outs = []
    for wid, w in enumerate(workers):
        try:
            _, err = w.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            w.kill()
            _, err = w.communicate(timeout=5)
        if w.returncode != 0:
            raise RuntimeError(f"generator failed ({w.returncode}): {err.decode()[-2000:]}")
        outs.append(json.loads(
            (env.tmp / f"worker-{scenario}-{target}-{k}-{wid}.json").read_text()))
    lat = sorted(x / 1000 for o in outs for x in o["lat_us"])
    kinds: dict[str, int] = {}
    for o in outs:
        for kk, v in o["error_kinds"].items():
            kinds[kk] = kinds.get(kk, 0) + v
    ok = sum(o["ok"] for o in outs)
    cpu = {n: (ticks_to_ms(sum(cpu1[n]) - sum(cpu0[n])), ticks_to_ms(cpu1[n][1] - cpu0[n][1]))
           for n in cpu0}
    return {
        "scenario": scenario, "target": target, "k": k, "procs": procs, "ok": ok,
        "answered": sum(o["answered"] for o in outs), "sent": sum(o["sent"] for o in outs),
        "errors_all": sum(o["errors_all"] for o in outs),
        "responses": sum(o["responses"] for o in outs),
        "errors": sum(o["errors"] for o in outs), "error_kinds": kinds,
        "rps": ok / args.duration, "p50": percentile(lat, 50), "p99": percentile(lat, 99),
        "max": percentile(lat, 100),
        "server_cpu_ms": cpu["server"][0], "server_sys_ms": cpu["server"][1],
        "valkey_cpu_ms": cpu["valkey"][0] if "valkey" in cpu else float("nan"),
        "gen_cpu_ms": [o["cpu_ms"] for o in outs], "duration": args.duration,
    }


async def _usage_count(dsn: str, org: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM usage_log "
            "WHERE org_id = $1", org)
        return int(row["n"]), int(row["d"])
    finally:
        await conn.close()


async def _org_id(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SELECT id FROM organizations WHERE name = 'bench'"))
    finally:
        await conn.close()


def wait_usage(dsn: str, org: str, expected: int, timeout: float = 20.0) -> tuple[int, int]:
    """Poll until usage_log holds ``expected`` rows for the org, or stops growing."""
    deadline = time.monotonic() + timeout
    last, stable = (-1, -1), 0
    while True:
        n = asyncio.run(_usage_count(dsn, org))
        if n[0] >= expected or time.monotonic() > deadline:
            time.sleep(0.5)  # anything beyond expected (a double write) shows up too
            return asyncio.run(_usage_count(dsn, org))
        stable = stable + 1 if n == last else 0
        if stable >= 6:  # 3 s without a new row
            return n
        last = n
        time.sleep(0.5)


# --------------------------------------------------------------------------- report

def _f(x: float, nd: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{nd}f}"


HEADER = ["scenario", "connections", "target", "req/s", "errors", "p50 ms", "p99 ms",
          "max ms", "server CPU % of a core", "server CPU ms/req (kernel share)",
          "valkey CPU ms/req", "generator CPU % of a core", "usage rows (exactly once)"]


def rows_of(runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in runs:
        err = str(r["errors"])
        if r["errors_all"] != r["errors"]:
            err += f" ({r['errors_all']} incl. warm-up)"
        if r["error_kinds"]:
            err += " (" + ", ".join(f"{k}: {v}" for k, v in r["error_kinds"].items()) + ")"
        n = r["ok"] or 1
        cpu = r["server_cpu_ms"]
        kshare = 100 * r["server_sys_ms"] / cpu if cpu else float("nan")
        gen = " + ".join(f"{c / r['duration'] / 10:.0f}" for c in r["gen_cpu_ms"])
        rows.append([
            r["scenario"], str(r["k"]), r["target"], f"{r['rps']:,.0f}", err,
            _f(r["p50"]), _f(r["p99"]), _f(r["max"]),
            f"{r['server_cpu_ms'] / r['duration'] / 10:.0f}",
            f"{_f(r['server_cpu_ms'] / n)} "
            f"({_f(kshare, 0)} %)",
            _f(r["valkey_cpu_ms"] / n) if r["target"] == "proxy" else "",
            gen, r.get("usage", ""),
        ])
    return rows


def verdicts(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for scen, goal in TARGETS.items():
        prox = [r for r in runs if r["scenario"] == scen and r["target"] == "proxy"]
        if not prox:
            continue
        clean = [r for r in prox if r["errors_all"] == 0 and r.get("usage_ok", False)]
        best = max(clean or prox, key=lambda r: r["rps"])
        met = bool(clean) and best["rps"] >= goal
        out.append((scen, f"{scen}: best {best['rps']:,.0f} req/s at {best['k']} connections "
                          f"({best['errors']} errors, usage rows "
                          f"{'exact' if best.get('usage_ok') else 'NOT exact'}) vs goal "
                          f"≥ {goal:,} req/s: **{'met' if met else 'MISSED'}**"))
    return out


def render(runs: list[dict[str, Any]], args: argparse.Namespace, machine: dict[str, str],
           elapsed: float, notes: list[str]) -> str:
    out = ["## Throughput\n"]
    out.append(
        f"Generated by `bench/throughput.py` on {machine['date (UTC)']} UTC in {elapsed:.0f} s: "
        f"`{' '.join(['bench/throughput.py', *sys.argv[1:]])}`. Closed loop: K keep-alive "
        f"connections (over {args.procs} generator process(es) of a raw `asyncio.Protocol` "
        f"client on uvloop) each send their next request the moment the previous one "
        f"answered, {args.warmup:g} s unrecorded warm-up then {args.duration:g} s measured, "
        "straight at the mock (\"direct\") and through the proxy (one worker, the default "
        "config: usage writer and cold tier on; same environment as `overhead.py`). req/s = "
        "answers inside the measured window / its length; p50/p99 from send to last byte (a "
        "closed loop: latency here is queueing at saturation, not overhead); CPU from "
        "`/proc` over the window (100 % = one core; the machine has "
        f"{machine['nproc']}). `hit` repeats one cached body; `miss` sends a unique prompt "
        "per request (upstream call + cache write-back + usage row). \"usage rows\": after "
        "each proxy run the bench org's new `usage_log` rows vs the requests the proxy "
        "answered in that run (warm-up included, any status), and distinct request ids.\n")
    out.append(benchlib.markdown_table(HEADER, rows_of(runs)) + "\n")
    for _, v in verdicts(runs):
        out.append(f"- {v}")
    out.append("")
    out.extend(notes)
    out.append("Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()) + ".\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", default="16,32,64")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--scenarios", default="hit,miss")
    p.add_argument("--procs", type=int, default=1, help="generator processes")
    p.add_argument("--output", type=Path, default=benchlib.BENCH / "RESULTS.md")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    ks = [int(x) for x in args.connections.split(",") if x.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not ks or any(not 1 <= k <= 512 for k in ks):
        p.error("--connections: integers in 1..512")
    if any(s not in TARGETS for s in scenarios):
        p.error("--scenarios: hit, miss")
    if not 0 < args.duration <= 60 or not 0 <= args.warmup <= 30 or not 1 <= args.procs <= 4:
        p.error("--duration in (0, 60], --warmup in [0, 30], --procs in 1..4")

    import overhead  # sibling: its running (start_env / warm_cache / stop_env)

    t0, machine = benchlib.begin()
    with benchlib.workdir("cognitude-tp-", args.keep_tmp) as tmp:
        print(f"starting Valkey, PostgreSQL, the mock and the proxy under {tmp} ...",
              flush=True)
        with overhead.running(tmp, scenarios) as env:
            dsn = env.services.postgres_dsn
            assert dsn
            org = asyncio.run(_org_id(dsn))
            print(f"proxy pid {env.proxy.pid}, mock pid {env.mock.pid}, valkey pid "
                  f"{env.valkey_pid}", flush=True)
            runs = []
            for scen in scenarios:
                for k in ks:
                    for target in ("direct", "proxy"):
                        before = (asyncio.run(_usage_count(dsn, org)) if target == "proxy"
                                  else None)
                        log_at = env.proxy_log.stat().st_size
                        r = run_load(env, scen, target, k, args)
                        if target == "proxy":
                            r["proxy_log"] = _log_reasons(env.proxy_log, log_at)
                        if before is not None:
                            # Every response the proxy sent (errors included) is a usage row.
                            n, d = wait_usage(dsn, org, before[0] + r["responses"])
                            dn, dd = n - before[0], d - before[1]
                            r["usage_ok"] = dn == dd == r["responses"]
                            r["usage"] = (f"{dn:,} rows / {r['responses']:,} answered, "
                                          f"{dd:,} ids: "
                                          + ("exact" if r["usage_ok"] else "MISMATCH"))
                        print(f"  {scen:4s} K={k:3d} {target:6s} {r['rps']:8.0f} req/s "
                              f"err={r['errors']} p50={r['p50']:.3f} p99={r['p99']:.3f} ms "
                              f"cpu={r['server_cpu_ms'] / r['duration'] / 10:.0f} % "
                              f"({r['server_cpu_ms'] / max(1, r['ok']):.3f} ms/req) gen cpu="
                              + "+".join(f"{c / r['duration'] / 10:.0f}"
                                         for c in r["gen_cpu_ms"])
                              + f" % sent={r['sent']} answered={r['answered']} "
                              f"errors_all={r['errors_all']} " + r.get("usage", ""),
                              flush=True)
                        runs.append(r)
                        time.sleep(0.5)
            elapsed = time.monotonic() - t0
            notes = _notes(runs)
            print()
            print(benchlib.markdown_table(HEADER, rows_of(runs)))
            for _, v in verdicts(runs):
                print(v)
            for n in notes:
                print(n)
            if not args.no_write:
                benchlib.replace_section(args.output, "Throughput",
                                         render(runs, args, machine, elapsed, notes))
                print(f"wrote the Throughput section of {args.output}")
            failed = [v for _, v in verdicts(runs) if "MISSED" in v]
            return 1 if failed or errored(runs) else 0


def _log_reasons(path: Path, offset: int) -> dict[str, int]:
    """WARNING/ERROR lines the proxy logged since ``offset``, counted by message (the
    part after the logger name, e.g. ``redis unavailable, failing open: MaxConnectionsError``)."""
    out: dict[str, int] = {}
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line:
                msg = line.split(": ", 1)[-1].strip()[:120]
                out[msg] = out.get(msg, 0) + 1
    return out


def errored(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r["target"] == "proxy" and
            (r["errors_all"] or not r.get("usage_ok", False))]


def _notes(runs: list[dict[str, Any]]) -> list[str]:
    """Is the generator the bottleneck? Direct figure vs proxy's, and its own CPU. And
    what the proxy logged when a run had errors."""
    notes = []
    for r in errored(runs):
        logged = "; ".join(f"`{m}` × {n:,}" for m, n in
                           sorted(r.get("proxy_log", {}).items(), key=lambda x: -x[1])[:3])
        notes.append(
            f"- **Errors: {r['scenario']} at {r['k']} connections**: {r['errors_all']:,} "
            f"wrong answers ({', '.join(f'{k}: {v:,}' for k, v in r['error_kinds'].items())}"
            f" in the window); the proxy logged {logged or 'nothing'}."
            + (" `X-Cognitude-Cache: BYPASS` here means the gate's Redis call failed and the "
               "proxy failed open (`[redis] fail_open`): served without rate limits or cache."
               if any("bypass" in k for k in r["error_kinds"]) else "")
            + (" `MaxConnectionsError`: every connection of redis-py's pool (`[redis] "
               "pool_size`, 64 by default) was checked out, and its `ConnectionPool` raises "
               "instead of waiting."
               if any("MaxConnectionsError" in m for m in r.get("proxy_log", {})) else ""))
    for scen in TARGETS:
        d = [r for r in runs if r["scenario"] == scen and r["target"] == "direct"]
        pr = [r for r in runs if r["scenario"] == scen and r["target"] == "proxy"]
        if not d or not pr:
            continue
        bd, bp = max(r["rps"] for r in d), max(r["rps"] for r in pr)
        gen_max = max(c / r["duration"] / 1000 for r in runs for c in r["gen_cpu_ms"]
                      if r["scenario"] == scen and r["target"] == "proxy")
        gen_ms = [sum(r["gen_cpu_ms"]) / max(1, r["ok"]) for r in pr]
        notes.append(
            f"- Generator check ({scen}): direct peaks at {bd:,.0f} req/s, "
            f"{bd / bp:.1f}× the proxy's {bp:,.0f}; during the proxy runs each generator "
            f"process used at most {gen_max:.0%} of a core "
            f"({min(gen_ms):.3f}-{max(gen_ms):.3f} ms CPU per request), so "
            + ("**the generator is not the bottleneck**." if bd > 1.5 * bp and
               gen_max < GENERATOR_BOUND_SHARE else
               "**the generator may be limiting: rerun with `--procs 2`**."))
    if notes:
        notes.append("")
    return notes


if __name__ == "__main__":
    sys.exit(main())
