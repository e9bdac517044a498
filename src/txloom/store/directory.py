"""Where the store's files live: a real directory, or the same thing held in memory.

The write-ahead log, snapshots and compaction are written once, against ``Directory`` and
``Volume``; the ``file`` backend gives them a real directory (with fsyncs of files and of
the directory itself, and an exclusive lock so two servers never share one), the
``memory`` backend gives them byte arrays. The two backends therefore share every rule
about sequence numbers, snapshots and replay order; only durability differs.

Every method here may block; the backend calls them from its writer thread, except
``Volume.pread`` which replay uses on the reactor thread (reads of committed bytes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterable

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["DataDirectoryLocked", "Directory", "FileDirectory", "MemoryDirectory", "Volume"]

LOCK_NAME = "LOCK"
TEMP_SUFFIX = ".tmp"

#: A large file (a compacted log) is made durable this many bytes at a time while it is
#: written: one fsync of hundreds of megabytes at the end would hold the disk, and the
#: WAL's fsyncs (every acknowledged write) would wait behind it.
SYNC_EVERY = 32 * 1024 * 1024

_fdatasync = getattr(os, "fdatasync", os.fsync)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class DataDirectoryLocked(RuntimeError):
    """Another process holds the data directory."""


class Volume:
    """One file: append at the end, read anywhere, make durable.

    Readers (replay plans) may hold a volume after compaction removed its file; the
    descriptor is closed when the last holder releases it (``acquire``/``release``).
    """

    name: str
    size: int

    def __init__(self) -> None:
        self._refs = 1
        self._closed = False
        self._ref_lock = threading.Lock()

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end; returns the offset it starts at."""
        raise NotImplementedError

    def pread(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def sync(self) -> None:
        """Make every appended byte durable."""

    def truncate(self, size: int) -> None:
        raise NotImplementedError

    def acquire(self) -> Volume:
        with self._ref_lock:
            self._refs += 1
        return self

    def release(self) -> None:
        with self._ref_lock:
            self._refs -= 1
            last = self._refs <= 0 and not self._closed
            if last:
                self._closed = True
        if last:
            self._close()

    def _close(self) -> None:
        pass


class Directory:
    """A flat namespace of volumes with atomic replace."""

    durable = False

    def names(self) -> list[str]:
        raise NotImplementedError

    def open(self, name: str, create: bool = False) -> Volume:
        raise NotImplementedError

    def replace(self, name: str, chunks: Iterable[bytes]) -> Volume:
        """Write ``chunks`` as ``name`` atomically (temp file, sync, rename, sync dir)."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def rename(self, old: str, new: str) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        """Make creations, renames and removals durable."""

    def write_file(self, name: str, data: bytes) -> None:
        """A small side file (cut WAL bytes kept for inspection)."""
        self.replace(name, [data]).release()

    def close(self) -> None:
        pass

    def describe(self) -> str:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Real files
# --------------------------------------------------------------------------------------------


class FileVolume(Volume):
    def __init__(self, path: str, fd: int) -> None:
        super().__init__()
        self.path = path
        self.name = os.path.basename(path)
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def append(self, data: bytes) -> int:
        offset = self.size
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.pwrite(self.fd, view[written:], offset + written)
        finally:
            self.size = offset + written
        return offset

    def pread(self, offset: int, size: int) -> bytes:
        data = os.pread(self.fd, size, offset)
        if len(data) == size:
            return data
        parts = [data]
        got = len(data)
        while got < size:
            more = os.pread(self.fd, size - got, offset + got)
            if not more:
                raise OSError(errno.EIO, f"{self.path}: short read at {offset + got}")
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def sync(self) -> None:
        _fdatasync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        os.fsync(self.fd)
        self.size = size

    def _close(self) -> None:
        os.close(self.fd)


class FileDirectory(Directory):
    """A real directory, locked for the lifetime of this object."""

    durable = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(self.path):
            os.makedirs(self.path)
            # the new directory's own entry must survive a crash too
            parent = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(parent)
            finally:
                os.close(parent)
        self._lock_fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self._lock_fd)
                raise DataDirectoryLocked(
                    f"data directory {self.path} is in use by another process"
                ) from None
        self._dir_fd = os.open(self.path, os.O_RDONLY)
        for name in self.names():
            if name.endswith(TEMP_SUFFIX):  # an interrupted replace: never renamed, never used
                os.unlink(self._join(name))

    def _join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.path) if n != LOCK_NAME)

    def open(self, name: str, create: bool = False) -> Volume:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(self._join(name), flags, 0o644)
        return FileVolume(self._join(name), fd)

    def replace(self, name: str, chunks: Iterable[bytes]) -> Volume:
        tmp = self._join(name + TEMP_SUFFIX)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            buffer: list[bytes] = []
            pending = 0
            unsynced = 0
            for chunk in chunks:
                buffer.append(chunk)
                pending += len(chunk)
                if pending >= 1 << 20:
                    _write_all(fd, b"".join(buffer))
                    buffer.clear()
                    unsynced += pending
                    pending = 0
                    if unsynced >= SYNC_EVERY:
                        _fdatasync(fd)
                        unsynced = 0
            if buffer:
                _write_all(fd, b"".join(buffer))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.rename(tmp, self._join(name))
        self.sync()
        return FileVolume(self._join(name), fd)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._join(name))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._join(old), self._join(new))

    def sync(self) -> None:
        os.fsync(self._dir_fd)

    def close(self) -> None:
        os.close(self._dir_fd)
        os.close(self._lock_fd)

    def describe(self) -> str:
        return self.path


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


class MemoryVolume(Volume):
    def __init__(self, name: str, data: bytearray) -> None:
        super().__init__()
        self.name = name
        self.data = data

    @property  # type: ignore[override]
    def size(self) -> int:
        return len(self.data)

    def append(self, data: bytes) -> int:
        offset = len(self.data)
        self.data += data
        return offset

    def pread(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset : offset + size])

    def truncate(self, size: int) -> None:
        del self.data[size:]


class MemoryDirectory(Directory):
    """Files as byte arrays: the ``memory`` backend, gone when the process ends."""

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}

    def names(self) -> list[str]:
        return sorted(self.files)

    def open(self, name: str, create: bool = False) -> Volume:
        if name not in self.files:
            if not create:
                raise FileNotFoundError(name)
            self.files[name] = bytearray()
        return MemoryVolume(name, self.files[name])

    def replace(self, name: str, chunks: Iterable[bytes]) -> Volume:
        data = bytearray()
        for chunk in chunks:
            data += chunk
        self.files[name] = data
        return MemoryVolume(name, data)

    def remove(self, name: str) -> None:
        self.files.pop(name, None)

    def rename(self, old: str, new: str) -> None:
        self.files[new] = self.files.pop(old)

    def describe(self) -> str:
        return "memory"
