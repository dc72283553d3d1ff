"""Verified job outputs on disk, by sha256, so ``/v1/outputs/{sha256}`` survives a restart.

    files = OutputFiles(data_dir / "outputs", max_bytes=2 * 1024**3, synchronous="NORMAL")
    await trio.to_thread.run_sync(files.put, sha256_hex, "image/png", data)
    await trio.to_thread.run_sync(files.put_verified, [(sha256_hex, "image/png", data), ...])  # hashes checked
    found = await trio.to_thread.run_sync(files.get, sha256_hex)      # (media type, bytes) or None

The methods are plain blocking functions (file I/O and hashing): call them through
``trio.to_thread.run_sync``. One :class:`OutputFiles` owns its directory; it is safe to use
from several threads at once.

Layout: one file per output, named ``<sha256>.<suffix>``. The suffix is the usual extension
for the media types we produce (``.png``, ``.mp4``, ...) and ``<type>~<subtype>`` for any
other (``~`` cannot occur in a media type), so the media type needs no sidecar file and a
file is complete the moment it has its name. Writes are atomic: a ``.tmp-*`` file, then a
rename; a crash leaves at most a temp file, removed at the next start.
:meth:`OutputFiles.put_verified` stores several outputs whose hashes the caller has already
checked (the job transfer hashed every byte received against the signed receipt): no second hash.

Durability follows the node's SQLite store, chosen by the same ``synchronous`` setting
(:func:`lpnode.node.store.open_store`), so outputs survive the failures the records that name them survive:

* ``"NORMAL"`` (the default, as the store's): no fsync. Once ``put`` returns, the file and its
  name are in the OS page cache: a killed process (kill -9, a crash) loses nothing, as it loses
  no committed row. A power cut or kernel panic may lose the last outputs or leave one of them
  short or empty under its name, as it may lose the last transactions (the two are not tied:
  a record that survived may name an output that did not, which then reads as missing);
  :meth:`OutputFiles.get` re-hashes every file it reads and answers None for such a file (and
  deletes it), so wrong bytes are never served. Saves ~1.5 ms of fsyncs per job on the GPU
  host's disk.
* ``"FULL"``: each file is fsynced before its rename (so a name never points at bytes a power
  loss could lose) and the directory once per batch after the renames, before ``put`` returns.

Either way a caller that records the job as done after ``put`` returns never records an output
that a killed process could lose; under ``"FULL"``, not one a power cut could lose either.

Bounded: past ``max_bytes`` the least recently written outputs are deleted (writing an output
that is already there counts as writing it again). Names are checked to be 64 lowercase hex
digits before any path is built, so no request can reach outside the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lpnode.node.store import Synchronous
from lpnode.protocol.errors import LpnodeError

__all__ = [
    "MEDIA_SUFFIXES",
    "OutputDirError",
    "OutputEntry",
    "OutputFileError",
    "OutputFiles",
    "Verified",
    "check_sha256",
]

log = logging.getLogger(__name__)

# The media types lpnode's pipelines produce or take, with their usual file extension.
MEDIA_SUFFIXES: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "application/octet-stream": "bin",
}
_SUFFIX_MEDIA = {suffix: media for media, suffix in MEDIA_SUFFIXES.items()}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MEDIA_PART = re.compile(r"[a-z0-9][\w.+-]{0,62}")  # one side of type/subtype (RFC 6838 restricted names)
_TMP_PREFIX = ".tmp-"

# (hex sha256, media type, bytes) of an output whose hash the caller has checked
Verified = tuple[str, str, bytes]


class OutputFileError(LpnodeError):
    """An output that cannot be stored or looked up. ``reason``: ``bad_name``, ``bad_media_type``,
    ``hash_mismatch`` or ``too_large``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class OutputDirError(LpnodeError):
    """The outputs directory cannot be used (a file in its place, no permission): one line at start."""


@dataclass(frozen=True)
class OutputEntry:
    """One stored output."""

    sha256: str
    media_type: str
    size_bytes: int
    path: Path


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is 64 lowercase hex digits, else OutputFileError(bad_name)."""
    if not _SHA256.fullmatch(sha256):
        raise OutputFileError("bad_name", f"{sha256[:80]!r} is not a sha256 in 64 lowercase hex digits")
    return sha256


def _suffix(media_type: str) -> str:
    media_type = media_type.lower()
    known = MEDIA_SUFFIXES.get(media_type)
    if known is not None:
        return known
    kind, _, sub = media_type.partition("/")
    if not (_MEDIA_PART.fullmatch(kind) and _MEDIA_PART.fullmatch(sub)):
        raise OutputFileError("bad_media_type", f"{media_type[:140]!r} is not a type/subtype media type")
    return f"{kind}~{sub}"


def _parse_name(name: str) -> tuple[str, str] | None:
    """(sha256, media type) of one of our file names, or None for anything else."""
    sha, dot, suffix = name[:64], name[64:65], name[65:]
    if dot != "." or not _SHA256.fullmatch(sha):
        return None
    if suffix in _SUFFIX_MEDIA:
        return sha, _SUFFIX_MEDIA[suffix]
    kind, tilde, sub = suffix.partition("~")
    if tilde and _MEDIA_PART.fullmatch(kind) and _MEDIA_PART.fullmatch(sub):
        return sha, f"{kind}/{sub}"
    return None


class OutputFiles:
    """Content-addressed output files in one directory, at most ``max_bytes`` in all."""

    def __init__(self, directory: Path, max_bytes: int, *, synchronous: Synchronous = "NORMAL") -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.synchronous: Synchronous = synchronous
        self._fsync = synchronous == "FULL"  # module docstring: outputs are as durable as the records
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, OutputEntry] = OrderedDict()  # oldest write first
        self._total = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._scan()
        except (FileExistsError, NotADirectoryError):
            # a 110-line traceback at start before (QA s11)
            raise OutputDirError(
                f"cannot keep job outputs in {directory}: it is a file, not a folder; "
                "move it away (or delete it) and restart the node"
            ) from None
        except OSError as exc:
            raise OutputDirError(f"cannot keep job outputs in {directory}: {exc.strerror or exc}") from None

    @property
    def total_bytes(self) -> int:
        return self._total

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, sha256: str, media_type: str, data: bytes) -> OutputEntry:
        """Store ``data`` (whose sha256 must be ``sha256``) as durably as ``synchronous`` says; answer where it lies."""
        check_sha256(sha256)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise OutputFileError("hash_mismatch", f"data hashes to {actual}, not {sha256}")
        return self.put_verified([(sha256, media_type, data)])[0]

    def put_verified(self, outputs: Sequence[Verified]) -> list[OutputEntry]:
        """Store outputs whose sha256 the caller has checked already (not hashed again).

        Under ``synchronous="FULL"``, one directory fsync for the batch, after every rename: nothing
        is reported stored before the names are on disk; under ``"NORMAL"``, stored means in the
        page cache (module docstring). The caller vouches for the hashes: a wrong one would only
        make :meth:`get` find a mismatch later, delete the file and answer None, never serve it.
        """
        planned: list[tuple[OutputEntry, bytes]] = []
        for sha256, media_type, data in outputs:
            check_sha256(sha256)
            suffix = _suffix(media_type)
            if len(data) > self.max_bytes:
                raise OutputFileError("too_large", f"{len(data)} bytes, the store holds at most {self.max_bytes}")
            path = self.directory / f"{sha256}.{suffix}"
            media = _SUFFIX_MEDIA.get(suffix) or suffix.replace("~", "/")
            planned.append((OutputEntry(sha256, media, len(data), path), data))
        stored: list[OutputEntry] = []
        renamed = False
        try:
            for entry, data in planned:
                with self._lock:
                    existing = self._entries.get(entry.sha256)
                    if existing is not None and existing.path == entry.path and entry.path.exists():
                        os.utime(entry.path)  # same bytes, same name: only "written again" for eviction
                        self._entries.move_to_end(entry.sha256)
                        stored.append(existing)
                        continue
                tmp = self._write_temp(data)
                with self._lock:
                    try:
                        os.replace(tmp, entry.path)
                    except BaseException:
                        tmp.unlink(missing_ok=True)
                        raise
                    renamed = True
                    old = self._entries.pop(entry.sha256, None)
                    if old is not None:
                        self._total -= old.size_bytes
                        if old.path != entry.path:  # the same bytes stored before under another media type
                            old.path.unlink(missing_ok=True)
                    self._entries[entry.sha256] = entry
                    self._total += entry.size_bytes
                    self._evict()
                stored.append(entry)
        finally:
            if renamed and self._fsync:
                self._fsync_directory()  # the renames are durable only once the directory entries are
        return stored

    def get(self, sha256: str) -> tuple[str, bytes] | None:
        """(media type, bytes) of a stored output, or None. The bytes are re-hashed: a file changed
        on disk is deleted and answers None rather than serving bytes that are not what was verified."""
        entry = self.entry(sha256)
        if entry is None:
            return None
        try:
            data = entry.path.read_bytes()
        except FileNotFoundError:
            self._forget(entry)
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            # the disk (or someone) changed it: say so, or the operator sees only a 404 (QA s11)
            log.warning("output %s failed its hash check (%s was changed on disk); dropped", sha256, entry.path)
            self._forget(entry)
            entry.path.unlink(missing_ok=True)
            return None
        return entry.media_type, data

    def entry(self, sha256: str) -> OutputEntry | None:
        """What is stored under ``sha256`` (path, media type, size), or None."""
        check_sha256(sha256)
        with self._lock:
            return self._entries.get(sha256)

    def path(self, sha256: str) -> Path | None:
        """The file holding ``sha256``'s bytes (to serve it as a file), or None."""
        entry = self.entry(sha256)
        return None if entry is None else entry.path

    def _write_temp(self, data: bytes) -> Path:
        tmp = self.directory / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                if self._fsync:
                    out.flush()
                    os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _fsync_directory(self) -> None:
        # the rename is durable only once the directory entry is on disk
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _evict(self) -> None:
        """Delete the oldest outputs until the total fits (the newest always stays: it fits alone)."""
        while self._total > self.max_bytes and len(self._entries) > 1:
            _, oldest = self._entries.popitem(last=False)
            self._total -= oldest.size_bytes
            oldest.path.unlink(missing_ok=True)

    def _forget(self, entry: OutputEntry) -> None:
        with self._lock:
            if self._entries.get(entry.sha256) == entry:
                del self._entries[entry.sha256]
                self._total -= entry.size_bytes

    def _scan(self) -> None:
        found: list[tuple[int, str, OutputEntry]] = []
        with os.scandir(self.directory) as listing:
            for item in listing:
                if item.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(item.path)  # a write that a crash cut short
                    continue
                parsed = _parse_name(item.name)
                if parsed is None or not item.is_file(follow_symlinks=False):
                    continue  # not ours: leave it alone, do not count it
                stat = item.stat(follow_symlinks=False)
                sha, media_type = parsed
                found.append((stat.st_mtime_ns, item.name, OutputEntry(sha, media_type, stat.st_size, Path(item.path))))
        with self._lock:
            for _, _, entry in sorted(found, key=lambda f: (f[0], f[1])):
                old = self._entries.pop(entry.sha256, None)  # two names for one hash: keep the newer
                if old is not None:
                    self._total -= old.size_bytes
                    old.path.unlink(missing_ok=True)
                self._entries[entry.sha256] = entry
                self._total += entry.size_bytes
            self._evict()
