"""Receipts: verifiable offline from their bytes; every forgery and mismatch turned away."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from lpnode.protocol import (
    OutputMismatch,
    Receipt,
    ReceiptRejected,
    check_outputs,
    conflicting,
    decode,
    encode,
    seal,
    sign_receipt,
    verify_receipt,
)
from lpnode.protocol.envelope import SignedEnvelope
from lpnode.protocol.jobs import MAX_RECEIPT_BYTES
from lpnode.protocol.receipts import MAX_FRAMES

from .job_factory import (
    MALLORY,
    OUTPUT_SHA,
    WORKER,
    make_quote,
    make_receipt,
    output_hashes,
    quote_request,
    receipts,
)


def receipt() -> Receipt:
    request = quote_request()
    return make_receipt(request, make_quote(request))


def rejected(data: bytes) -> str:
    with pytest.raises(ReceiptRejected) as info:
        verify_receipt(data)
    return info.value.reason


@given(receipts())
def test_signed_receipts_round_trip(original: Receipt) -> None:
    assert verify_receipt(sign_receipt(WORKER, original)) == original


def test_a_receipt_verifies_from_its_bytes_alone() -> None:
    data = sign_receipt(WORKER, receipt())
    checked = verify_receipt(bytes(data))  # no key, no lookup: the key is in the signer's peer id
    assert checked.worker_peer_id == WORKER.peer_id
    assert checked.spec.text_to_image is not None and checked.spec.seed == 7


def test_tampered_receipts_are_rejected() -> None:
    data = sign_receipt(WORKER, receipt())
    envelope = decode(data, SignedEnvelope)
    other_output = encode(dataclasses.replace(receipt(), outputs=(output_hashes(b"other bytes"),)))
    assert rejected(encode(dataclasses.replace(envelope, payload=other_output))) == "bad_signature"
    flipped = bytearray(data)
    flipped[-1] ^= 1  # last byte of the signature
    assert rejected(bytes(flipped)) == "bad_signature"


def test_a_receipt_signed_by_another_key_is_rejected() -> None:
    honest = receipt()  # names WORKER
    with pytest.raises(ValueError):
        sign_receipt(MALLORY, honest)
    assert rejected(seal(MALLORY, honest)) == "wrong_signer"  # Mallory signs a receipt naming the worker
    envelope = decode(seal(MALLORY, honest), SignedEnvelope)
    assert rejected(encode(dataclasses.replace(envelope, signer=WORKER.peer_id))) == "bad_signature"


def test_a_signature_from_another_domain_is_rejected() -> None:
    payload = encode(receipt())
    for domain in ("lpnode/job_quote/1", "lpnode/advert/1", ""):
        envelope = SignedEnvelope(WORKER.peer_id, payload, WORKER.sign(domain, payload))
        assert rejected(encode(envelope)) == "bad_signature"


def test_a_quote_envelope_does_not_pass_as_a_receipt() -> None:
    # The receipt domain is checked first, so a quote's signature fails before its type does.
    assert rejected(seal(WORKER, make_quote(quote_request()))) == "bad_signature"


def test_a_job_id_that_is_not_the_hash_of_its_spec_is_rejected() -> None:
    forged = dataclasses.replace(receipt(), job_id="0" * 64)
    assert rejected(sign_receipt(WORKER, forged)) == "job_id_mismatch"
    other_seed = dataclasses.replace(receipt(), spec=dataclasses.replace(receipt().spec, seed=8))
    assert rejected(sign_receipt(WORKER, other_seed)) == "job_id_mismatch"


def test_garbage_and_oversized_bytes_are_rejected() -> None:
    assert rejected(b"not msgpack \xc1") == "malformed"
    assert rejected(b"\x00" * (MAX_RECEIPT_BYTES + 1)) == "oversized"


def test_the_largest_receipt_fits() -> None:
    frames = MAX_FRAMES // 16
    wide = dataclasses.replace(output_hashes(frames=frames), name="\U0001f600" * 32, media_type="\U0001f600" * 16)
    big = dataclasses.replace(receipt(), outputs=(wide,) * 16)
    assert verify_receipt(sign_receipt(WORKER, big)) == big
    with pytest.raises(ValueError, match="fingerprinted"):
        dataclasses.replace(receipt(), outputs=(output_hashes(frames=MAX_FRAMES + 1),))


def test_check_outputs() -> None:
    signed = receipt()
    check_outputs(signed, [OUTPUT_SHA])
    with pytest.raises(OutputMismatch, match="hashes to"):
        check_outputs(signed, ["0" * 64])
    with pytest.raises(OutputMismatch, match="2 outputs"):
        check_outputs(signed, [OUTPUT_SHA, OUTPUT_SHA])
    with pytest.raises(OutputMismatch):
        check_outputs(signed, [])


def test_conflicting_receipts_prove_cheating() -> None:
    first = receipt()
    second = dataclasses.replace(first, outputs=(output_hashes(b"different"),), seq=42)
    assert conflicting(first, second)
    assert not conflicting(first, dataclasses.replace(first, seq=42))  # same outputs: a duplicate, not a lie
    other_job = dataclasses.replace(second, job_id="1" * 64)
    assert not conflicting(first, other_job)
    other_worker = dataclasses.replace(second, worker_peer_id=MALLORY.peer_id)
    assert not conflicting(first, other_worker)
    same_bytes_other_pixels = dataclasses.replace(first.outputs[0], pixel_sha256="e" * 64)
    assert conflicting(first, dataclasses.replace(first, outputs=(same_bytes_other_pixels,)))
    # a second quote is a second run, asked for by a requester that sent its QuoteRequest twice: honest runs
    # may differ (batching, GPUs), so that pair is no proof, or any requester could frame any worker
    assert not conflicting(first, dataclasses.replace(second, quote_id=first.quote_id + "-again"))
