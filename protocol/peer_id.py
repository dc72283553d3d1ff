"""libp2p peer ids for Ed25519 keys, computed without libp2p.

An Ed25519 peer id is the *identity* multihash of the protobuf-encoded public
key (libp2p peer-ids spec), so the key can be recovered from the id itself:
an advert's signature is checked against the key inside its claimed peer id,
with no key exchange and no lookup.
https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md
"""

from __future__ import annotations

import functools

from .errors import InvalidSignature

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}

# protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}
_ED25519_PROTOBUF_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
# multihash: code 0x00 (identity), length 36
_IDENTITY_MULTIHASH_PREFIX = bytes([0x00, 0x24])
_PEER_ID_PREFIX = _IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTOBUF_PREFIX
_MAX_PEER_ID_CHARS = 64


def b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_B58_ALPHABET[rem])
    leading_zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading_zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        try:
            number = number * 58 + _B58_INDEX[char]
        except KeyError:
            raise ValueError(f"invalid base58 character {char!r}") from None
    leading_ones = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\x00" * leading_ones + body


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (``12D3KooW...``) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return b58encode(_PEER_ID_PREFIX + public_key)


@functools.lru_cache(maxsize=4096)  # every signature check decodes the signer's id; a node sees few peers
def public_key_from_peer_id(peer_id: str) -> bytes:
    """The raw Ed25519 public key inside ``peer_id``.

    Raises :class:`InvalidSignature` for ids that do not embed an Ed25519 key
    (RSA/secp256k1 ids hash their key, so nothing could be verified against them).
    """
    if not peer_id or len(peer_id) > _MAX_PEER_ID_CHARS:
        raise InvalidSignature("peer id is empty or too long")
    try:
        raw = b58decode(peer_id)
    except ValueError as exc:
        raise InvalidSignature(f"peer id is not base58: {exc}") from None
    if len(raw) != len(_PEER_ID_PREFIX) + 32 or not raw.startswith(_PEER_ID_PREFIX):
        raise InvalidSignature("peer id does not embed an Ed25519 public key")
    return raw[len(_PEER_ID_PREFIX) :]
