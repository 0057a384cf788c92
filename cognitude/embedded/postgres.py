"""The PostgreSQL cluster on disk: initdb, the server's settings, leftovers of a killed run.

``initdb`` makes a cluster owned by ``PG_USER`` that trusts loopback clients (no
passwords: the single-host default, not a multi-tenant deployment). A second start with the
same data directory reuses the cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from cognitude.embedded.errors import EmbeddedServiceError, _log_tail, _StartupFailed
from cognitude.embedded.spawn import STOP_TIMEOUT, _RunAs, _spawn

PG_USER = "cognitude"
PG_DATABASE = "cognitude"
INITDB_TIMEOUT = 120.0


def _postgres_argv(
    bindir: Path, pgdata: Path, port: int, *, fast: bool
) -> list[str | os.PathLike[str]]:
    durable = "off" if fast else "on"
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
    return argv


def _initdb(bindir: Path, pgdata: Path, log_path: Path, run_as: _RunAs, *, fast: bool) -> None:
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
    if fast:
        argv.append("--no-sync")
    proc, offset = _spawn(argv, log_path, run_as=run_as)
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
    if not fast:
        _fsync_dir(pgdata.parent)


def _clear_stale_lock(pgdata: Path) -> None:
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
