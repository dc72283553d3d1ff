"""A signed output that is not the file the job asked for is not a result (QA3 Q2).

A worker signed a text file as ``image/png``; the requester checked only that the bytes were the
signed ones, paid, and saved the text as ``out.png``. Now each output's structure and size are
checked before a try counts as done, and such a worker's try fails and the job moves on.
"""

from __future__ import annotations

import contextlib
import io
import random

import numpy as np
import trio
from lpnode.models.errors import ParameterError
from lpnode.models.interpolate import probe_video
from lpnode.models.outputs import encode_mp4
from lpnode.models.pool import ModelPool
from lpnode.node.input_probe import VIDEO, InputUnreadable, probe_input
from lpnode.node.job_requester import run_job
from lpnode.node.job_try import BAD_OUTPUT
from lpnode.node.job_worker import WorkerHooks
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.output_check import PngCheck, expected_size, output_problem
from lpnode.protocol.jobs import InputShape
from PIL import Image

from .job_fixtures import BOUND_S, T2I, Peer, peers, sees_models
from .test_input_shape import img2img_spec


def image(width: int, height: int, kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, format=kind)
    return out.getvalue()


def test_an_output_must_be_a_whole_png_or_mp4_of_the_asked_size() -> None:
    assert output_problem(image(64, 48), "image/png", (64, 48)) == ""
    assert output_problem(image(64, 48), "image/png", None) == ""  # the size unknown: structure only
    assert output_problem(image(32, 32), "image/png", (64, 48)) == "32x32, not the 64x48 the job asked for"
    assert output_problem(b"this is not a png, " * 20, "image/png", (64, 48)).startswith("not a readable PNG")
    assert output_problem(image(64, 48, "JPEG"), "image/png", (64, 48)) == "a JPEG file, not a PNG"
    whole = image(64, 48)
    broken = whole[:60] + bytes([whole[60] ^ 0xFF]) + whole[61:]  # one flipped byte: a chunk's CRC fails
    assert output_problem(broken, "image/png", (64, 48)).startswith("not a readable PNG")
    clip = encode_mp4([np.zeros((12, 16, 3), dtype=np.uint8)] * 3, 5.0)
    assert output_problem(clip, "video/mp4", (16, 12)) == ""
    assert output_problem(clip, "video/mp4", (32, 24)) == "16x12, not the 32x24 the job asked for"
    assert output_problem(b"\x00\x00\x00\x18ftypisom" + b"x" * 100, "video/mp4", None).startswith("not a readable MP4")
    assert (
        output_problem(b"GIF89a", "image/gif", None) == "an output of media type 'image/gif', which no pipeline makes"
    )


def test_the_asked_size_comes_from_the_spec_or_the_declared_input() -> None:
    spec = img2img_spec(b"i")
    assert expected_size(spec) is None and expected_size(spec, InputShape(48, 32, 1)) == (48, 32)


async def test_a_worker_signing_a_text_file_as_its_image_is_not_paid_and_the_job_moves_on(pool: ModelPool) -> None:
    def text_instead(_: bytes) -> bytes:
        return b"this is not a png, " * 20

    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        cheat: Peer = await start(1, pool=pool, hooks=WorkerHooks(forge_output=text_instead))  # type: ignore[assignment]
        honest: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [cheat, honest])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, prefer=[cheat.peer_id])
    (forged, done) = outcome.attempts
    assert (forged.peer_id, forged.outcome) == (cheat.peer_id, BAD_OUTPUT)
    assert forged.detail.startswith("output 0 (image/png, 380 bytes) is not a readable PNG")
    assert (done.peer_id, done.outcome) == (honest.peer_id, "done") and outcome.worker_peer_id == honest.peer_id
    with Image.open(io.BytesIO(outcome.outputs[0])) as img:
        assert img.size == (64, 64)


def test_a_damaged_video_is_unreadable_whatever_the_damage() -> None:
    """Seeded damage to a real MP4 (bytes flipped, cut, inserted, truncated): every probe of it answers
    "unreadable" in its own terms, never another exception. One damage left the container naming a
    stream without a codec, and the AttributeError that escaped turned a bad worker's output into a 500
    on the requester (a fuzz run found it; 12 of 3,000)."""
    frames = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(4)]
    data = encode_mp4(frames, 4.0)
    rng = random.Random(1)
    for _ in range(500):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            at, op = rng.randrange(len(damaged)), rng.random()
            if op < 0.6:
                damaged[at] = rng.randrange(256)
            elif op < 0.8:
                del damaged[at : at + rng.randint(1, 64)]
            else:
                damaged[at:at] = rng.randbytes(rng.randint(1, 16))
        if rng.random() < 0.2:
            damaged = damaged[: rng.randrange(len(damaged))]
        output_problem(bytes(damaged), "video/mp4", (32, 32))  # a reason or "", never an exception
        with contextlib.suppress(InputUnreadable):
            probe_input(VIDEO, bytes(damaged))
        with contextlib.suppress(ParameterError):
            probe_video(bytes(damaged), 64)


def png_check(data: bytes, size: tuple[int, int] | None, piece: int) -> str:
    check = PngCheck()
    for start in range(0, len(data), piece):
        check.feed(data[start : start + piece])
    return check.problem(size)


def test_the_streamed_png_check_agrees_with_the_whole_file_check() -> None:
    """PngCheck (fed as a transfer arrives) passes what output_problem passes and refuses what it refuses,
    in pieces of any size: a chunk head, a CRC or the signature split across two pieces included."""
    rng = random.Random(7)
    noisy = Image.frombytes("RGB", (96, 64), rng.randbytes(96 * 64 * 3))
    files = [
        image(64, 48),
        image(1, 1),
        _png(noisy),
        _png(noisy.convert("L")),
        _png(noisy.convert("P")),
        _png(noisy, optimize=True),
    ]
    for data in files:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
        for piece in (1, 3, 7, 8, 13, 4096, len(data)):
            assert png_check(data, size, piece) == "" == output_problem(data, "image/png", size)
            assert png_check(data, None, piece) == ""
            assert png_check(data, (size[0] + 1, size[1]), piece) == output_problem(
                data, "image/png", (size[0] + 1, size[1])
            )
    whole = files[2]
    # a flipped byte anywhere but in the image data (a length, a type, the header, another chunk's CRC) is refused;
    # the image data's CRCs are not checked (PngCheck's doc): the transfer's sha256 guards those bytes
    outside = [p for p in range(len(whole)) if not in_image_data(whole, p)]
    assert len(outside) > 50  # the signature, IHDR, every chunk's length, type and CRC, IEND
    for position in outside:
        broken = whole[:position] + bytes([whole[position] ^ (1 << rng.randrange(8))]) + whole[position + 1 :]
        assert png_check(broken, None, rng.choice((5, 64, 65536))).startswith("not a readable PNG"), position
    for cut in (0, 7, 8, 20, 33, len(whole) // 2, len(whole) - 12, len(whole) - 1):  # truncated anywhere
        assert png_check(whole[:cut], None, 64).startswith("not a readable PNG"), cut
    assert png_check(b"this is not a png, " * 20, None, 64) == "not a readable PNG (no PNG signature)"
    assert png_check(image(64, 48, "JPEG"), None, 64) == "not a readable PNG (no PNG signature)"


def in_image_data(png: bytes, position: int) -> bool:
    """Whether byte ``position`` of ``png`` is inside an IDAT chunk's data or its CRC."""
    at = 8
    while at < len(png):
        length, kind = int.from_bytes(png[at : at + 4], "big"), png[at + 4 : at + 8]
        if kind == b"IDAT" and at + 8 <= position < at + 12 + length:
            return True
        at += 12 + length
    return False


def _png(img: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", **options)
    return out.getvalue()
