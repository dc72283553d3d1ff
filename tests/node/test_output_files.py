"""Output files on disk: round trip, hash and name checks, eviction by size, restarts, durability."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from lpnode.node.job_storage import INLINE_WRITE_MAX_BYTES, open_job_storage
from lpnode.node.output_files import OutputFileError, OutputFiles
from lpnode.node.store import Synchronous


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(300)


async def test_put_get_round_trip_through_a_thread(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path / "outputs", max_bytes=10_000)
    entry = await trio.to_thread.run_sync(files.put, sha(PNG), "image/png", PNG)
    assert entry.path == tmp_path / "outputs" / f"{sha(PNG)}.png" and entry.size_bytes == len(PNG)
    assert await trio.to_thread.run_sync(files.get, sha(PNG)) == ("image/png", PNG)
    files.put(sha(MP4), "video/mp4", MP4)
    assert files.get(sha(MP4)) == ("video/mp4", MP4)
    assert files.path(sha(MP4)) == tmp_path / "outputs" / f"{sha(MP4)}.mp4"
    assert files.get(sha(b"missing")) is None and files.path(sha(b"missing")) is None
    assert files.total_bytes == len(PNG) + len(MP4)
    assert not [p for p in (tmp_path / "outputs").iterdir() if p.name.startswith(".tmp-")]


def test_any_media_type_round_trips_in_the_file_name(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path, max_bytes=10_000)
    data = b"custom"
    entry = files.put(sha(data), "Image/Vnd.Foo+Bar", data)
    assert entry.path.name == f"{sha(data)}.image~vnd.foo+bar"
    assert files.get(sha(data)) == ("image/vnd.foo+bar", data)
    assert OutputFiles(tmp_path, max_bytes=10_000).get(sha(data)) == ("image/vnd.foo+bar", data)


@pytest.mark.parametrize(
    "name",
    [
        "../" + "a" * 61,
        "A" * 64,  # uppercase is not our spelling
        "a" * 63,
        "a" * 65,
        "a" * 63 + "/",
        "/etc/passwd",
        "a" * 64 + "\x00",
        "",
    ],
)
def test_names_that_are_not_lowercase_sha256_are_refused(tmp_path: Path, name: str) -> None:
    files = OutputFiles(tmp_path / "outputs", max_bytes=10_000)
    for call in (files.get, files.path, files.entry):
        with pytest.raises(OutputFileError) as caught:
            call(name)
        assert caught.value.reason == "bad_name"
    with pytest.raises(OutputFileError, match="bad_name"):
        files.put(name, "image/png", PNG)
    assert list(tmp_path.rglob("*")) == [tmp_path / "outputs"]


@pytest.mark.parametrize("media_type", ["image", "../x/y", "image/png/../..", "image/", "/png", "a b/c", "x~y/z"])
def test_bad_media_types_are_refused(tmp_path: Path, media_type: str) -> None:
    files = OutputFiles(tmp_path, max_bytes=10_000)
    with pytest.raises(OutputFileError) as caught:
        files.put(sha(PNG), media_type, PNG)
    assert caught.value.reason == "bad_media_type"


def test_bytes_that_do_not_match_their_hash_are_refused(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path, max_bytes=10_000)
    with pytest.raises(OutputFileError) as caught:
        files.put(sha(MP4), "image/png", PNG)
    assert caught.value.reason == "hash_mismatch"
    assert len(files) == 0 and list(tmp_path.iterdir()) == []


def test_least_recently_written_go_first_and_the_directory_stays_bounded(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path, max_bytes=1_000)
    blobs = [bytes([i]) * 300 for i in range(5)]
    for blob in blobs[:3]:
        files.put(sha(blob), "image/png", blob)
    files.put(sha(blobs[0]), "image/png", blobs[0])  # written again: now the newest
    files.put(sha(blobs[3]), "image/png", blobs[3])  # 1200 bytes > 1000: blobs[1] goes
    assert files.get(sha(blobs[1])) is None
    assert all(files.get(sha(b)) is not None for b in (blobs[0], blobs[2], blobs[3]))
    files.put(sha(blobs[4]), "image/png", blobs[4])  # blobs[2] goes
    assert files.get(sha(blobs[2])) is None
    assert files.total_bytes == 900
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == 900
    with pytest.raises(OutputFileError, match="too_large"):
        files.put(sha(bytes(1_001)), "image/png", bytes(1_001))


def test_outputs_survive_a_restart_in_write_order_and_leftovers_are_cleaned(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path, max_bytes=1_000)
    blobs = [bytes([i]) * 300 for i in range(3)]
    for when, blob in enumerate(blobs):
        entry = files.put(sha(blob), "video/mp4", blob)
        os.utime(entry.path, ns=(when * 10**9, when * 10**9))  # distinct mtimes on any filesystem
    (tmp_path / ".tmp-deadbeef").write_bytes(b"half a write")
    (tmp_path / "README").write_text("not ours")

    again = OutputFiles(tmp_path, max_bytes=700)  # smaller bound: the oldest goes at once
    assert not (tmp_path / ".tmp-deadbeef").exists()
    assert (tmp_path / "README").exists()
    assert again.get(sha(blobs[0])) is None
    assert again.get(sha(blobs[1])) == ("video/mp4", blobs[1])
    assert again.get(sha(blobs[2])) == ("video/mp4", blobs[2])
    assert again.total_bytes == 600


def test_a_file_changed_on_disk_is_not_served(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path, max_bytes=10_000)
    entry = files.put(sha(PNG), "image/png", PNG)
    entry.path.write_bytes(b"tampered")
    assert files.get(sha(PNG)) is None
    assert not entry.path.exists() and len(files) == 0


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors os.fsync is called on (still syncing them)."""
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_outputs_are_as_durable_as_the_records_normal_skips_fsync_full_does_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _count_fsyncs(monkeypatch)
    normal = OutputFiles(tmp_path / "normal", max_bytes=10_000)  # the store's default: NORMAL
    assert normal.synchronous == "NORMAL"
    normal.put(sha(PNG), "image/png", PNG)
    normal.put_verified([(sha(MP4), "video/mp4", MP4), (sha(b"x"), "image/png", b"x")])
    assert synced == []  # kill -9 safe through the page cache; a power cut is caught by get's re-hash
    assert normal.get(sha(MP4)) == ("video/mp4", MP4)
    assert not [p for p in (tmp_path / "normal").iterdir() if p.name.startswith(".tmp-")]

    full = OutputFiles(tmp_path / "full", max_bytes=10_000, synchronous="FULL")
    full.put(sha(PNG), "image/png", PNG)
    assert len(synced) == 2  # the file before its rename, then the directory
    synced.clear()
    full.put_verified([(sha(MP4), "video/mp4", MP4), (sha(b"x"), "image/png", b"x")])
    assert len(synced) == 3  # each file, one directory fsync for the batch
    synced.clear()
    full.put_verified([(sha(MP4), "video/mp4", MP4)])  # already there: nothing written, nothing synced
    assert synced == []
    with pytest.raises(ValueError, match="synchronous"):
        OutputFiles(tmp_path, max_bytes=10_000, synchronous="OFF")  # type: ignore[arg-type]


@pytest.mark.parametrize("damage", [b"", PNG[:50]])
def test_an_output_a_power_cut_left_short_is_not_served_after_the_restart(tmp_path: Path, damage: bytes) -> None:
    # Under NORMAL a power cut can leave a name pointing at an empty or partial file.
    files = OutputFiles(tmp_path, max_bytes=10_000)
    entry = files.put(sha(PNG), "image/png", PNG)
    entry.path.write_bytes(damage)
    again = OutputFiles(tmp_path, max_bytes=10_000)
    assert again.get(sha(PNG)) is None
    assert not entry.path.exists() and len(again) == 0 and again.total_bytes == 0
    again.put(sha(PNG), "image/png", PNG)  # the job's output can be stored again
    assert again.get(sha(PNG)) == ("image/png", PNG)


@pytest.mark.parametrize(("synchronous", "pragma"), [("NORMAL", 1), ("FULL", 2)])
async def test_the_node_keeps_records_and_outputs_by_one_durability_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synchronous: Synchronous, pragma: int
) -> None:
    synced = _count_fsyncs(monkeypatch)  # the outputs' fsyncs (SQLite's own are not os.fsync)
    async with open_job_storage(tmp_path, 10_000, 1.0, synchronous=synchronous) as (records, outputs):
        assert records.store is not None
        row = await records.store.fetch_one("PRAGMA synchronous")
        assert row is not None and row[0] == pragma
        await outputs.put_verified([(sha(PNG), "image/png", PNG)])
        assert (len(synced) == 2) == (synchronous == "FULL") and (synced == []) == (synchronous == "NORMAL")
        assert await outputs.get(sha(PNG)) == ("image/png", PNG)


@pytest.mark.parametrize(
    ("synchronous", "size", "in_thread"),
    [("NORMAL", 1000, False), ("NORMAL", INLINE_WRITE_MAX_BYTES + 1, True), ("FULL", 1000, True)],
    ids=["small-in-place", "large-in-thread", "fsync-in-thread"],
)
async def test_small_writes_without_fsync_skip_the_thread_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synchronous: Synchronous, size: int, in_thread: bool
) -> None:
    """The hop to a thread and back costs more than putting a job's image into the page cache; a large
    output, or one that waits for fsyncs, still leaves the event loop alone."""
    from lpnode.node import job_storage

    hops: list[object] = []
    run_sync = trio.to_thread.run_sync

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return await run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(job_storage.trio.to_thread, "run_sync", counted)
    data = bytes(size)
    async with open_job_storage(tmp_path, 10 * INLINE_WRITE_MAX_BYTES, 1.0, synchronous=synchronous) as (_, outputs):
        hops.clear()  # opening has its own disk work
        await outputs.put_verified([(sha(data), "image/png", data)])
        assert bool(hops) == in_thread
        assert await outputs.get(sha(data)) == ("image/png", data)
