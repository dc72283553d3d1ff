"""Peer ids and signatures agree with libp2p's own implementation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from lpnode.protocol import InvalidSignature, NodeKey, public_key_from_peer_id, verify
from lpnode.protocol.peer_id import b58decode, b58encode


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_matches_libp2p(seed: bytes) -> None:
    key = NodeKey(seed)
    assert key.peer_id == str(ID.from_pubkey(create_new_key_pair(seed).public_key))
    assert public_key_from_peer_id(key.peer_id) == key.public_key


@given(st.binary(max_size=64))
def test_base58_round_trips(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


def test_signature_binds_domain_payload_and_key() -> None:
    key, other = NodeKey(b"\x01" * 32), NodeKey(b"\x02" * 32)
    signature = key.sign("lpnode/advert/1", b"payload")
    verify(key.peer_id, "lpnode/advert/1", b"payload", signature)
    for peer, domain, payload in (
        (other.peer_id, "lpnode/advert/1", b"payload"),
        (key.peer_id, "lpnode/receipt/1", b"payload"),
        (key.peer_id, "lpnode/advert/1", b"payloaD"),
    ):
        with pytest.raises(InvalidSignature):
            verify(peer, domain, payload, signature)


@pytest.mark.parametrize(
    "bad_id",
    ["", "not-base58-0OIl", "Qm" + "a" * 44, "1" * 70, "12D3KooW"],
)
def test_peer_ids_without_an_ed25519_key_are_refused(bad_id: str) -> None:
    with pytest.raises(InvalidSignature):
        public_key_from_peer_id(bad_id)


def test_repr_never_shows_the_seed() -> None:
    key = NodeKey(b"\x01" * 32)
    assert "\\x01" not in repr(key) and key.peer_id in repr(key)
