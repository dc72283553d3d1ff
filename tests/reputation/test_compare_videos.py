"""Comparing two videos holds one frame of each at a time, whatever a hostile clip carries.

Decoded whole before the frame counts were compared, a worker's clip of the right frame size and
many frames (a few hundred kB of H.264) cost the requester's spot check ~1.6 GB per side at
1024×576 (review). Now both clips are decoded side by side and only per-frame metrics are kept.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from lpnode.models.outputs import encode_mp4
from lpnode.reputation import compare
from lpnode.reputation.compare import Verdict, compare_outputs
from lpnode.reputation.errors import OutputUndecodable

SIDE = 128


def clip(frames: int, shade: int = 0) -> bytes:
    return encode_mp4([np.full((SIDE, SIDE, 3), (shade + i) % 256, dtype=np.uint8) for i in range(frames)], 8.0)


def test_a_clip_with_far_more_frames_is_a_disagreement_held_a_frame_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Count the decoded frames alive at once: each one yielded is alive until it is collected.
    alive, most = 0, 0
    decode = compare._video_frames

    def counted(*args: Any, **kwargs: Any) -> Iterator[Any]:
        nonlocal alive, most
        for frame in decode(*args, **kwargs):
            alive += 1
            most = max(most, alive)
            weakref.finalize(frame, _dead)
            yield frame

    def _dead() -> None:
        nonlocal alive
        alive -= 1

    monkeypatch.setattr(compare, "_video_frames", counted)
    comparison = compare_outputs("image-to-video", clip(8), clip(400), "video/mp4")
    assert comparison.verdict is Verdict.DISAGREE and comparison.reason == "frame_count_mismatch"
    assert most <= 4  # a frame of each side, and the pair before it on its way out; not 400 × 49 kB


def test_equal_clips_agree_and_a_side_without_frames_is_named() -> None:
    same = compare_outputs("image-to-video", clip(6), clip(6), "video/mp4")
    assert same.verdict is Verdict.AGREE and same.frames == 6
    with pytest.raises(OutputUndecodable) as undecodable:
        compare_outputs("image-to-video", clip(6), b"\x00\x00\x00\x18ftypisom not a video", "video/mp4")
    assert undecodable.value.side == "b"
