"""Adverts: round trips, and every way a bad one is turned away."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lpnode.protocol import (
    AdvertRejected,
    CapabilityAdvert,
    GpuInfo,
    ModelOffer,
    NodeKey,
    SignedEnvelope,
    decode,
    encode,
    sign_advert,
    verify_advert,
)
from lpnode.protocol.advert import ADVERT_MAX_BYTES
from lpnode.protocol.codec import PROTOCOL_VERSION, canonical_bytes

KEY = NodeKey(b"\x07" * 32)
OTHER = NodeKey(b"\x08" * 32)
NOW_MS = 1_800_000_000_000


def make_advert(key: NodeKey = KEY, **changes: object) -> CapabilityAdvert:
    advert = CapabilityAdvert(
        peer_id=key.peer_id,
        seq=5,
        issued_at_ms=NOW_MS,
        expires_at_ms=NOW_MS + 30_000,
        listen_addrs=(f"/ip4/127.0.0.1/tcp/9471/p2p/{key.peer_id}",),
        software_version="0.1.0",
        protocol_version=PROTOCOL_VERSION,
        gpus=(
            GpuInfo(
                name="NVIDIA GeForce RTX 4090",
                kind="cuda",
                vram_total_bytes=24 << 30,
                vram_free_bytes=20 << 30,
            ),
        ),
        models=(
            ModelOffer(
                pipeline="text-to-image",
                model_id="sdxl-turbo",
                weights_sha256="ab" * 32,
                warm=True,
                speed_mpx_steps_per_s=12.5,
                price_per_mpx_step=40,
            ),
        ),
        queue_depth=1,
        queue_capacity=8,
    )
    return dataclasses.replace(advert, **changes)


def reason(data: bytes, origin: str = KEY.peer_id, now_ms: int = NOW_MS) -> str:
    with pytest.raises(AdvertRejected) as info:
        verify_advert(data, origin=origin, now_ms=now_ms)
    return info.value.reason


def test_signed_advert_round_trips() -> None:
    advert = make_advert()
    assert verify_advert(sign_advert(KEY, advert), origin=KEY.peer_id, now_ms=NOW_MS) == advert


def test_encoding_is_canonical() -> None:
    assert encode(make_advert()) == encode(make_advert())
    assert canonical_bytes({"b": 1, "a": 2}) == canonical_bytes({"a": 2, "b": 1})


names = st.text(max_size=40)
gpus = st.builds(
    lambda name, total, free_share: GpuInfo(
        name=name, kind="cuda", vram_total_bytes=total, vram_free_bytes=int(total * free_share)
    ),
    names,
    st.integers(0, 1 << 40),
    st.floats(0, 1),
)
offers = st.builds(
    ModelOffer,
    pipeline=st.sampled_from(["text-to-image", "image-to-video", "upscale"]),
    model_id=names,
    weights_sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    warm=st.booleans(),
    speed_mpx_steps_per_s=st.floats(0, 1e6, allow_nan=False),
    price_per_mpx_step=st.integers(0, 10**12),
)


@settings(max_examples=60, deadline=None)
@given(
    seq=st.integers(0, 2**62),
    lifetime=st.integers(1, 600_000),
    gpu_list=st.lists(gpus, max_size=8),
    model_list=st.lists(offers, max_size=16),
    depth=st.integers(0, 1000),
)
def test_any_valid_advert_round_trips(
    seq: int, lifetime: int, gpu_list: list[GpuInfo], model_list: list[ModelOffer], depth: int
) -> None:
    advert = make_advert(
        seq=seq,
        expires_at_ms=NOW_MS + lifetime,
        gpus=tuple(gpu_list),
        models=tuple(model_list),
        queue_depth=depth,
    )
    assert decode(encode(advert), CapabilityAdvert) == advert
    assert verify_advert(sign_advert(KEY, advert), origin=KEY.peer_id, now_ms=NOW_MS) == advert


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_are_rejected_never_crash(garbage: bytes) -> None:
    assert reason(garbage) in {"malformed", "bad_signature"}


def test_forged_signature_is_rejected() -> None:
    data = sign_advert(KEY, make_advert())
    envelope = decode(data, SignedEnvelope)
    flipped = bytes([envelope.signature[0] ^ 1]) + envelope.signature[1:]
    assert reason(encode(dataclasses.replace(envelope, signature=flipped))) == "bad_signature"


def test_tampered_payload_is_rejected() -> None:
    envelope = decode(sign_advert(KEY, make_advert()), SignedEnvelope)
    tampered = encode(make_advert(queue_depth=0))
    assert reason(encode(dataclasses.replace(envelope, payload=tampered))) == "bad_signature"


def test_advert_signed_by_another_key_is_rejected() -> None:
    # OTHER signs an advert that claims to be KEY's
    forged = encode(
        SignedEnvelope(
            signer=OTHER.peer_id,
            payload=encode(make_advert()),
            signature=OTHER.sign("lpnode/advert/1", encode(make_advert())),
        )
    )
    assert reason(forged, origin=OTHER.peer_id) == "forged_origin"


def test_advert_relayed_under_another_origin_is_rejected() -> None:
    assert reason(sign_advert(KEY, make_advert()), origin=OTHER.peer_id) == "forged_origin"


def test_signature_from_another_domain_does_not_verify() -> None:
    payload = encode(make_advert())
    wrong_domain = SignedEnvelope(signer=KEY.peer_id, payload=payload, signature=KEY.sign("lpnode/quote/1", payload))
    assert reason(encode(wrong_domain)) == "bad_signature"


def test_expired_and_future_adverts_are_rejected() -> None:
    data = sign_advert(KEY, make_advert())
    assert reason(data, now_ms=NOW_MS + 30_000) == "expired"
    assert reason(data, now_ms=NOW_MS - 60_000) == "clock_skew"
    # within the skew allowance it is fine
    verify_advert(data, origin=KEY.peer_id, now_ms=NOW_MS - 10_000)


def test_oversized_advert_is_rejected_before_decoding() -> None:
    assert reason(b"\x00" * (ADVERT_MAX_BYTES + 1024)) == "oversized"


def test_absurd_fields_are_malformed() -> None:
    def raw_advert(**body_changes: object) -> bytes:
        body = msgpack.unpackb(encode(make_advert()))[2]
        body.update(body_changes)
        payload = msgpack.packb([PROTOCOL_VERSION, "advert", body])
        return encode(
            SignedEnvelope(signer=KEY.peer_id, payload=payload, signature=KEY.sign("lpnode/advert/1", payload))
        )

    assert reason(raw_advert(seq="five")) == "malformed"
    assert reason(raw_advert(listen_addrs=["x"] * 17)) == "malformed"
    assert reason(raw_advert(software_version="v" * 1000)) == "malformed"
    assert reason(raw_advert(expires_at_ms=NOW_MS + 3_600_000)) == "malformed"  # lifetime cap
    assert reason(raw_advert(queue_depth=-1)) == "malformed"
    assert reason(raw_advert(gpus=[{"name": "x", "kind": "cuda", "vram_total_bytes": 1, "vram_free_bytes": 2}])) == (
        "malformed"
    )
    del_body = msgpack.unpackb(encode(make_advert()))[2]
    del del_body["seq"]
    payload = msgpack.packb([PROTOCOL_VERSION, "advert", del_body])
    env = SignedEnvelope(signer=KEY.peer_id, payload=payload, signature=KEY.sign("lpnode/advert/1", payload))
    assert reason(encode(env)) == "malformed"


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    body = msgpack.unpackb(encode(make_advert()))[2]
    body["added_in_v2"] = {"anything": [1, 2, 3]}
    payload = msgpack.packb([PROTOCOL_VERSION, "advert", body])
    env = SignedEnvelope(signer=KEY.peer_id, payload=payload, signature=KEY.sign("lpnode/advert/1", payload))
    assert verify_advert(encode(env), origin=KEY.peer_id, now_ms=NOW_MS) == make_advert()


def test_unknown_type_and_version_are_rejected() -> None:
    for frame in ([PROTOCOL_VERSION, "no-such-type", {}], [PROTOCOL_VERSION + 1, "advert", {}]):
        payload = msgpack.packb(frame)
        env = SignedEnvelope(signer=KEY.peer_id, payload=payload, signature=KEY.sign("lpnode/advert/1", payload))
        assert reason(encode(env)) == "malformed"


def test_only_the_described_peer_may_sign() -> None:
    with pytest.raises(ValueError, match="signed by the peer it describes"):
        sign_advert(OTHER, make_advert())
