"""Where the proxy's CPU goes: CPU per request vs rate, and py-spy profiles under open-loop load.

    .venv/bin/python bench/pyspy_profile.py [--rates 100,200,500,1000,2000] [--sweep-seconds 4]
        [--profiles hit@200,miss@200,miss@1000] [--profile-seconds 10] [--native]
        [--out /tmp/cognitude-profile] [--no-sweep] [--no-profile]

The environment is ``overhead.py``'s (``start_env``: one proxy worker, default config, usage
writer and cold tier on, everything on 127.0.0.1) and so is the load (its open-loop
``Phase`` on a timerfd, 8 keep-alive connections, proxy target only).

1. Idle: the proxy's CPU and context switches per second with no traffic (its timers:
   usage-writer flush, maintenance): a fixed cost that low rates divide by fewer requests.
2. Sweep: for hit and miss at each ``--rates`` rate, ``--sweep-seconds`` measured after 1 s
   of warm-up: proxy CPU ms/req (and the kernel's share) from ``/proc/<pid>/stat`` and
   context switches per request (voluntary + involuntary, all threads, from
   ``/proc/<pid>/task/*/status``): a context switch is a sleep in ``epoll_wait`` (or a
   futex) and a wake-up, so "switches per request" counts wake-ups not amortised over
   several requests. No profiler attached during the sweep.
3. Profiles: for each ``scenario@rate`` of ``--profiles``, ``py-spy record -r 500 -f raw``
   attached to the proxy for ``--profile-seconds`` while that load runs (py-spy costs CPU
   of its own and pauses the proxy to sample, so no latency or CPU figure is taken from
   these runs). The raw (collapsed-stack) files are aggregated into self and inclusive
   sample shares per module and per function; everything is written under ``--out``
   (``summary.md`` and the ``.txt`` stacks, openable with any flamegraph tool), plus a
   "CPU split" table: one bucket per stack (event loop in C, redis-py, aiohttp, uvicorn,
   asyncpg, our functions), with µs/req from the sweep's CPU ms/req at that rate.

   Without ``--native`` C time is charged to the Python frame that called it (a
   ``transport.write`` shows as its caller; time in uvloop itself as ``Runner.run``). With
   ``--native`` py-spy cannot tell idle native stacks apart, so every thread is sampled all
   the time (shares are then of wall time, not CPU). Either way the executor thread, which
   sleeps in ``SimpleQueue.get``, still shows up in the samples; the split drops it.

Nothing is written to ``bench/RESULTS.md``: its "What stands in the way" section is written
by hand from this output. Every load is bounded by its schedule (count) and a deadline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import overhead  # noqa: E402
from benchlib import cpu_ticks, ticks_to_ms  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"


def ctx_switches(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            continue  # thread gone
    return total


def _ns(**kw: object) -> argparse.Namespace:
    base = dict(warmup=1.0, duration=4.0, rounds=1, connections=8, client="raw")
    base.update(kw)
    return argparse.Namespace(**base)


def _bodies(env: overhead.Env, scen: str, rate: int, warmup: float, duration: float, tag: str
            ) -> tuple[dict[str, str], list[bytes], int]:
    n_warm = max(1, round(rate * warmup))
    n = n_warm + max(1, round(rate * duration))
    if scen == "hit":
        bodies = [overhead.chat_body(overhead.PROMPT)] * n
    else:
        bodies = [overhead.chat_body(f"{overhead.PROMPT} (profile {tag} {scen}@{rate} #{i})")
                  for i in range(n)]
    headers = {"Authorization": f"Bearer {env.key}", "Content-Type": "application/json"}
    return headers, bodies, n_warm


async def sweep(env: overhead.Env, scenarios: list[str], rates: list[int], seconds: float
                ) -> list[list[str]]:
    rows = []
    pid = env.proxy.pid
    for scen in scenarios:
        for rate in rates:
            headers, bodies, n_warm = _bodies(env, scen, rate, 1.0, seconds, "sweep")
            cs0 = ctx_switches(pid)
            res = await overhead._run_one(env, _ns(duration=seconds), scen, rate, "proxy",
                                          headers, bodies, n_warm)
            cs = ctx_switches(pid) - cs0
            n_all = len(bodies)
            rows.append([scen, str(rate), f"{res.achieved:.0f}", str(res.errors),
                         f"{res.cpu_ms_per_req:.3f}", f"{100 * res.sys_share:.0f} %",
                         f"{res.cpu_ms_per_req * rate / 10:.0f} %",
                         f"{cs / n_all:.2f}", f"{res.pct(50):.3f}"])
            print("  sweep " + " ".join(rows[-1]), flush=True)
    return rows


def idle(pid: int, seconds: float = 5.0) -> tuple[float, float]:
    c0, s0, t0 = sum(cpu_ticks(pid)), ctx_switches(pid), time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return ticks_to_ms(sum(cpu_ticks(pid)) - c0) / dt, (ctx_switches(pid) - s0) / dt


async def profile_one(env: overhead.Env, scen: str, rate: int, seconds: float, native: bool,
                      out: Path) -> Path:
    dest = out / f"{scen}@{rate}.txt"
    argv = [str(PY_SPY), "record", "-f", "raw", "--pid", str(env.proxy.pid), "-r", "500",
            "--duration", str(int(seconds)), "-o", str(dest)]
    if native:
        argv.append("--native")
    headers, bodies, n_warm = _bodies(env, scen, rate, 1.5, seconds + 1.0, "pyspy")
    spy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=open(out / f"{scen}@{rate}.log", "wb"),
                           preexec_fn=benchlib._die_with_parent)
    try:
        res = await overhead._run_one(env, _ns(warmup=1.5, duration=seconds + 1.0), scen,
                                      rate, "proxy", headers, bodies, n_warm)
        spy.wait(timeout=30)
    finally:
        benchlib.stop(spy)  # type: ignore[arg-type]
    print(f"  profiled {scen}@{rate}: ok={res.ok} err={res.errors} -> {dest}", flush=True)
    return dest


# --------------------------------------------------------------------------- aggregation

def _frame(fr: str) -> tuple[str, str]:
    """(function, file) of a py-spy raw frame ``func (path:line)`` or a native one."""
    fr = fr.strip()
    if fr.endswith(")") and " (" in fr:
        func, _, loc = fr[:-1].rpartition(" (")
        return func, loc.rsplit(":", 1)[0]
    return fr, ""


def module_of(path: str, func: str) -> str:
    if "/cognitude/" in path:
        return "cognitude/" + path.split("/cognitude/", 1)[1].split(":")[0]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/")[0].removesuffix(".py")
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return "stdlib:" + rest.split("/")[0].removesuffix(".py")
    if path.endswith(".so") or ".so." in path or not path:
        return "native:" + (os.path.basename(path) or func.split(" ")[0])
    return path


def aggregate(raw: Path) -> tuple[int, Counter[str], Counter[str], Counter[str], Counter[str]]:
    total = 0
    mod_self: Counter[str] = Counter()
    mod_incl: Counter[str] = Counter()
    fn_self: Counter[str] = Counter()
    fn_incl: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f[0].startswith(("process ", "thread "))]
        if not frames:
            continue
        labels = [(module_of(p, fn), f"{fn} ({module_of(p, fn)})") for fn, p in frames]
        mod_self[labels[-1][0]] += n
        fn_self[labels[-1][1]] += n
        for m in {m for m, _ in labels}:
            mod_incl[m] += n
        for f in {f for _, f in labels}:
            fn_incl[f] += n
    return total, mod_self, mod_incl, fn_self, fn_incl


IDLE_FRAMES = ("_worker (",)  # the executor thread: blocked in SimpleQueue.get (see below)


def category(frames: list[tuple[str, str]]) -> str:
    """One bucket per stack: the innermost frame that belongs to a library or to our code
    decides (``asyncio.StreamWriter.writelines`` under redis-py counts as redis-py)."""
    for fn, path in reversed(frames):
        mod = module_of(path, fn)  # "redis/asyncio/client.py", "cognitude/proxy.py", ...
        top = mod.split("/")[0]
        if mod == "cognitude/cli.py" or fn == "Runner.run":
            break  # below the event loop: nothing of a request's own
        for prefix, name in (("redis", "redis-py (gate EVALSHA, write-back SET)"),
                             ("aiohttp", "aiohttp client (upstream call)"),
                             ("multidict", "aiohttp client (upstream call)"),
                             ("yarl", "aiohttp client (upstream call)"),
                             ("asyncpg", "asyncpg (usage writer / cold tier COPY)")):
            if top == prefix:
                return name
        if top == "uvicorn":
            return ("uvicorn: response writes (transport.write)"
                    if fn == "RequestResponseCycle.send" else "uvicorn: protocol, ASGI glue")
        if mod.startswith("cognitude/"):
            if mod in ("cognitude/usage.py", "cognitude/cold_cache.py", "cognitude/spill.py"):
                return f"ours, background: {mod}"
            return f"ours: {fn} ({mod})"
    return "event loop in C (uvloop: epoll, socket reads, httptools, task steps)"


def split(raw: Path) -> tuple[int, int, Counter[str]]:
    """(samples, idle-thread samples excluded, samples per category)."""
    total = idle = 0
    cats: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        if any(f.startswith(IDLE_FRAMES) for f in stack.split(";")):
            idle += n
            continue
        cats[category([_frame(f) for f in stack.split(";") if f])] += n
    return total, idle, cats


def split_table(raw: Path, cpu_ms_per_req: float | None) -> str:
    total, idle, cats = split(raw)
    active = total - idle
    if not active:
        return ""
    rows = []
    for cat, n in cats.most_common():
        share = n / active
        rows.append([cat, f"{100 * share:.1f}",
                     f"{1000 * share * cpu_ms_per_req:.0f}" if cpu_ms_per_req else "n/a"])
    return (f"CPU split of {raw.stem} ({active} active samples; {idle} samples of the idle "
            "executor thread dropped); µs/req = share × the sweep's CPU ms/req at that rate:\n\n"
            + benchlib.markdown_table(["where", "% of active samples", "µs/req"], rows) + "\n")


def summarise(raw: Path, top: int = 30) -> str:
    total, ms, mi, fs, fi = aggregate(raw)
    if not total:
        return f"### {raw.stem}\n\n(no samples)\n"
    md = benchlib.markdown_table
    pct = lambda n: f"{100 * n / total:.1f}"  # noqa: E731
    out = [f"### {raw.stem}: {total} samples\n",
           md(["module", "self %", "inclusive %"],
              [[m, pct(n), pct(mi[m])] for m, n in ms.most_common(top)]) + "\n",
           md(["function (module)", "self %"], [[f, pct(n)] for f, n in fs.most_common(top)])
           + "\n",
           md(["function (module)", "inclusive %"],
              [[f, pct(n)] for f, n in fi.most_common(top)]) + "\n"]
    return "\n".join(out)


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="100,200,500,1000,2000")
    p.add_argument("--sweep-seconds", type=float, default=4.0)
    p.add_argument("--profiles", default="hit@200,miss@200,miss@1000")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "cognitude-profile")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--aggregate", nargs="*", type=Path, help="only summarise these raw files")
    args = p.parse_args(argv)
    if args.aggregate:
        for f in args.aggregate:
            print(summarise(f))
            print(split_table(f, None))
        return 0
    rates = [int(x) for x in args.rates.split(",") if x.strip()]
    if any(not 1 <= r <= 5000 for r in rates) or not 0 < args.sweep_seconds <= 30 \
            or not 1 <= args.profile_seconds <= 60:
        p.error("rates in 1..5000, --sweep-seconds in (0, 30], --profile-seconds in 1..60")
    profiles = [(s.split("@")[0], int(s.split("@")[1]))
                for s in args.profiles.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    _, machine = benchlib.begin()
    md: list[str] = [f"# Proxy profile ({machine['date (UTC)']} UTC, "
                     f"cognitude {machine['cognitude (at start)']})\n"]
    with (benchlib.workdir("cognitude-prof-") as tmp,
          overhead.running(tmp, ("hit",)) as env):
        print(f"proxy pid {env.proxy.pid}", flush=True)
        time.sleep(1.0)
        cpu_s, cs_s = idle(env.proxy.pid)
        md.append(f"Idle proxy: {cpu_s:.2f} ms CPU per second ({cpu_s / 10:.2f} % of a core),"
                  f" {cs_s:.1f} context switches per second.\n")
        print(md[-1], flush=True)
        cpu_of: dict[tuple[str, int], float] = {}
        if not args.no_sweep:
            rows = uvloop.run(sweep(env, ["hit", "miss"], rates, args.sweep_seconds))
            cpu_of = {(r[0], int(r[1])): float(r[4]) for r in rows}
            md.append(benchlib.markdown_table(
                ["scenario", "rate req/s", "achieved", "errors", "proxy CPU ms/req",
                 "kernel share", "proxy CPU % of a core", "context switches/req",
                 "p50 ms (due → last byte)"], rows) + "\n")
        if not args.no_profile:
            for scen, rate in profiles:
                raw = uvloop.run(profile_one(env, scen, rate, args.profile_seconds,
                                             args.native, args.out))
                if raw.exists():
                    md.append(summarise(raw))
                    md.append(split_table(raw, cpu_of.get((scen, rate))))
        (args.out / "summary.md").write_text("\n".join(md))
        print("\n".join(md))
        print(f"wrote {args.out / 'summary.md'}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
