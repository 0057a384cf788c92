"""``EmbeddedServices``: start Valkey and PostgreSQL under one data directory, stop them.

Each server gets a free loopback port (retried if someone takes it before the server binds
it). One flock per data directory keeps two launchers off the same files, and an ``atexit``
hook stops whatever a caller left running.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cognitude.embedded.binaries import find_postgres_bindir, find_valkey_binary
from cognitude.embedded.errors import EmbeddedServiceError, _StartupFailed
from cognitude.embedded.postgres import (
    PG_DATABASE,
    PG_USER,
    _chown_tree,
    _clear_stale_lock,
    _initdb,
    _postgres_argv,
)
from cognitude.embedded.probes import _ensure_database, _postgres_ready, _valkey_ping, _wait_ready
from cognitude.embedded.reach import cluster_dir, reachable_bindir
from cognitude.embedded.spawn import STOP_TIMEOUT, _postgres_run_as, _spawn

log = logging.getLogger("cognitude.embedded")  # the name it had as a single module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
            except BaseException:  # cleanup then re-raise: never leave half the servers running
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

    # ---------------------------------------------------------------- ports

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
                _wait_ready(name, proc, log_path, offset, functools.partial(probe, port, proc.pid))
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
            return _spawn(argv, log_path, cwd=vdir)

        port = self._start_with_port("valkey", launch, log_path, _valkey_ping)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        log.info("embedded valkey (%s) ready at %s, data in %s", binary, self.redis_url, vdir)

    # ---------------------------------------------------------------- postgres

    def _start_postgres(self) -> None:
        bindir = find_postgres_bindir()
        run_as = _postgres_run_as()
        log_path = self.data_dir / "postgres.log"
        if run_as.mode == "setuid":
            log.warning("embedded postgres: %s", run_as.note)
            bindir = reachable_bindir(bindir, run_as)
        pgdata = cluster_dir(self.data_dir, run_as)
        fresh = not (pgdata / "PG_VERSION").is_file()
        if fresh:
            _initdb(bindir, pgdata, log_path, run_as, fast=self.fast)
        elif os.geteuid() == 0 and pgdata.stat().st_uid != run_as.owner_uid:
            # Initialised under the other root mode (namespace vs. setuid fallback).
            _chown_tree(pgdata, run_as.owner_uid, run_as.owner_gid)
        _clear_stale_lock(pgdata)

        def launch(port: int) -> tuple[subprocess.Popen[bytes], int]:
            argv = _postgres_argv(bindir, pgdata, port, fast=self.fast)
            return _spawn(argv, log_path, run_as=run_as)

        try:
            port = self._start_with_port("postgres", launch, log_path, _postgres_ready)
        except _StartupFailed as exc:
            if run_as.note:
                raise EmbeddedServiceError(f"{exc}\n({run_as.note})") from exc
            raise
        _ensure_database(port, fresh=fresh)
        self.postgres_dsn = f"postgresql://{PG_USER}@127.0.0.1:{port}/{PG_DATABASE}"
        log.info(
            "embedded postgres (%s) ready at %s, %s cluster in %s",
            bindir,
            self.postgres_dsn,
            "new" if fresh else "existing",
            pgdata,
        )
