"""Ed25519 signatures with domain separation.

Every signed object signs ``domain || 0x00 || payload`` where ``domain`` names
what is signed (``lpnode/advert/1``), so a signature made for one purpose can
never be replayed as another (the idea of libp2p signed envelopes, RFC 0002).
The signing key is the node's libp2p identity key.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import nacl.exceptions
import nacl.signing

from .errors import InvalidSignature
from .peer_id import peer_id_from_public_key, public_key_from_peer_id

SIGNATURE_BYTES = 64
SEED_BYTES = 32


def _signed_bytes(domain: str, payload: bytes) -> bytes:
    return domain.encode("utf-8") + b"\x00" + payload


@dataclass(frozen=True)
class NodeKey:
    """A node's Ed25519 identity key (the 32-byte seed)."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise ValueError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    # Derived once per key: deriving the key pair and base58-encoding the id cost ~70 µs, and a
    # node asks for its peer id and signs several times per job (cached_property writes the
    # instance dict directly, which a frozen dataclass allows; eq and hash still see only the seed).
    @cached_property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @cached_property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @cached_property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def sign(self, domain: str, payload: bytes) -> bytes:
        return self._signing_key.sign(_signed_bytes(domain, payload)).signature

    def __repr__(self) -> str:  # never print the seed
        return f"NodeKey(peer_id={self.peer_id!r})"


def verify(peer_id: str, domain: str, payload: bytes, signature: bytes) -> None:
    """Check that ``peer_id``'s key signed ``payload`` under ``domain``.

    Raises :class:`InvalidSignature` otherwise.
    """
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidSignature("signature must be 64 bytes")
    verify_key = nacl.signing.VerifyKey(public_key_from_peer_id(peer_id))
    try:
        verify_key.verify(_signed_bytes(domain, payload), signature)
    except nacl.exceptions.BadSignatureError:
        raise InvalidSignature(f"signature by {peer_id} does not verify") from None
