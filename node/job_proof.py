"""What a worker signs besides the outputs: receipt sequence numbers, runtime facts, error codes."""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

from lpnode.models.errors import Cancelled, ModelError, ModelLoadError, OutOfMemory, ParameterError, PoolClosed
from lpnode.protocol.jobs import ErrorCode
from lpnode.protocol.receipts import LibraryVersion, RuntimeFacts

from .gossip import WallClock
from .inference import InferencePool

log = logging.getLogger(__name__)


RESERVED_AHEAD = 1024  # receipt numbers put on file at once


class ReceiptSequence:
    """Per-worker receipt numbers that keep increasing across restarts.

    With a file, numbers are reserved :data:`RESERVED_AHEAD` at a time: the file
    holds the end of the block in use, written before the block's first number is
    handed out, so a restart (even after kill -9) starts past every number used,
    and a job costs a file write once per block, not once per receipt. Without a
    file (or on top of it) the counter is seeded from the wall clock in
    microseconds, so a restarted worker whose file was lost still never repeats a
    number unless its clock went back. Numbers increase; they need not be dense.
    """

    def __init__(self, wall_clock: WallClock, path: Path | None = None) -> None:
        self._path = path
        seeded = int(wall_clock() * 1_000_000)
        stored = 0
        damaged = False
        if path is not None and path.exists():
            try:
                stored = int(path.read_text(encoding="ascii").strip())
                damaged = stored < 0
            except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
                damaged = True
                log.warning("receipt sequence file %s is unreadable (%s); seeding from the clock", path, exc)
            else:
                if damaged:
                    log.warning("receipt sequence file %s is damaged (%d); seeding from the clock", path, stored)
        self._last = max(seeded, stored)
        self._reserved = self._last  # numbers up to this one are on file
        if damaged:
            # Put the recovered value on file now: a clean stop before any receipt left the damage
            # in place, and the warning came back at every start (QA s11).
            try:
                self._store(self._reserved)
            except OSError as exc:
                log.warning("cannot rewrite receipt sequence file %s: %s", path, exc)

    def next(self) -> int:
        self._last += 1
        if self._path is not None and self._last > self._reserved:
            self._reserved = self._last + RESERVED_AHEAD - 1
            self._store(self._reserved)
        return self._last

    def _store(self, value: int) -> None:
        assert self._path is not None
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(str(value))  # a few bytes: cheaper than a thread hop
        tmp.replace(self._path)


def runtime_facts(pool: InferencePool) -> RuntimeFacts:
    libraries = []
    for name in ("torch", "diffusers", "transformers"):
        try:
            libraries.append(LibraryVersion(name, importlib.metadata.version(name)[:64]))
        except importlib.metadata.PackageNotFoundError:
            continue
    device = str(getattr(pool, "device", "unknown"))
    dtype = str(getattr(pool, "dtype", "unknown")).removeprefix("torch.")
    return RuntimeFacts(device=device[:128], dtype=dtype[:16], libraries=tuple(libraries))


def error_code(exc: ModelError) -> ErrorCode:
    if isinstance(exc, ParameterError):
        return ErrorCode.INVALID_INPUT
    if isinstance(exc, OutOfMemory):
        return ErrorCode.OUT_OF_MEMORY
    if isinstance(exc, ModelLoadError):
        return ErrorCode.MODEL_LOAD_FAILED
    if isinstance(exc, Cancelled | PoolClosed):
        return ErrorCode.CANCELLED
    return ErrorCode.INTERNAL


__all__ = ["ReceiptSequence", "error_code", "runtime_facts"]
