"""The local spool: where clicks go when Redis cannot take them, until it can again.

An append-only file per API process; each line is one encoded batch exactly as it would have been
written to the stream. A write is fsync'd before the redirect is answered. The replayer moves
sealed files into the stream and deletes them; a file may be replayed twice after a crash, which
is harmless because PostgreSQL de-duplicates on the click id.

A process holds an exclusive flock on the file it writes, so a replayer (of this or another
process, also after a restart) only ever takes files nobody is writing.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, directory: Path, name: str = "clicks") -> None:
        self.directory = directory
        self.name = name
        self._fd: int | None = None
        self._lock = asyncio.Lock()
        # The directory's modification time when it was last listed, and whether it held a
        # file of this spool then (see `has_files`).
        self._listed: tuple[int, bool] | None = None

    def _open(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.name}-{os.getpid()}-{time.time_ns()}.spool"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _append_sync(self, lines: list[bytes]) -> None:
        if self._fd is None:
            self._fd = self._open()
        os.write(self._fd, b"".join(line + b"\n" for line in lines))
        os.fsync(self._fd)

    async def append(self, lines: list[bytes]) -> None:
        """Durably append; returns only after fsync."""
        async with self._lock:
            await asyncio.to_thread(self._append_sync, lines)

    async def seal(self) -> None:
        """Close the current file so that it can be replayed; the next append opens a new one."""
        async with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob(f"{self.name}-*.spool"))

    def has_files(self) -> bool:
        """Whether a file of this spool exists: asked for every batch of a buffer that waits
        behind this one. When nothing in the directory changed, this is one stat: the answer
        is kept under the directory's modification time, if that time was more than a second
        old when the directory was listed — a file created or deleted since then moved it (a
        change within the same tick of the file system's clock might not have)."""
        try:
            modified = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            return False
        if self._listed is not None and self._listed[0] == modified:
            return self._listed[1]
        found = bool(self.files())
        if time.time_ns() - modified > 1_000_000_000:
            self._listed = (modified, found)
        return found

    async def replay(self, deliver: Callable[[list[bytes]], Awaitable[None]]) -> int:
        """Deliver every sealed, unlocked spool file, then delete it. Returns lines delivered."""
        await self.seal()
        delivered = 0
        for path in self.files():
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another live process is still writing it
                with os.fdopen(os.dup(fd), "rb") as f:
                    lines = [line.rstrip(b"\n") for line in f if line.strip()]
                # A torn last line (crash mid-write, never fsync'd, never answered) is dropped.
                if lines and not lines[-1].endswith((b"]", b"}")):
                    lines.pop()
                for start in range(0, len(lines), 100):
                    await deliver(lines[start : start + 100])
                path.unlink()
                delivered += len(lines)
                log.info("spool replayed", extra={"file": path.name, "batches": len(lines)})
            finally:
                os.close(fd)
        return delivered
