"""Outbound protocol selection in one round trip instead of two.

py-libp2p's :class:`MultiselectClient` sends the multistream header, waits for
its echo, and only then proposes the protocol and waits again: two round trips
before a new stream carries a byte of ours. multistream-select lets the dialer
send the header and its proposal together (go-libp2p and rust-libp2p do; the
listener reads them in order either way), so a stream to a known protocol costs
one round trip. On a loopback job stream that is one of the four round trips
before a run starts (``bench/e2e.py``'s "peer ranked, stream opened").

Only single-protocol proposals are pipelined: that is every stream this node
opens (``Network.open_stream``). Several choices (py-libp2p's own protocols,
e.g. gossipsub's versions) go through the stock client, which tries them in turn.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from libp2p.abc import IMultiselectCommunicator
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IOException
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
    MultiselectCommunicatorError,
    ProtocolNotSupportedError,
)
from libp2p.protocol_muxer.multiselect_client import (
    DEFAULT_NEGOTIATE_TIMEOUT,
    MULTISELECT_PROTOCOL_ID,
    PROTOCOL_NOT_FOUND_MSG,
    MultiselectClient,
)
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.utils import encode_delim


class PipelinedMultiselectClient(MultiselectClient):
    """A :class:`MultiselectClient` that sends header and proposal in one write."""

    async def select_one_of(
        self,
        protocols: Sequence[TProtocol],
        communicator: IMultiselectCommunicator,
        negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT,
    ) -> TProtocol:
        if len(protocols) != 1 or not isinstance(communicator, MultiselectCommunicator):
            return await super().select_one_of(protocols, communicator, negotiate_timeout)
        protocol = protocols[0]
        with trio.move_on_after(negotiate_timeout):
            return await self._select(protocol, communicator)
        raise MultiselectClientError(f"response timed out after {negotiate_timeout}s, protocol {protocol}")

    async def _select(self, protocol: TProtocol, communicator: MultiselectCommunicator) -> TProtocol:
        proposal = encode_delim(MULTISELECT_PROTOCOL_ID.encode()) + encode_delim(str(protocol).encode())
        try:
            await communicator.read_writer.write(proposal)
        except (IOException, ValueError) as exc:
            raise MultiselectClientError(f"protocol proposal write failed: {exc}") from exc
        try:
            header = await communicator.read()
            answer = await communicator.read()
        except MultiselectCommunicatorError as exc:
            raise MultiselectClientError(f"protocol negotiation read failed: {exc}") from exc
        if header != MULTISELECT_PROTOCOL_ID:
            raise MultiselectClientError(f"multiselect protocol ID mismatch: got {header!r}")
        if answer == PROTOCOL_NOT_FOUND_MSG:
            raise ProtocolNotSupportedError(f"protocol not supported: {protocol}")
        if answer != protocol:
            raise MultiselectClientError(f"unrecognized response {answer!r} to the proposal {protocol!r}")
        return protocol


__all__ = ["PipelinedMultiselectClient"]
