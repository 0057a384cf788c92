"""Usage spill files: the on-disk fallback of the usage ledger writer (``cognitude.usage``).

Format: ``usage-<time_ns>-<pid>-<seq>.jsonl`` in the spill directory, JSON lines. The first
line is the header ``{"cognitude_usage_spill": 1, "columns": [...]}``; every further line is
one record as a JSON array in that column order. Columns are matched by name on load, so a
file written before a schema change still loads (missing columns load as NULL).

Guarantees:
- the file being appended to is held under ``flock`` from before its name matches the replay
  glob (it is created as ``*.jsonl.new``, locked, then renamed); replay only takes files it
  can lock, so it never reads a file still being written;
- appends are one ``os.write`` to the page cache (a process crash loses nothing written);
  ``sync`` fsyncs the files and, after a new file, the directory (an OS crash loses at most
  what was written since the last ``sync``);
- a file is deleted (``remove``) only after the caller has committed its rows;
- a torn last line (crash mid-write) is skipped and counted, not fatal;
- files that cannot be loaded, or the rows Postgres refuses, are set aside as ``*.rejected``
  (same format, fsynced) for a human and never replayed;
- the directory is bounded by ``max_bytes``: past it records are dropped, logged at ERROR
  once per episode and counted in ``rows_dropped``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import orjson

# Same logger as the writer: spill messages are part of the usage ledger's story.
log = logging.getLogger("cognitude.usage")

SPILL_GLOB = "usage-*.jsonl"
FORMAT_VERSION = 1

Row = tuple[object, ...]


def spill_header(columns: Sequence[str]) -> bytes:
    """First line of every spill (and rejected) file: format version and column names."""
    return orjson.dumps({"cognitude_usage_spill": FORMAT_VERSION, "columns": tuple(columns)},
                        option=orjson.OPT_APPEND_NEWLINE)


class SpillLog:
    """Append-only JSON-lines spill files: the header, then one JSON array per record.

    ``append`` is synchronous and cheap (one ``os.write`` to the page cache) because the hot
    path calls it when the queue is full; ``sync`` fsyncs in a thread, off the event loop. A
    process crash loses nothing written (the page cache survives it); an OS crash can lose
    what was written since the last ``sync`` (at most one flush interval).

    The file being written is held under ``flock``; replay only takes files it can lock, so
    it never reads a file another writer (or process sharing the directory) still appends to.
    """

    def __init__(self, directory: Path, file_bytes: int, max_bytes: int,
                 columns: Sequence[str]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.header = spill_header(columns)
        self._file_bytes = file_bytes
        self._max_bytes = max_bytes
        self._total = sum(p.stat().st_size for p in self.dir.glob(SPILL_GLOB))
        self._fd: int | None = None
        self._size = 0
        self._dirty = False
        self._new_file = False
        self._to_close: list[int] = []  # rotated fds: fsynced, then closed (lock released)
        self._seq = 0
        self._lock = asyncio.Lock()
        self._dropping = False
        self.rows_dropped = 0

    def append(self, records: Sequence[Row]) -> int:
        """Writes ``records``; returns how many were written (0: dropped, logged)."""
        data = b"".join(orjson.dumps(tuple(r), option=orjson.OPT_APPEND_NEWLINE)
                        for r in records)
        new_file = self._fd is None or self._size + len(data) > self._file_bytes
        if self._total + len(data) + (len(self.header) if new_file else 0) > self._max_bytes:
            return self._drop(len(records), f"spill directory full ({self._max_bytes} bytes)")
        try:
            if new_file:
                self.rotate()
                self._open()
            assert self._fd is not None
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            return self._drop(len(records), f"spill write failed: {exc}")
        self._size += len(data)
        self._total += len(data)
        self._dirty = True
        self._dropping = False
        return len(records)

    def _drop(self, n: int, why: str) -> int:
        self.rows_dropped += n
        if not self._dropping:  # once per episode, not per record
            self._dropping = True
            log.error("USAGE ROWS LOST: %s in %s; dropping records until space frees up"
                      " (rows_dropped=%d)", why, self.dir, self.rows_dropped)
        return 0

    def _open(self) -> None:
        self._seq += 1
        final = self.dir / f"usage-{time.time_ns():020d}-{os.getpid()}-{self._seq}.jsonl"
        tmp = final.with_suffix(".jsonl.new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        # Lock before the name matches the replay glob, so no replayer can grab the file.
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, self.header)
        os.rename(tmp, final)
        self._fd, self._size, self._new_file = fd, len(self.header), True
        self._total += len(self.header)

    def rotate(self) -> None:
        """Stop appending to the current file; the next ``sync`` closes it (replayable)."""
        if self._fd is not None:
            self._to_close.append(self._fd)
            self._fd, self._size = None, 0

    @property
    def has_open_data(self) -> bool:
        return self._fd is not None

    async def sync(self) -> None:
        async with self._lock:
            closing, self._to_close = self._to_close, []
            fds = closing + ([self._fd] if self._fd is not None and self._dirty else [])
            sync_dir, self._new_file, self._dirty = self._new_file, False, False
            if fds or sync_dir:
                try:
                    await asyncio.to_thread(self._fsync, fds, sync_dir)
                except OSError as exc:
                    log.error("fsync of usage spill files in %s failed: %s", self.dir, exc)
            for fd in closing:
                os.close(fd)

    def _fsync(self, fds: list[int], sync_dir: bool) -> None:
        for fd in fds:
            os.fsync(fd)
        if sync_dir:  # the new file's directory entry must survive a crash too
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def closed_files(self) -> list[Path]:
        return sorted(self.dir.glob(SPILL_GLOB))

    @asynccontextmanager
    async def claim(self, path: Path) -> AsyncIterator[tuple[int, list[bytes]] | None]:
        """Locks ``path`` for replay; yields ``(size, lines)``, or None when the file is gone,
        still being written (or replayed) by someone else, or deleted meanwhile. The lock is
        held until the block exits, so ``remove`` / ``set_aside`` belong inside it."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None  # replayed meanwhile by someone else
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None  # still being written (or replayed) by someone else
                return
            if os.fstat(fd).st_nlink == 0:
                yield None  # deleted between our listing and our lock
                return
            size = os.fstat(fd).st_size
            lines = await asyncio.to_thread(lambda: path.read_bytes().split(b"\n"))
            yield size, lines
        finally:
            os.close(fd)

    def remove(self, path: Path, size: int) -> None:
        """Deletes a replayed file. Call only once its rows are committed: a crash before
        this means the file is replayed again later (the caller's load must be idempotent)."""
        os.unlink(path)
        self.forget(size)

    def set_aside(self, path: Path, size: int, rows: list[Row]) -> Path:
        """Sets aside a file that cannot be loaded (``rows`` empty: the whole file, renamed)
        or just its refused ``rows`` (written fsynced with the header) as ``*.rejected``;
        returns the rejected file's path. Never replayed."""
        target = path.with_name(f"{path.stem}.{time.time_ns()}.rejected")
        if rows:
            body = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows)
            with open(target, "wb") as f:
                f.write(self.header + body)
                f.flush()
                os.fsync(f.fileno())
        else:
            os.rename(path, target)
            self.forget(size)
        return target

    def forget(self, nbytes: int) -> None:
        self._total = max(0, self._total - nbytes)


def decode_rows(lines: list[bytes], bad: list[int],
                columns: Sequence[str]) -> Iterator[Row]:
    """Spill lines → row tuples in ``columns`` order (matched by name; absent → None);
    counts unreadable lines in bad[0] (a torn last line after a crash mid-write). Raises
    (KeyError, TypeError, ValueError, IndexError) on an unreadable header."""
    header = orjson.loads(lines[0])
    file_columns = header["columns"]
    idx = [file_columns.index(c) if c in file_columns else None for c in columns]
    ts_at = columns.index("ts")
    for line in lines[1:]:
        if not line:
            continue
        try:
            values = orjson.loads(line)
            row = [None if i is None else values[i] for i in idx]
            ts = row[ts_at]
            if not isinstance(ts, str):
                raise ValueError("ts missing")
            row[ts_at] = datetime.fromisoformat(ts)
        except (orjson.JSONDecodeError, TypeError, ValueError, IndexError):
            bad[0] += 1
            continue
        yield tuple(row)
