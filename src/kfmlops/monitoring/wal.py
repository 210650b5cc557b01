"""The sink's write-ahead log: events are appended and fsync'd here before the sink acknowledges them.

Layout: ``<directory>/<writer-uuid>/seg-<n>-<created, epoch ns>.wal``, one directory per sink
process, held with an exclusive ``flock`` on its ``LOCK`` file while the process lives. A process that starts adopts
every directory whose lock it can take (the leftovers of a crashed or killed sink, its own
predecessor or another replica's) and hands their entries back through :meth:`WriteAheadLog.replay`.

A segment is a sequence of entries: ``<meta length, body length, CRC-32>`` (three little-endian
uint32) followed by the two byte strings. :meth:`~WriteAheadLog.write` writes a batch of entries
with one ``write``; :func:`sync` (``fsync``, in a worker thread) makes them durable. The sink
starts the next batch's write while earlier fsyncs are still running, so one fsync covers every
event that arrived meanwhile (group commit) and the fsync latency does not bound throughput. A
crash in the middle of a batch leaves a torn tail, which replay detects (short read or CRC
mismatch) and stops at; nothing in it was acknowledged. :meth:`~WriteAheadLog.rotate` seals the
current segment and opens the next; :meth:`~WriteAheadLog.release` deletes sealed segments once
everything in them is durable elsewhere. Segment ids increase within a process, adopted segments
first, so an entry's id orders it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

from kfmlops.durable import fsync_path

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<III")
LOCK = "LOCK"


class WriteAheadLog:
    """Append-and-fsync segments under ``directory`` (one writer per process; not thread-safe)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segments: dict[int, Path] = {}  # sealed segments (adopted or rotated), by id
        self._lock = threading.Lock()  # guards _segments: release() runs beside write()/rotate()
        self._adopted: list[tuple[Path, int]] = []  # directories of dead writers we hold the lock of
        for path in sorted(p for p in self.directory.iterdir() if p.is_dir()):
            fd = _try_lock(path)
            if fd is not None:
                self._adopted.append((path, fd))
                for segment in sorted(path.glob("seg-*.wal")):
                    self._segments[len(self._segments)] = segment
        self.own = self.directory / uuid.uuid4().hex
        self.own.mkdir()
        fsync_path(self.directory)
        self._lock_fd = _try_lock(self.own)
        self._next = len(self._segments)
        self._file = None
        self.current = -1
        self.rotate()

    def adopted_since_ns(self) -> int | None:
        """When the oldest adopted segment was created (epoch ns); None when nothing was adopted."""
        return min((_created_ns(p) for p in self._segments.values()), default=None)

    def replay(self) -> Iterator[tuple[int, bytes, bytes]]:
        """``(segment id, meta, body)`` of every whole entry in the adopted segments, in order."""
        for segment_id, path in sorted(self._segments.items()):
            for meta, body in read_segment(path):
                yield segment_id, meta, body

    def write(self, entries: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Write ``(meta, body)`` entries to the current segment with one write, not yet durable;
        returns ``(segment id, file descriptor)``: they are durable once :func:`sync` of that
        descriptor returns. On an error the segment is sealed, so later entries never follow a torn one."""
        data = b"".join(
            part for meta, body in entries
            for part in (_HEADER.pack(len(meta), len(body), zlib.crc32(body, zlib.crc32(meta))), meta, body)
        )
        view = memoryview(data)
        try:
            while view:
                view = view[self._file.write(view):]
        except OSError:
            self.rotate()
            raise
        self.written += len(data)
        return self.current, self._file.fileno()

    def rotate(self) -> int:
        """Seal the current segment and open the next; returns the id of the segment sealed (-1: none)."""
        sealed = self.current
        if self._file is not None:
            self._file.close()
            with self._lock:
                self._segments[sealed] = self._current_path
        self.current, self._next = self._next, self._next + 1
        self._current_path = self.own / f"seg-{self.current:012d}-{time.time_ns():020d}.wal"
        self._file = open(self._current_path, "ab", buffering=0)
        fsync_path(self.own)
        self.written = 0  # bytes appended to the current segment
        return sealed

    def release(self, upto: int) -> None:
        """Delete the sealed segments with id <= ``upto``, and adopted directories left empty."""
        with self._lock:
            released = [self._segments.pop(i) for i in [i for i in self._segments if i <= upto]]
        for path in released:
            path.unlink(missing_ok=True)
        for path, fd in list(self._adopted):
            if not any(path.glob("seg-*.wal")):
                (path / LOCK).unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # another starting sink just reopened its LOCK: it removes it
                    path.rmdir()
                os.close(fd)
                self._adopted.remove((path, fd))
        fsync_path(self.own)
        fsync_path(self.directory)

    @property
    def segments(self) -> int:
        """Segments on disk, the current one included."""
        return len(self._segments) + 1

    def close(self, remove: bool = False) -> None:
        """Close the current segment and drop the locks. Segments not released stay for the next
        start, unless ``remove`` (everything is durable elsewhere): then every segment and this
        writer's directory are deleted."""
        self._file.close()
        if remove:
            self.release(self.current - 1)
            self._current_path.unlink(missing_ok=True)
            (self.own / LOCK).unlink(missing_ok=True)
            self.own.rmdir()
            fsync_path(self.directory)
        for _, fd in self._adopted:
            os.close(fd)
        if self._lock_fd is not None:
            os.close(self._lock_fd)


def read_segment(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """The whole entries of one segment; stops at a torn or corrupt tail (logged)."""
    data = path.read_bytes()
    offset = 0
    while offset + _HEADER.size <= len(data):
        meta_len, body_len, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + meta_len + body_len
        if end > len(data) or zlib.crc32(data[start + meta_len:end], zlib.crc32(data[start:start + meta_len])) != crc:
            break
        yield data[start:start + meta_len], data[start + meta_len:end]
        offset = end
    if offset != len(data):
        log.warning("write-ahead log %s: ignoring a torn tail of %d bytes (never acknowledged)", path, len(data) - offset)


def sync(fd: int) -> None:
    """fsync a segment's descriptor: every entry written to it before is durable."""
    os.fsync(fd)


def _created_ns(segment: Path) -> int:
    return int(segment.stem.rsplit("-", 1)[1])


def _try_lock(directory: Path) -> int | None:
    """An fd holding ``directory/LOCK`` exclusively, or None when a live process holds it."""
    try:
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # the directory was just removed by the process that adopted it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
