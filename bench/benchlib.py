"""Pieces shared by the bench scripts: child processes, /proc readings, machine facts.

Not a benchmark itself. The scripts import it as a sibling module (``python bench/x.py``
puts ``bench/`` first on ``sys.path``), so nothing here may import from ``tests/``.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"  # the only address any bench script ever talks to

PACKAGES = ("uvicorn", "uvloop", "httptools", "aiohttp", "httpx", "redis", "hiredis",
            "asyncpg", "orjson")

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the bench is killed (even SIGKILL), the
    # kernel kills the mock and the proxy too, so no stray servers keep ports and CPU.
    # Spawned from the main thread only (PDEATHSIG follows the forking *thread*).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, cwd=cwd,
            # Own session: a terminal Ctrl-C reaches only the bench, which then stops the
            # children in order instead of racing their own shutdown.
            start_new_session=True, preexec_fn=_die_with_parent,
        )


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None,
                 timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One blocking request to 127.0.0.1:port (set-up and checks only, never measured)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def wait_http(proc: subprocess.Popen[bytes], port: int, path: str, log_path: Path,
              timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{path} server exited with {proc.returncode}:\n"
                               + log_path.read_text(errors="replace")[-3000:])
        with contextlib.suppress(OSError):
            if http_request(port, "GET", path, timeout=0.5)[0] == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"no answer on {path} after {timeout:.0f}s:\n"
                       + log_path.read_text(errors="replace")[-3000:])


class MockProcess:
    """``cognitude mock-upstream`` in its own process: it must not share a GIL (or a core's
    worth of event loop) with the load generator whose latency it is part of."""

    def __init__(self, workdir: Path, prefix: Sequence[str] = (), name: str = "mock",
                 start_timeout: float = 30.0) -> None:
        # prefix: a command the mock runs under (bench/instructions.py: valgrind).
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.proc = spawn([*prefix, sys.executable, "-m", "cognitude.cli", "mock-upstream",
                           "--port", str(self.port)], self.log_path, cwd=workdir)
        try:
            wait_http(self.proc, self.port, "/_mock/stats", self.log_path, start_timeout)
        except BaseException:
            stop(self.proc)
            raise

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop(self.proc)


def parse_head(buf: bytearray) -> tuple[int, int, int, dict[bytes, bytes]] | None:
    """An HTTP/1.1 response head in ``buf``: (body offset, status, Content-Length or -1 for
    chunked, the lower-cased headers), or None while the head is incomplete. Shared by the
    benchmark clients, which parse replies themselves to keep client-side cost minimal."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name] = value.strip()
    length = int(headers[b"content-length"]) if b"content-length" in headers else -1
    return end + 4, int(head[9:12]), length, headers


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of a whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) is in parentheses and may contain spaces; count after it.
    fields = stat.rsplit(b")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (e.g. PostgreSQL's backends), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def renice(pids: Sequence[int], niceness: int) -> None:
    """Set the nice value of the given processes (and their descendants). Only ever called
    on processes the bench started itself."""
    for top in pids:
        for pid in descendants(top):
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, pid, niceness)


def ticks_to_ms(ticks: int) -> float:
    return ticks * 1000.0 / CLK_TCK


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was observed)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return float(sorted_values[int(rank) - 1])


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info() -> dict[str, str]:
    return {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": _cpu_model(),
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load average (1/5/15 min, at start)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def code_version() -> str:
    """The commit under test, and whether the package differs from it (read-only git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cognitude", "lua"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes in cognitude/ or lua/" if dirty.strip() else "")


def begin() -> tuple[float, dict[str, str]]:
    """Start of a bench script's run: (monotonic start time, machine facts + the code under
    test). Also turns SIGTERM into ``SystemExit(143)``: a bare SIGTERM would end the
    process without running its ``finally`` blocks (and context managers), which are what
    stop the child servers and remove the scratch directory."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.monotonic()
    machine = machine_info()
    machine["cognitude (at start)"] = code_version()
    return t_start, machine


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A fresh scratch directory (``mkdtemp``) for logs and data; removed at exit, or kept
    and its path printed when ``keep`` (``--keep-tmp``)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def replace_section(path: Path, heading: str, text: str) -> None:
    """Put ``text`` (which starts with ``## heading``) in place of that level-2 section of
    ``path`` (up to the next ``## `` line), or append it when absent; the rest of the file
    is kept. So scripts that each own one section can re-run in any order; ``overhead.py``
    regenerates its own sections and carries the others over (``KEPT_SECTIONS``)."""
    title = f"## {heading}"
    lines = path.read_text().splitlines() if path.exists() else ["# Cognitude benchmarks", ""]
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == title), None)
    new = text.rstrip("\n").splitlines()
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *new]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        lines[start:end] = [*new, ""] if end < len(lines) else new
    path.write_text("\n".join(lines) + "\n")


# Sections of RESULTS.md that other scripts (or people) own; overhead.py, which regenerates
# the file, carries them over unchanged.
KEPT_SECTIONS = ("What stands in the way", "Instructions per request", "Throughput", "Locust",
                 "Usage writer")


def sections(path: Path, headings: Sequence[str]) -> list[tuple[str, str]]:
    """(heading, text) of each level-2 section of ``path`` named in ``headings``, in file
    order; text runs from its ``## `` line up to the next one."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("## ")]
    out = []
    for n, i in enumerate(starts):
        heading = lines[i][3:].rstrip()
        if heading in headings:
            end = starts[n + 1] if n + 1 < len(starts) else len(lines)
            out.append((heading, "\n".join(lines[i:end]).rstrip("\n") + "\n"))
    return out
