"""Yamux data frames that fit in one Noise message: a correction to py-libp2p 0.8.1.

Its yamux cuts a stream's bytes into data frames of 64 KiB, the 12-byte header
included (``MAX_MESSAGE_SIZE``), and its Noise channel carries at most 65,519
plaintext bytes per message (65,535 less the 16-byte tag). So every full frame left
as two Noise messages, the second 17 bytes long: two encryptions, two length
prefixes and two socket writes on the sender, two reads and two decryptions on the
receiver, for every 64 KiB of a job's inputs and outputs. Frames are capped at
65,519 bytes here. Nothing changes on the wire but frame lengths, which every yamux
implementation reads.

Tried and left out: window updates once half the window is read, as go-yamux sends
them, instead of py-libp2p's update after every read (21 updates for a 653 kB
output). Between two processes it made the transfer twice as slow: a sender that
runs out of window polls for an update every 10 ms (``YamuxStream.write``), and the
per-read updates are what keep it from running out (``bench/transfer_2p.py``).

The cap is py-libp2p's module constant, which its streams read on every write;
setting it is the only way in, and the pin on ``libp2p==0.8.1`` (pyproject) keeps it
where this module expects (the test checks that it took).
"""

from __future__ import annotations

from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.yamux import yamux

STOCK_MAX_FRAME_BYTES = 64 * 1024  # py-libp2p's own MAX_MESSAGE_SIZE: header and payload
MAX_FRAME_BYTES = MAX_PLAINTEXT_LENGTH  # 65,519: one frame, one Noise message


def tune_yamux(frames: bool = True) -> None:
    """Cap data frames to one Noise message (``False``: py-libp2p as shipped, for benchmarks that compare)."""
    yamux.MAX_MESSAGE_SIZE = MAX_FRAME_BYTES if frames else STOCK_MAX_FRAME_BYTES


__all__ = ["MAX_FRAME_BYTES", "STOCK_MAX_FRAME_BYTES", "tune_yamux"]
