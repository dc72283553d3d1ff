"""Yamux data frames that fit in one Noise message.

py-libp2p 0.8.1's yamux cuts a stream's bytes into data frames of 64 KiB, a 12-byte
header included (``MAX_MESSAGE_SIZE``), and its Noise channel carries at most 65,519
plaintext bytes per message (65,535 less the 16-byte tag). So every full frame
leaves as two Noise messages, the second 17 bytes long: two encryptions, two length
prefixes and two socket writes on the sender, two reads and two decryptions on the
receiver, for every 64 KiB of a job's inputs and outputs. With frames capped at
65,519 bytes a frame is one message.

Nothing changes on the wire but frame lengths: yamux frames may be any length
within the receiver's window, and every implementation reads them so.

The cap is py-libp2p's module constant, which its streams read on every write;
setting it is the only way in, and the pin on ``libp2p==0.8.1`` (pyproject) keeps
it where this module expects it (``test_libp2p_frames`` checks that it took).
"""

from __future__ import annotations

from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.yamux import yamux

STOCK_MAX_FRAME_BYTES = 64 * 1024  # py-libp2p's own MAX_MESSAGE_SIZE: header and payload
MAX_FRAME_BYTES = MAX_PLAINTEXT_LENGTH  # 65,519: one frame, one Noise message


def fit_frames_to_noise(max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
    """Cap yamux data frames at ``max_frame_bytes``, header included (benchmarks pass the stock size back)."""
    if not yamux.HEADER_SIZE < max_frame_bytes <= STOCK_MAX_FRAME_BYTES:
        raise ValueError(f"yamux frame size {max_frame_bytes} outside {yamux.HEADER_SIZE + 1}..{STOCK_MAX_FRAME_BYTES}")
    yamux.MAX_MESSAGE_SIZE = max_frame_bytes


__all__ = ["MAX_FRAME_BYTES", "STOCK_MAX_FRAME_BYTES", "fit_frames_to_noise"]
