"""Receipts: the worker's signed statement of what it computed, for whom, and how.

A receipt holds the whole :class:`JobSpec` (every parameter and the seed) with
the requester's nonce, so anyone can recompute the job id from the receipt
alone; the signer's key is inside its peer id, so :func:`verify_receipt` needs
nothing but the bytes (``lpnode receipt verify FILE``). Receipts are stored as
the signed bytes that came over the wire, never re-encoded: the signature
covers those bytes, including fields a newer worker added.

Output hashes answer three questions (see ``models/outputs.py``): ``sha256`` is
"this is the file I sent", ``pixel_sha256`` is "these are the decoded pixels",
and the perceptual fingerprints let a checker compare honest outputs from other
hardware, which never match bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from .codec import Bound, message
from .envelope import open_envelope, seal
from .errors import InvalidSignature, OutputMismatch, ProtocolError, ReceiptRejected
from .jobs import MAX_OUTPUTS, MAX_PRICE, MAX_RECEIPT_BYTES, PeerId, QuoteId
from .jobspec import MAX_BLOB_BYTES, JobSpec, Sha256Hex, check_hex, check_nonce, check_range, job_id
from .signing import NodeKey

MAX_FRAMES = 4096  # fingerprints per receipt, over all outputs: keeps the largest receipt under its frame limit
FINGERPRINT_HEX = 16  # 64-bit pHash/dHash as hex digits (imagehash's str())
MAX_STAGE_MS = 7 * 24 * 3600 * 1000  # ms; a sanity bound on any one timing

Fingerprint = Annotated[tuple[str, ...], Bound(max_items=MAX_FRAMES)]


@dataclass(frozen=True)
class LibraryVersion:
    name: Annotated[str, Bound(max_len=32)]  # "torch", "diffusers", "cuda", ...
    version: Annotated[str, Bound(max_len=64)]  # as the library reports it, e.g. "2.11.0+cu128"


@dataclass(frozen=True)
class RuntimeFacts:
    """What produced the outputs; honest outputs from different runtimes differ slightly."""

    device: Annotated[str, Bound(max_len=128)]  # e.g. "NVIDIA H100 80GB HBM3", "cpu"
    dtype: Annotated[str, Bound(max_len=16)]  # "float16", "bfloat16", "float32"
    libraries: Annotated[tuple[LibraryVersion, ...], Bound(max_items=16)]


@dataclass(frozen=True)
class OutputHashes:
    """One output file. Images carry one fingerprint per tuple, videos one per decoded frame."""

    name: Annotated[str, Bound(max_len=32)]  # matches the Result's output descriptor
    media_type: Annotated[str, Bound(max_len=64)]  # "image/png", "video/mp4"
    size_bytes: int  # bytes of the encoded file
    sha256: Sha256Hex  # hex sha256 of the encoded file
    pixel_sha256: Sha256Hex  # hex sha256 of the decoded RGB pixels (all frames in order for a video)
    phash: Fingerprint  # 16 hex digits each: 64-bit perceptual hash per image/frame
    dhash: Fingerprint  # 16 hex digits each: 64-bit difference hash per image/frame

    def __post_init__(self) -> None:
        check_range("size_bytes", self.size_bytes, 1, MAX_BLOB_BYTES)
        check_hex("sha256", self.sha256, 64)
        check_hex("pixel_sha256", self.pixel_sha256, 64)
        if not self.phash or len(self.phash) != len(self.dhash):
            raise ValueError("phash and dhash need one entry per image/frame")
        for fingerprint in (*self.phash, *self.dhash):
            check_hex("fingerprint", fingerprint, FINGERPRINT_HEX)


@dataclass(frozen=True)
class Timings:
    queue_ms: int  # ms from Accept (inputs received) to the start of the run
    load_ms: int  # ms spent loading the model for this job; 0 when it was warm
    run_ms: int  # ms of inference, encoding and hashing

    def __post_init__(self) -> None:
        for name in ("queue_ms", "load_ms", "run_ms"):
            check_range(name, getattr(self, name), 0, MAX_STAGE_MS)


@message("receipt", max_bytes=MAX_RECEIPT_BYTES - 512)  # leaves room for the envelope
@dataclass(frozen=True)
class Receipt:
    job_id: Sha256Hex  # job_id(spec, requester_peer_id, nonce); verify_receipt recomputes it
    requester_peer_id: PeerId
    worker_peer_id: PeerId  # the signer
    nonce: Annotated[bytes, Bound(max_len=32)]  # the requester's, from the QuoteRequest
    spec: JobSpec  # every parameter and the seed
    quote_id: QuoteId  # the quote this job ran under
    price: int  # micro-credits, as quoted
    model_id: Annotated[str, Bound(max_len=128)]  # the model that ran (the spec's, or the one routed to)
    weights_sha256: Sha256Hex  # hex sha256 of its weights
    runtime: RuntimeFacts
    outputs: Annotated[tuple[OutputHashes, ...], Bound(max_items=MAX_OUTPUTS)]
    timings: Timings
    seq: int  # per-worker receipt counter, strictly increasing: gaps and repeats are visible to auditors
    issued_at_ms: int  # unix ms, worker's clock

    def __post_init__(self) -> None:
        check_hex("job_id", self.job_id, 64)
        check_hex("weights_sha256", self.weights_sha256, 64)
        check_nonce(self.nonce)
        check_range("price", self.price, 0, MAX_PRICE)
        check_range("seq", self.seq, 0, 2**63 - 1)
        check_range("issued_at_ms", self.issued_at_ms, 0, 2**63 - 1)
        if not self.outputs:
            raise ValueError("a receipt names at least one output")
        if sum(len(out.phash) for out in self.outputs) > MAX_FRAMES:
            raise ValueError(f"more than {MAX_FRAMES} fingerprinted images/frames")
        if self.spec.model_id and self.spec.model_id != self.model_id:
            raise ValueError("the spec named a model other than the one that ran")


def sign_receipt(key: NodeKey, receipt: Receipt) -> bytes:
    """The receipt's signed bytes (an envelope under the ``lpnode/receipt/1`` domain)."""
    if receipt.worker_peer_id != key.peer_id:
        raise ValueError("a receipt can only be signed by the worker it names")
    return seal(key, receipt)


def verify_receipt(data: bytes) -> Receipt:
    """Check a receipt from its bytes alone; raise :class:`ReceiptRejected` with a reason.

    Checks size, framing, the signature (key taken from the claimed signer's peer
    id), that the signer is the worker the receipt names, and that the job id is
    the hash of the spec, requester and nonce it carries.
    """
    if len(data) > MAX_RECEIPT_BYTES:
        raise ReceiptRejected("oversized", f"{len(data)} bytes, limit {MAX_RECEIPT_BYTES}")
    try:
        signer, receipt = open_envelope(data, Receipt)
    except InvalidSignature as exc:
        raise ReceiptRejected("bad_signature", str(exc)) from None
    except ProtocolError as exc:
        raise ReceiptRejected("malformed", str(exc)) from None
    if signer != receipt.worker_peer_id:
        raise ReceiptRejected("wrong_signer", f"names worker {receipt.worker_peer_id}, signed by {signer}")
    expected = job_id(receipt.spec, receipt.requester_peer_id, receipt.nonce)
    if receipt.job_id != expected:
        raise ReceiptRejected("job_id_mismatch", f"receipt says {receipt.job_id}, its spec hashes to {expected}")
    return receipt


def check_outputs(receipt: Receipt, outputs_sha256: Sequence[str]) -> None:
    """Raise :class:`OutputMismatch` unless the delivered files hash, in order, to the receipt's outputs.

    ``outputs_sha256`` are the hex sha256 of the bytes the requester actually received.
    """
    signed = [out.sha256 for out in receipt.outputs]
    received = list(outputs_sha256)
    if len(received) != len(signed):
        raise OutputMismatch(f"{len(received)} outputs received, receipt names {len(signed)}")
    for index, (got, want) in enumerate(zip(received, signed, strict=True)):
        if got != want:
            raise OutputMismatch(f"output {index} ({receipt.outputs[index].name}) hashes to {got}, receipt says {want}")


def conflicting(a: Receipt, b: Receipt) -> bool:
    """True when one worker signed two receipts for one run of one job with different outputs.

    One quote is one run: a worker signs one receipt per quote it honoured, so two
    outputs under one job id *and* one quote id cannot both be honest, and this
    pair (as verified bytes) is evidence for the reputation store. Under two
    quotes it is no proof: a requester that sends the same QuoteRequest twice
    (its own nonce again) gets two honest runs, whose bytes may differ (a run
    batched with other jobs is not bit-exact with a lone one, nor are GPUs), and
    must not be able to frame the worker with them. Pass only verified receipts.
    """
    return (
        a.worker_peer_id == b.worker_peer_id
        and a.job_id == b.job_id
        and a.quote_id == b.quote_id
        and _output_facts(a) != _output_facts(b)
    )


def _output_facts(receipt: Receipt) -> tuple[tuple[str, str], ...]:
    return tuple((out.sha256, out.pixel_sha256) for out in receipt.outputs)


__all__ = [
    "LibraryVersion",
    "OutputHashes",
    "Receipt",
    "RuntimeFacts",
    "Timings",
    "check_outputs",
    "conflicting",
    "sign_receipt",
    "verify_receipt",
]
