"""Starting child processes that die with us, under the identity PostgreSQL needs.

* ``PR_SET_PDEATHSIG`` is set in every child before exec, so children die with us even on
  SIGKILL. The kernel ties that signal to the *thread* that forked, so spawns from any
  thread but the main one are routed through one long-lived spawner thread.
* PostgreSQL refuses to run as root. As root we start it in a new user namespace where our
  uid appears as an ordinary user, so on the host the cluster stays owned by us (a data dir
  under a mode-700 /root keeps working). Where user namespaces are forbidden (Docker's
  default seccomp profile) we fall back to running it as ``nobody`` (``FALLBACK_USER``),
  for whom ``reach`` makes the binaries and the cluster reachable.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pwd
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cognitude.embedded.errors import EmbeddedServiceError

_T = TypeVar("_T")

STOP_TIMEOUT = 10.0  # for a child to exit after a stop signal
FALLBACK_USER = "nobody"  # runs PostgreSQL for root where user namespaces are forbidden

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


def _userns_error() -> str | None:
    """None if this process can create user namespaces, else why not (cached per pid)."""
    return _userns_error_for(os.getpid())


@functools.lru_cache(maxsize=4)
def _userns_error_for(pid: int) -> str | None:
    # Keyed by pid: a forked child re-probes instead of trusting its parent's answer.
    if _LIBC is None:
        return "not Linux"
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
            return err.decode(errors="replace").strip() or f"exit {proc.returncode}"
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return None


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
        ) or _passwd(FALLBACK_USER)
        return _RunAs("userns", entry.pw_uid, entry.pw_gid, uid, gid)
    entry = _passwd(FALLBACK_USER)
    return _RunAs(
        "setuid",
        entry.pw_uid,
        entry.pw_gid,
        entry.pw_uid,
        entry.pw_gid,
        note=f"user namespaces unavailable ({reason}), so postgres runs as {FALLBACK_USER!r}",
    )


def _passwd(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedServiceError(
            f"PostgreSQL cannot run as root and there is no {name!r} user to run it as"
        ) from None


def _spawn(
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
        # Our cwd may be a checkout that user cannot enter: PostgreSQL 15's initdb
        # then logs "could not change directory ... Permission denied" (measured).
        cwd = cwd or Path("/")
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
