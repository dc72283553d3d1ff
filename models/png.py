"""The PNG writer of the output stage: Sub-filtered rows, run-length deflate, bands compressed in parallel.

Pillow tries all five row filters on every row and then runs zlib's LZ77 search:
38-111 ms for a 512² image on the dev box (levels 1 and 6). One ``Sub`` filter on
every row (numpy) and zlib's run-length strategy take 6-8 ms for the same pixels; on
smooth generated images the file is no larger than Pillow's level 6 (~400 KB a 512²
image), on noise both store ~1 byte per sample (docs/benchmarks.md, Models).

The rows are cut into *bands* of about :data:`BAND_BYTES`, each deflated on its own
and ended with a sync flush, then joined into one zlib stream under one IDAT: pigz's
trick, still one standard PNG. ``Z_RLE`` only ever refers back one byte, so
cutting the stream costs nothing but 5 bytes a band. zlib releases the GIL while it
compresses, so the bands run on several CPUs at once and a job's output stage no
longer waits for one core to deflate the whole image (on an H100 host that
stage was most of a compiled job's time after the device stage).

The band boundaries depend only on the image's width and height, never on how many
threads there are: the same pixels give the same bytes serially or in parallel,
on any machine with the same zlib.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import zlib
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

__all__ = ["BAND_BYTES", "PNG_SIGNATURE", "encode_png_array", "output_executor"]

RGB = npt.NDArray[np.uint8]  # H × W × 3

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib level and strategy of the IDAT stream. After a Sub filter generated images are
# mostly small residuals and runs: Z_RLE codes them as well as LZ77 search does, ~3× faster.
PNG_ZLIB_LEVEL = 1  # Z_RLE uses no LZ77 search, so the level changes nothing but the header
PNG_ZLIB_STRATEGY = zlib.Z_RLE
# Filtered bytes per band: 96 KiB makes 8 bands of a 512² RGB image, enough to spread over
# the cores of a GPU host, while a band stays big enough that the thread hop (~20 µs) is noise.
BAND_BYTES = 96 * 1024
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" level, no dictionary (RFC 1950)
_MAX_THREADS = 8  # past this, a 512² image's bands are too small to gain

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def output_executor() -> Executor:
    """The process-wide threads of the output stage (PNG bands, hashes, fingerprints).

    Its tasks never submit tasks of their own, so callers that wait on them cannot deadlock.
    """
    global _executor
    with _executor_lock:
        if _executor is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            _executor = ThreadPoolExecutor(max_workers=max(1, min(_MAX_THREADS, cpus)), thread_name_prefix="output")
        return _executor


def encode_png_array(array: RGB, executor: Executor | None = None) -> bytes:
    """8-bit RGB PNG of H × W × 3 pixels: Sub filter on every row, one IDAT, no metadata.

    With ``executor``, bands after the first are deflated on its threads while the
    calling thread does the first; the bytes are the same either way.
    """
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be H × W × 3 uint8 RGB, got {array.dtype} {array.shape}")
    height, width = int(array.shape[0]), int(array.shape[1])
    if height == 0 or width == 0:
        raise ValueError(f"a PNG needs at least one pixel, got {width}x{height}")
    rows = np.ascontiguousarray(array).reshape(height, width * 3)
    rows_per_band = max(1, math.ceil(BAND_BYTES / (width * 3 + 1)))
    starts = range(0, height, rows_per_band)
    last = starts[-1]

    def band(start: int) -> tuple[npt.NDArray[np.uint8], bytes]:
        filtered = _sub_filter(rows[start : start + rows_per_band])
        compressor = zlib.compressobj(PNG_ZLIB_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 9, PNG_ZLIB_STRATEGY)
        end = zlib.Z_FINISH if start == last else zlib.Z_SYNC_FLUSH
        return filtered, compressor.compress(filtered.data) + compressor.flush(end)

    if executor is None or len(starts) == 1:
        parts = [band(start) for start in starts]
    else:
        futures = [executor.submit(band, start) for start in starts[1:]]
        parts = [band(starts[0])] + [future.result() for future in futures]
    checksum = 1  # Adler-32 of the whole filtered stream: one pass at memory speed, no combine needed
    for filtered, _ in parts:
        checksum = zlib.adler32(filtered.data, checksum)
    idat = b"".join([_ZLIB_HEADER, *(deflated for _, deflated in parts), struct.pack(">I", checksum)])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, adaptive, no interlace
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _sub_filter(rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Filter type 1 (Sub, PNG spec 9.2): each byte minus the same channel of the pixel to its left, mod 256."""
    filtered = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 1
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])
    return filtered


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
