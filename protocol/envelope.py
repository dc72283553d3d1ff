"""Signed envelopes: a payload frame, who signed it, and the signature.

The signature covers the payload *bytes as sent*, so fields a newer peer adds
(and this node ignores) stay covered. The signing domain comes from the type
the receiver expects, never from the payload, so a signature over one kind of
message cannot be passed off as another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from .codec import Bound, decode, encode, max_frame_bytes, message, tag_of
from .errors import InvalidSignature, OversizedMessage
from .signing import NodeKey, verify

T = TypeVar("T")

# Envelope overhead on top of the payload: signer id, signature, msgpack framing.
_ENVELOPE_OVERHEAD = 256


def signing_domain(cls: type[Any]) -> str:
    return f"lpnode/{tag_of(cls)}/1"


@message("signed", max_bytes=1024 * 1024)
@dataclass(frozen=True)
class SignedEnvelope:
    signer: Annotated[str, Bound(max_len=64)]  # libp2p peer id of the signer
    payload: Annotated[bytes, Bound(max_len=1024 * 1024)]  # an encoded frame
    signature: Annotated[bytes, Bound(max_len=64)]  # Ed25519 over domain || 0x00 || payload


def seal(key: NodeKey, msg: Any) -> bytes:
    """Encode ``msg``, sign it with ``key`` and return the envelope frame."""
    payload = encode(msg)
    envelope = SignedEnvelope(
        signer=key.peer_id, payload=payload, signature=key.sign(signing_domain(type(msg)), payload)
    )
    return encode(envelope)


def open_envelope(data: bytes, expected: type[T]) -> tuple[str, T]:
    """Verify an envelope frame holding a ``expected`` message; return (signer, message).

    Raises :class:`OversizedMessage`, :class:`MalformedMessage`, ... for bad
    framing and :class:`InvalidSignature` when the signature does not verify.
    """
    limit = max_frame_bytes(expected) + _ENVELOPE_OVERHEAD
    if len(data) > limit:
        raise OversizedMessage(f"signed {tag_of(expected)} is {len(data)} bytes, limit {limit}")
    envelope = decode(data, SignedEnvelope)
    verify(envelope.signer, signing_domain(expected), envelope.payload, envelope.signature)
    return envelope.signer, decode(envelope.payload, expected)


__all__ = ["InvalidSignature", "SignedEnvelope", "open_envelope", "seal", "signing_domain"]
