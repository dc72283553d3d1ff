"""Job negotiation messages, spoken on a direct stream (``JOB_PROTOCOL``).

One stream per job::

    requester                                   worker
    QuoteRequest(spec, nonce, max_price, deadline) ->
                                             <- Quote (signed)  |  Refusal
    Accept(quote id, inputs)                 ->
    <input chunks, outside these messages>   ->
                                             <- Progress ...
                                             <- Result(outputs, signed receipt)  |  JobError
                                             <- <output chunks>
    Cancel                                   ->   (at any point)

A quote is signed because capacity is reserved and a price promised on its
strength: the requester can show what it was offered. It travels as a signed
envelope frame; :func:`encode_job_message` / :func:`decode_job_message` hide
that from the I/O layer. The state machine in ``negotiation.py`` says which
message may come when. Every ``*_ms`` is milliseconds; every price is in
micro-credits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, TypeAlias

from .codec import Bound, decode_any, encode, max_frame_bytes, message
from .envelope import SignedEnvelope, open_envelope, seal
from .errors import InvalidSignature, MalformedMessage
from .jobspec import (
    MAX_DECLARED_FRAMES,
    MAX_DECLARED_SIDE,
    MAX_INPUTS,
    BlobDescriptor,
    JobSpec,
    Sha256Hex,
    check_hex,
    check_nonce,
    check_range,
)
from .signing import NodeKey

MAX_PRICE = 10**15  # micro-credits: a billion credits, far above any job; keeps sums inside int64
MAX_DURATION_MS = 24 * 3600 * 1000  # a job, a quote's life, an ETA: at most a day
MAX_OUTPUTS = 16
MAX_RECEIPT_BYTES = 256 * 1024  # a signed receipt envelope (video receipts carry two fingerprints per frame)

PeerId = Annotated[str, Bound(max_len=64)]
QuoteId = Annotated[str, Bound(max_len=64)]
Text = Annotated[str, Bound(max_len=512)]  # human-readable detail, never parsed


# Extensions of the job stream a worker advertises (CapabilityAdvert.job_features):
ACCEPT_IN_ADVANCE = "accept_in_advance"  # it honours QuoteRequest.accept
JOB_FEATURES = (ACCEPT_IN_ADVANCE,)  # what this version's worker speaks


@dataclass(frozen=True)
class InputShape:
    """The size of a job's input as the requester read it from the file's header, nothing decoded.

    Image-to-image makes an output of its input's size, and frame interpolation's work grows with
    its input's frames; the spec does not say either (it names the input by hash and byte length
    only). Declared here, the worker prices, times and bounds such a job when it quotes, before any
    input is sent, and refuses an input that turns out otherwise.
    """

    width: int  # pixels (of each frame)
    height: int  # pixels
    frames: int  # 1 for an image; a video's frames as counted by the probe (non-empty packets)

    def __post_init__(self) -> None:
        check_range("width", self.width, 1, MAX_DECLARED_SIDE)
        check_range("height", self.height, 1, MAX_DECLARED_SIDE)
        check_range("frames", self.frames, 1, MAX_DECLARED_FRAMES)


@message("job_quote_request", max_bytes=32 * 1024)
@dataclass(frozen=True)
class QuoteRequest:
    spec: JobSpec  # bulky inputs are named by descriptor only
    nonce: Annotated[bytes, Bound(max_len=32)]  # requester's random 16..32 bytes; part of the job id
    max_price: int  # micro-credits; the worker refuses (reason "price") rather than quote above it
    deadline_ms: int  # ms from this request to the Result, relative so peers' clocks need not agree
    # Taken in advance: a quote the worker makes (never above max_price) counts as accepted the
    # moment it is sent, and the inputs' chunks follow this request at once instead of an Accept;
    # saves a round trip. Requesters set it only for small inputs (a refused job's are dropped), and
    # only towards a worker whose advert lists ACCEPT_IN_ADVANCE (an older one would read the inputs
    # as a message out of turn).
    accept: bool = False
    # The input's size, for the pipelines whose work the spec alone does not fix (image-to-image,
    # frame interpolation; an upscale declares its input in the spec). Outside the spec, so not
    # part of the job id: a worker that predates it ignores it and prices such jobs as before.
    input_shape: InputShape | None = None

    def __post_init__(self) -> None:
        check_nonce(self.nonce)
        check_range("max_price", self.max_price, 0, MAX_PRICE)
        check_range("deadline_ms", self.deadline_ms, 1, MAX_DURATION_MS)


@message("job_quote", max_bytes=2 * 1024)
@dataclass(frozen=True)
class Quote:
    """The worker's offer; capacity stays reserved for it until ``expires_at_ms``."""

    quote_id: QuoteId  # chosen by the worker, unique among its quotes
    job_id: Sha256Hex  # job_id(spec, requester, nonce)
    worker_peer_id: PeerId  # must equal the envelope's signer
    price: int  # micro-credits for the whole job
    eta_ms: int  # ms from Accept to Result, worker's estimate
    warm: bool  # the model is loaded on the device now (no load time in eta_ms)
    model_id: Annotated[str, Bound(max_len=128)]  # the model it will run (its choice when the spec left it empty)
    weights_sha256: Sha256Hex  # hex sha256 of those weights, as advertised and later signed in the receipt
    issued_at_ms: int  # unix ms, worker's clock
    expires_at_ms: int  # unix ms, worker's clock; the requester uses expires - issued as a relative ttl

    def __post_init__(self) -> None:
        if not self.quote_id:
            raise ValueError("a quote needs an id")
        check_hex("job_id", self.job_id, 64)
        check_hex("weights_sha256", self.weights_sha256, 64)
        check_range("price", self.price, 0, MAX_PRICE)
        check_range("eta_ms", self.eta_ms, 0, MAX_DURATION_MS)
        check_range("quote lifetime", self.expires_at_ms - self.issued_at_ms, 1, MAX_DURATION_MS)

    @property
    def ttl_ms(self) -> int:  # ms the quote stands, independent of clock offsets between peers
        return self.expires_at_ms - self.issued_at_ms


class RefusalReason(StrEnum):
    BUSY = "busy"  # no capacity now; retry_after_ms may say when
    UNKNOWN_MODEL = "unknown_model"  # model_id not served here
    UNSUPPORTED_PIPELINE = "unsupported_pipeline"
    UNSUPPORTED_PARAMS = "unsupported_params"  # outside this model's limits (size, steps, scale, ...)
    INPUT_TOO_LARGE = "input_too_large"  # inputs exceed this node's transfer limits
    PRICE = "price"  # the job costs more than max_price here
    DEADLINE = "deadline"  # cannot finish within deadline_ms
    SHUTTING_DOWN = "shutting_down"
    RATE_LIMITED = "rate_limited"  # this requester asks too often
    NOT_ALLOWED = "not_allowed"  # this requester is banned or not accepted here
    OTHER = "other"


@message("job_refusal", max_bytes=4 * 1024)
@dataclass(frozen=True)
class Refusal:
    job_id: Sha256Hex
    reason: RefusalReason
    message: Text  # for people; machines read ``reason``
    retry_after_ms: int  # ms until asking again may succeed; 0 = no idea

    def __post_init__(self) -> None:
        check_hex("job_id", self.job_id, 64)
        check_range("retry_after_ms", self.retry_after_ms, 0, MAX_DURATION_MS)


@message("job_accept", max_bytes=8 * 1024)
@dataclass(frozen=True)
class Accept:
    quote_id: QuoteId
    job_id: Sha256Hex
    # The inputs' chunks follow in this order; the descriptors must be the spec's own
    # (restated so the worker's reader is driven by the message it just read).
    inputs: Annotated[tuple[BlobDescriptor, ...], Bound(max_items=MAX_INPUTS)]

    def __post_init__(self) -> None:
        check_hex("job_id", self.job_id, 64)


@message("job_progress", max_bytes=1024)
@dataclass(frozen=True)
class Progress:
    job_id: Sha256Hex
    stage: Annotated[str, Bound(max_len=32)]  # "queued", "load", "denoise", "decode", "encode", ...
    step: int  # steps of this stage completed
    total: int  # steps in this stage; 0 when unknown
    elapsed_ms: int  # ms since the worker received Accept

    def __post_init__(self) -> None:
        check_hex("job_id", self.job_id, 64)
        check_range("step", self.step, 0, 1_000_000)
        check_range("total", self.total, 0, 1_000_000)
        check_range("elapsed_ms", self.elapsed_ms, 0, MAX_DURATION_MS)


@message("job_result", max_bytes=MAX_RECEIPT_BYTES + 16 * 1024)
@dataclass(frozen=True)
class Result:
    job_id: Sha256Hex
    # The outputs' chunks follow in this order; each must match the receipt's entry.
    outputs: Annotated[tuple[BlobDescriptor, ...], Bound(max_items=MAX_OUTPUTS)]
    receipt: Annotated[bytes, Bound(max_len=MAX_RECEIPT_BYTES)]  # sign_receipt() bytes, stored as they came

    def __post_init__(self) -> None:
        check_hex("job_id", self.job_id, 64)
        if not self.outputs:
            raise ValueError("a result has at least one output")


class ErrorCode(StrEnum):
    QUOTE_EXPIRED = "quote_expired"  # Accept came after the quote's expiry; reservation gone
    INVALID_INPUT = "invalid_input"  # inputs do not decode or do not fit the params
    INPUT_MISMATCH = "input_mismatch"  # input bytes do not match their descriptors
    MODEL_LOAD_FAILED = "model_load_failed"
    OUT_OF_MEMORY = "out_of_memory"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"  # the worker gave up on the job (shutting down, operator)
    PROTOCOL_VIOLATION = "protocol_violation"  # the requester sent something out of turn
    INTERNAL = "internal"


@message("job_error", max_bytes=4 * 1024)
@dataclass(frozen=True)
class JobError:
    job_id: Sha256Hex  # "" only when the job id is not known yet (a malformed QuoteRequest)
    code: ErrorCode
    message: Text

    def __post_init__(self) -> None:
        if self.job_id:
            check_hex("job_id", self.job_id, 64)


@message("job_cancel", max_bytes=1024)
@dataclass(frozen=True)
class Cancel:
    job_id: Sha256Hex
    reason: Annotated[str, Bound(max_len=128)]  # for logs: "user", "deadline", "quote_expired", ...

    def __post_init__(self) -> None:
        check_hex("job_id", self.job_id, 64)


JobMessage: TypeAlias = QuoteRequest | Quote | Refusal | Accept | Progress | Result | JobError | Cancel
_JOB_TYPES: tuple[type[Any], ...] = (QuoteRequest, Quote, Refusal, Accept, Progress, Result, JobError, Cancel)
# Largest frame on a job stream: the biggest message, or a signed quote envelope.
MAX_JOB_FRAME_BYTES = max(max(max_frame_bytes(t) for t in _JOB_TYPES), max_frame_bytes(Quote) + 256)


def encode_job_message(msg: JobMessage, key: NodeKey) -> bytes:
    """The frame for ``msg``: quotes are sealed with ``key`` (the worker's), others plain."""
    if isinstance(msg, Quote):
        if msg.worker_peer_id != key.peer_id:
            raise ValueError("a quote can only be signed by the worker it names")
        return seal(key, msg)
    return encode(msg)


def decode_job_message(data: bytes) -> JobMessage:
    """Decode a job-stream frame. Quotes must arrive signed, by the worker they name.

    Raises the codec's errors, :class:`InvalidSignature`, or :class:`MalformedMessage`
    for a registered type that does not belong on a job stream (an advert, an unsigned quote).
    """
    msg = decode_any(data, MAX_JOB_FRAME_BYTES)
    if isinstance(msg, SignedEnvelope):
        # The only signed frame on a job stream is a quote; opening it as one fixes the domain.
        signer, quote = open_envelope(data, Quote)
        if signer != quote.worker_peer_id:
            raise InvalidSignature(f"quote names worker {quote.worker_peer_id} but is signed by {signer}")
        return quote
    if isinstance(msg, Quote):
        raise MalformedMessage("a quote must be signed")
    if not isinstance(msg, _JOB_TYPES):
        raise MalformedMessage(f"{type(msg).__name__} does not belong on a job stream")
    return msg  # type: ignore[no-any-return]


__all__ = [
    "ACCEPT_IN_ADVANCE",
    "JOB_FEATURES",
    "MAX_JOB_FRAME_BYTES",
    "Accept",
    "Cancel",
    "ErrorCode",
    "InputShape",
    "JobError",
    "JobMessage",
    "Progress",
    "Quote",
    "QuoteRequest",
    "Refusal",
    "RefusalReason",
    "Result",
    "decode_job_message",
    "encode_job_message",
]
