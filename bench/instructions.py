"""Instructions per request (valgrind callgrind): the proxy's cost in a unit noise cannot move.

    .venv/bin/python bench/instructions.py [--requests 300]
        [--scenarios hit,miss,ratelimited,stream] [--compare REV] [--output bench/RESULTS.md]

CPU milliseconds per request (``overhead.py``) are what a user pays, but on a shared VM they
move by ±30 % between runs minutes apart, so a 5 % improvement cannot be shown with them,
only with interleaved A/B runs. callgrind counts the instructions a process executes in
user space: the same code, inputs and environment give the same count whatever else the
machine is doing (seen here: two runs within 0.1 %). What it does not count: the kernel
(syscalls, the loopback TCP path, wake-ups: 10-25 % of the proxy's CPU per ``overhead.py``'s
kernel share) and cache misses or stalls (an instruction is not a nanosecond).

How: Valkey, PostgreSQL and the mock start as in ``overhead.py``; the proxy starts under
``valgrind --tool=callgrind --instr-atstart=no`` (near native speed until instrumentation is
switched on). A second mock, also under callgrind, stands for "direct": the same request
answered by a minimal raw-ASGI app under uvicorn, the floor any Python server on this stack
pays. For each scenario: warm-up requests uninstrumented, ``callgrind_control -i on``, more
warm-up, ``-z`` (zero), ``--requests`` requests one after another on one keep-alive
connection, ``-d`` (dump); the dump's total divided by the request count is the figure.
Every response is checked (status, ``X-Cognitude-Cache``, a stream's ``[DONE]``).

Clock-driven work is the one thing that is not repeatable: it is charged to whichever
requests ran meanwhile, and under instrumentation a request takes ~30x longer than natively.
So the proxy flushes its usage ledger by size here (one COPY per 50 rows, which is about
what the default 200 ms interval gives at 250 req/s), not by the clock, and trusts a
resolved API key for an hour instead of 5 s; with the defaults the counts were 32-45 %
higher and moved by ±5 % between runs. The cold cache tier (same interval setting) then
never flushes during a run: its batched upserts are not counted, only the queueing.

``--compare REV`` measures ``git worktree`` checkouts of REV and of the working tree one
after another in the same run (the proxy imports ``cognitude`` from the checkout; the
mocks, Valkey and PostgreSQL are this checkout's), and prints the change.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import benchlib
import overhead

SCENARIOS = ("hit", "miss", "ratelimited", "stream")
WARMUP = 100  # uninstrumented requests per scenario (imports, caches, pools)
WARMUP_INSTR = 20  # instrumented, not counted: callgrind's own first-time costs
VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
# Work that runs on a clock would be charged by wall time, and a request takes ~30x longer
# under instrumentation: flush the usage ledger by size only (one COPY per 50 rows, about
# what the 200 ms interval gives at 250 req/s), and re-read the API key from PostgreSQL once
# an hour instead of every 5 s (at 200 req/s that lookup is one per 1,000 requests), so
# that the cost per request is the same every run.
CONFIG = """
[usage]
flush_rows = 50
flush_interval_ms = 600000
[auth]
key_cache_ttl_s = 3600.0
"""
_START_TIMEOUT = 180.0  # seconds: a process starting under valgrind is slow
_IO_TIMEOUT = 30.0  # per request, instrumented

# Shared objects (basename prefix) → what a reader calls them.
_OBJECTS = (
    ("libpython", "CPython interpreter"), ("python3", "CPython interpreter"),
    ("loop.", "uvloop / libuv"), ("parser.", "httptools (uvicorn's parser)"),
    ("_http_parser", "aiohttp C parser"), ("_http_writer", "aiohttp C writer"),
    ("_multidict", "multidict / yarl / propcache"), ("_quoting", "multidict / yarl / propcache"),
    ("_helpers", "multidict / yarl / propcache"), ("protocol.", "asyncpg"),
    ("pgproto", "asyncpg"), ("hiredis", "hiredis"), ("orjson", "orjson"),
    ("libc.", "libc"), ("_hashlib", "OpenSSL (hashlib)"), ("libcrypto", "OpenSSL (hashlib)"),
    ("xxhash", "xxhash"), ("_asyncio", "CPython interpreter"),
)


@dataclass
class Count:
    scenario: str
    target: str  # "direct" | "proxy"
    code: str  # label of the checkout
    requests: int
    instructions: int
    by_object: Counter[str]

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


class Client:
    """One keep-alive HTTP/1.1 connection, one request at a time (blocking: the generator's
    own cost does not matter here, only the server's count)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((benchlib.LOOPBACK, port), timeout=_IO_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def request(self, body: bytes, key: str, expect_status: int, expect_cache: bytes | None,
                stream: bool) -> None:
        self.sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"authorization: Bearer %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
        while (head := benchlib.parse_head(self.buf)) is None:
            self._recv()
        head_len, status, length, headers = head
        if length >= 0:
            while len(self.buf) < head_len + length:
                self._recv()
            payload = bytes(self.buf[head_len:head_len + length])
            del self.buf[:head_len + length]
        else:  # chunked (a stream): read to the last chunk
            while not self.buf.endswith(b"0\r\n\r\n"):
                self._recv()
            payload = bytes(self.buf[head_len:])
            self.buf.clear()
        if status != expect_status:
            raise RuntimeError(f"expected {expect_status}, got {status}: {payload[:300]!r}")
        cache = headers.get(b"x-cognitude-cache")
        if expect_cache is not None and (cache or b"").lower() != expect_cache:
            raise RuntimeError(f"expected X-Cognitude-Cache {expect_cache!r}, got {cache!r}")
        if stream and b"[DONE]" not in payload:
            raise RuntimeError("stream ended without [DONE]")

    def _recv(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise RuntimeError("server closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True,
                   timeout=60)


def _dump_files(out_dir: Path, pid: int) -> set[Path]:
    return set(out_dir.glob(f"callgrind.out.{pid}*"))


def read_dump(path: Path) -> tuple[int, Counter[str]]:
    """(total instructions, instructions by shared object) of one callgrind dump."""
    total = 0
    by_object: Counter[str] = Counter()
    objects: dict[str, str] = {}  # callgrind's compressed "(n)" ids → object path
    current = "?"
    in_call = False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
        elif line.startswith("ob="):
            current = _name(line[3:], objects)
        elif line.startswith(("cob=", "cfi=", "cfn=")):
            if line.startswith("cob="):
                _name(line[4:], objects)
        elif line.startswith("calls="):
            in_call = True  # the next cost line is the callee's inclusive cost: skip it
        elif line[:1].isdigit() or line[:1] in "+-*":
            if in_call:
                in_call = False
                continue
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                by_object[_label(current)] += int(parts[1])
    return total, by_object


def _name(spec: str, table: dict[str, str]) -> str:
    m = re.match(r"\((\d+)\)(?:\s+(.*))?", spec)
    if m is None:
        return spec
    if m.group(2):
        table[m.group(1)] = m.group(2)
    return table.get(m.group(1), "?")


def _label(obj: str) -> str:
    base = Path(obj).name
    for prefix, label in _OBJECTS:
        if base.startswith(prefix):
            return label
    return base or "?"


def measure(pid: int, out_dir: Path, port: int, key: str, scenario: str, requests: int,
            target: str, code: str, tag: str) -> Count:
    stream = scenario == "stream"
    if target == "direct":
        status, cache = 200, None
    else:
        status, cache = {"hit": (200, b"hit"), "miss": (200, b"miss"),
                         "ratelimited": (429, None), "stream": (200, b"miss")}[scenario]

    def body(i: int) -> bytes:
        if scenario in ("hit", "ratelimited"):
            return overhead.chat_body(overhead.PROMPT)
        return overhead.chat_body(f"{overhead.PROMPT} (instructions {tag} #{i})", stream)

    client = Client(port)
    try:
        i = 0
        for _ in range(WARMUP):
            client.request(body(i), key, status, cache, stream)
            i += 1
        _control(pid, "-i", "on")
        for _ in range(WARMUP_INSTR):
            client.request(body(i), key, status, cache, stream)
            i += 1
        before = _dump_files(out_dir, pid)
        _control(pid, "-z")
        for _ in range(requests):
            client.request(body(i), key, status, cache, stream)
            i += 1
        _control(pid, "-d")
        _control(pid, "-i", "off")
    finally:
        client.close()
    deadline = time.monotonic() + 30
    while not (new := _dump_files(out_dir, pid) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not new:
        raise RuntimeError(f"callgrind wrote no dump for pid {pid}")
    total, by_object = read_dump(max(new, key=lambda p: p.stat().st_mtime))
    return Count(scenario, target, code, requests, total, by_object)


def run_code(tmp: Path, code: Path | None, label: str, args: argparse.Namespace
             ) -> list[Count]:
    """Every scenario against one checkout's proxy (and the direct mock once, for HEAD)."""
    work = tmp / label
    work.mkdir()
    prefix = [*VALGRIND, f"--callgrind-out-file={work}/callgrind.out.%p"]
    direct = None
    counts = []
    with overhead.running(work, args.scenarios, proxy_prefix=prefix, code=code,
                          start_timeout=_START_TIMEOUT, extra_config=CONFIG) as env:
        try:
            if code is None:
                direct = benchlib.MockProcess(work, prefix=prefix, name="mock-direct",
                                              start_timeout=_START_TIMEOUT)
            for scen in args.scenarios:
                if direct is not None and scen in ("hit", "miss", "stream"):
                    c = measure(direct.pid, work, direct.port, env.key, scen, args.requests,
                                "direct", label, f"{label} {scen}")
                    counts.append(c)
                    print(f"  {label:>8} {scen:<11} direct {c.per_request:>12,.0f} instr/req",
                          flush=True)
                key = env.limited_key if scen == "ratelimited" else env.key
                c = measure(env.proxy.pid, work, env.proxy_port, key, scen, args.requests,
                            "proxy", label, f"{label} {scen}")
                counts.append(c)
                print(f"  {label:>8} {scen:<11} proxy  {c.per_request:>12,.0f} instr/req",
                      flush=True)
        finally:
            if direct is not None:
                direct.stop()
    return counts


@contextlib.contextmanager
def worktree(rev: str, tmp: Path):  # type: ignore[no-untyped-def]
    path = tmp / "worktree"
    subprocess.run(["git", "-C", str(benchlib.REPO), "worktree", "add", "--detach", str(path),
                    rev], check=True, capture_output=True, timeout=60)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(benchlib.REPO), "worktree", "remove", "--force",
                        str(path)], capture_output=True, timeout=60)


def _top_objects(c: Count, n: int = 5) -> str:
    total = sum(c.by_object.values()) or 1
    return ", ".join(f"{name} {100 * v / total:.0f} %" for name, v in c.by_object.most_common(n))


def render(counts: list[Count], args: argparse.Namespace, machine: dict[str, str],
           base_label: str | None, elapsed: float) -> str:
    by = {(c.code, c.scenario, c.target): c for c in counts}
    head = ["scenario", "direct (mock) instr/req", "proxy instr/req", "proxy − direct",
            "proxy: where (by shared object)"]
    rows = []
    for scen in args.scenarios:
        p = by.get(("HEAD", scen, "proxy"))
        d = by.get(("HEAD", scen, "direct"))
        if p is None:
            continue
        rows.append([scen, f"{d.per_request:,.0f}" if d else "n/a (no upstream call)",
                     f"{p.per_request:,.0f}",
                     f"{p.per_request - d.per_request:,.0f}" if d else "n/a",
                     _top_objects(p)])
    command = " ".join([".venv/bin/python bench/instructions.py", *sys.argv[1:]])
    out = [
        "## Instructions per request",
        "",
        f"Regenerated by `{command}` on {machine['date (UTC)']} UTC ({elapsed:.0f} s), "
        f"cognitude {machine['cognitude (at start)']}. "
        f"{args.requests} requests per scenario, one at a time on one keep-alive connection, "
        "counted by valgrind's callgrind in the server process (user space only: no "
        "syscalls, no kernel TCP path), with the usage ledger flushed every 50 rows instead "
        "of every 200 ms and API keys re-read hourly instead of every 5 s, so that no "
        "clock-driven work is charged to the requests (see `bench/instructions.py`).",
        "",
        benchlib.markdown_table(head, rows),
    ]
    if base_label is not None:
        comp = [["scenario", f"{base_label} instr/req", "HEAD instr/req", "change"]]
        for scen in args.scenarios:
            b = by.get((base_label, scen, "proxy"))
            h = by.get(("HEAD", scen, "proxy"))
            if b and h:
                comp.append([scen, f"{b.per_request:,.0f}", f"{h.per_request:,.0f}",
                             f"{100 * (h.per_request / b.per_request - 1):+.1f} %"])
        out += ["", f"Against {base_label} (`--compare {args.compare}`), proxy only:", "",
                benchlib.markdown_table(comp[0], comp[1:])]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300, help="counted requests per scenario")
    p.add_argument("--scenarios", type=overhead._scenarios, default=list(SCENARIOS))
    p.add_argument("--compare", metavar="REV", help="also measure this git revision's proxy")
    p.add_argument("--output", type=Path, default=benchlib.BENCH / "RESULTS.md")
    p.add_argument("--no-output", action="store_true", help="print only")
    args = p.parse_args(argv)
    if not 10 <= args.requests <= 5000:
        p.error("--requests must be in 10..5000")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            p.error(f"needs {tool} (Debian: apt-get install valgrind)")
    t0, machine = benchlib.begin()
    counts: list[Count] = []
    base_label = None
    with benchlib.workdir("cognitude-instr-") as tmp:
        if args.compare:
            base_label = subprocess.run(
                ["git", "-C", str(benchlib.REPO), "rev-parse", "--short", args.compare],
                check=True, capture_output=True, text=True, timeout=30).stdout.strip()
            with worktree(args.compare, tmp) as path:
                counts += run_code(tmp, path, base_label, args)
        counts += run_code(tmp, None, "HEAD", args)
    text = render(counts, args, machine, base_label, time.monotonic() - t0)
    print()
    print(text)
    if not args.no_output:
        benchlib.replace_section(args.output, "Instructions per request", text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
