"""Two corrections to py-libp2p 0.8.1's yamux, which carries every job's inputs and outputs.

**Frames that fit in one Noise message.** Its yamux cuts a stream's bytes into data
frames of 64 KiB, the 12-byte header included (``MAX_MESSAGE_SIZE``), and its Noise
channel carries at most 65,519 plaintext bytes per message (65,535 less the 16-byte
tag). So every full frame left as two Noise messages, the second 17 bytes long: two
encryptions, two length prefixes and two socket writes on the sender, two reads and
two decryptions on the receiver, per 64 KiB. Frames are capped at 65,519 bytes here.

**Window updates once half the window is read, as go-yamux sends them.** On top of
go-yamux's rule (credit the sender once half the receive window has been consumed,
and double the window when that happens within four round trips), py-libp2p credits
the bytes of every read: a 653 kB output cost 21 window updates, each a Noise message
and a socket write on the receiver and a wake-up on the sender (2 with this rule,
the auto-tuning kept). The sender can still never stall on a reader that reads: it
is blocked only with a whole window unacknowledged, and a reader that consumes it
has consumed more than half.

Nothing changes on the wire but frame lengths and how often WINDOW_UPDATE comes;
every yamux implementation reads both. ``bench/transfer.py`` measures the stock
behaviour against this in one run (``tune_yamux(False)``).

Both live in py-libp2p's module and class, which its streams read on every write
and read; setting them is the only way in, and the pin on ``libp2p==0.8.1``
(pyproject) keeps them where this module expects (the tests check that they took).
"""

from __future__ import annotations

from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.yamux import yamux

STOCK_MAX_FRAME_BYTES = 64 * 1024  # py-libp2p's own MAX_MESSAGE_SIZE: header and payload
MAX_FRAME_BYTES = MAX_PLAINTEXT_LENGTH  # 65,519: one frame, one Noise message
_STOCK_CREDIT = yamux.YamuxStream._auto_tune_and_send_window_update


async def _credit_half_window(self: yamux.YamuxStream, *, bytes_read: int = 0) -> None:
    """py-libp2p's own update rule without its two per-read branches (release-on-read, partial slack)."""
    increment = 0
    async with self.window_lock:
        if bytes_read > 0:
            self._pending_recv_release += bytes_read
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        consumed = self.target_recv_window - (self.recv_window + buffered)  # read, not yet credited
        threshold = self._grow_threshold()  # half the target window
        if consumed >= threshold and consumed > 0:
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        elif self._pending_recv_release >= threshold:
            increment = self._pending_recv_release
            self.recv_window += increment
            self._pending_recv_release = 0
            increment += self._apply_autotune_epoch(buffered)
    if increment > 0:
        # outside window_lock, as py-libp2p's own: the peer's WINDOW_UPDATE handling takes it too
        await self.send_window_update(increment, skip_lock=True)


def tune_yamux(enabled: bool = True) -> None:
    """Apply both corrections (``False``: py-libp2p as shipped, for benchmarks that compare)."""
    yamux.MAX_MESSAGE_SIZE = MAX_FRAME_BYTES if enabled else STOCK_MAX_FRAME_BYTES
    credit = _credit_half_window if enabled else _STOCK_CREDIT
    yamux.YamuxStream._auto_tune_and_send_window_update = credit  # type: ignore[method-assign]


__all__ = ["MAX_FRAME_BYTES", "STOCK_MAX_FRAME_BYTES", "tune_yamux"]
