"""The worker's quote decision: which model runs a request, at what price and ETA, or why not.

Pure: the pool's status rows and the worker's config in, an :class:`Offer` or a
:class:`Decline` out. Every check here needs no decoding and no device, so a job
that cannot run is refused before capacity is reserved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lpnode.models.errors import ParameterError
from lpnode.models.pool import ModelStatus
from lpnode.models.speed import Speed
from lpnode.protocol.jobs import MAX_DURATION_MS, QuoteRequest, RefusalReason

from .framing import FramingConfig
from .job_convert import check_params
from .peer_choice import job_mpx_steps, job_price, work_is_known
from .transfer import DEFAULT_MAX_TOTAL_BYTES


@dataclass(frozen=True)
class WorkerConfig:
    max_jobs: int = 4  # reservations at once (quoted or running); one more is refused "busy"
    price_per_mpx_step: int = 100  # micro-credits, the same figure the advert carries
    quote_ttl_ms: int = 15_000  # capacity stays reserved this long for an unanswered quote
    request_timeout_s: float = 10.0  # the QuoteRequest must arrive this soon after the stream opens
    unmeasured_eta_ms: int = 30_000  # ETA quoted for a model with no measured speed yet
    max_input_bytes: int = DEFAULT_MAX_TOTAL_BYTES  # all inputs of one job together
    # Open job streams at once, quoting or idle ones included: a peer opening streams and
    # saying nothing costs a task each until request_timeout_s, so their number is bounded.
    max_streams: int = 64
    # ... and of them, from one peer: a peer reopening silent streams as each times out would otherwise
    # hold every slot, and every other requester's stream would be closed unanswered (review s11).
    # A requester's own need is its jobs in flight to this worker plus one spare stream.
    max_streams_per_peer: int = 32
    # Quotes one requester may hold unanswered at once. A standing quote reserves capacity for free
    # for quote_ttl_ms: one peer asking again as each expired kept every slot (review s11). A request
    # taken in advance, or an accepted quote, is no longer standing. Past it: refused rate_limited.
    max_standing_quotes_per_peer: int = 2
    # An accepted job's inputs must arrive within input_grace_s plus their size at this rate (and
    # within the requester's deadline): a requester trickling its upload held a slot for the whole
    # of a deadline it chose itself, up to 24 h (review s11). 64 KiB/s is a slow home uplink.
    input_grace_s: float = 30.0
    min_input_bytes_per_s: int = 64 * 1024
    # After its last message the worker waits this long for the requester to close the stream
    # (it does once it holds and has checked the outputs) before closing its own side.
    linger_s: float = 10.0
    # A Progress at least this often while an accepted job waits or runs: the pool reports only while a
    # job is on the device, and requesters take 60 s of silence for a dead worker (docs/protocol.md §8.8).
    progress_keepalive_s: float = 15.0
    framing: FramingConfig = field(default_factory=FramingConfig)

    def __post_init__(self) -> None:
        if self.max_jobs < 1 or self.max_streams < 1 or self.quote_ttl_ms < 1 or self.request_timeout_s <= 0:
            raise ValueError("max_jobs, max_streams, quote_ttl_ms and request_timeout_s must be positive")
        if self.max_streams_per_peer < 1 or self.max_standing_quotes_per_peer < 1 or self.min_input_bytes_per_s < 1:
            raise ValueError(
                "max_streams_per_peer, max_standing_quotes_per_peer and min_input_bytes_per_s must be positive"
            )
        if not self.input_grace_s > 0:
            raise ValueError(
                f"WorkerConfig.input_grace_s must be a positive number of seconds, got {self.input_grace_s!r}"
            )
        if not self.linger_s > 0:
            raise ValueError(f"WorkerConfig.linger_s must be a positive number of seconds, got {self.linger_s!r}")
        if not self.progress_keepalive_s > 0:
            raise ValueError(f"WorkerConfig.progress_keepalive_s must be positive, got {self.progress_keepalive_s!r}")


@dataclass(frozen=True)
class Offer:
    row: ModelStatus  # the model that will run it
    price: int  # micro-credits
    eta_ms: int  # ms from Accept to Result, estimated


@dataclass(frozen=True)
class Decline:
    reason: RefusalReason
    message: str  # for people
    retry_after_ms: int  # 0 = no idea


def decide_quote(
    request: QuoteRequest, rows: Sequence[ModelStatus], config: WorkerConfig, *, held: int
) -> Offer | Decline:
    """Quote or refuse ``request`` from the pool's rows; ``held`` is the number of reservations standing.

    Pure and cheap (no decoding, no device): it runs before anything is reserved.
    """
    spec = request.spec
    for_pipeline = [r for r in rows if spec.pipeline.value in r.pipelines]
    if spec.model_id:
        chosen = [r for r in for_pipeline if r.model_id == spec.model_id]
        if not chosen:
            if any(r.model_id == spec.model_id for r in rows):
                return Decline(RefusalReason.UNSUPPORTED_PIPELINE, f"{spec.model_id} does not do {spec.pipeline}", 0)
            served = ", ".join(sorted(r.model_id for r in for_pipeline)) or "none"
            return Decline(RefusalReason.UNKNOWN_MODEL, f"{spec.model_id} not served; {spec.pipeline}: {served}", 0)
    else:
        chosen = for_pipeline
        if not chosen:
            return Decline(RefusalReason.UNSUPPORTED_PIPELINE, f"no model here does {spec.pipeline}", 0)
    # the model router: warm first, then the fastest measured
    row = max(chosen, key=lambda r: (r.warm, r.speed_mpx_steps_per_s, r.model_id))
    if len(row.weights_sha256) != 64:
        if row.problem:  # e.g. its weights are missing: asking again will not help
            return Decline(RefusalReason.OTHER, f"{row.model_id} cannot run here: {row.problem}"[:500], 0)
        return Decline(RefusalReason.OTHER, f"{row.model_id}: weights not hashed yet", 5_000)
    if sum(blob.size_bytes for blob in spec.inputs) > config.max_input_bytes:
        return Decline(RefusalReason.INPUT_TOO_LARGE, f"inputs above {config.max_input_bytes} bytes", 0)
    shape = request.input_shape
    try:
        check_params(row.name, spec, shape)
    except ParameterError as exc:
        return Decline(RefusalReason.UNSUPPORTED_PARAMS, str(exc)[:500], 0)
    price = job_price(spec, config.price_per_mpx_step, shape)
    if price > request.max_price:
        return Decline(RefusalReason.PRICE, f"{price} > max_price {request.max_price}", 0)
    # the model's fixed cost per run plus the job's work at its marginal speed (models.speed)
    run_s = Speed(row.speed_mpx_steps_per_s, row.overhead_s).seconds(job_mpx_steps(spec, shape))
    # An input-sized job's work is unknown until its input is decoded: no ETA to refuse on then.
    known = run_s is not None and work_is_known(spec, shape)
    eta_ms = int(run_s * 1000) if known and run_s is not None else config.unmeasured_eta_ms
    if known and eta_ms > request.deadline_ms:
        return Decline(RefusalReason.DEADLINE, f"ETA {eta_ms} ms > deadline {request.deadline_ms} ms", 0)
    if held >= config.max_jobs:
        return Decline(RefusalReason.BUSY, f"{held} jobs held", max(1000, eta_ms))
    return Offer(row, price, min(eta_ms, MAX_DURATION_MS))


__all__ = ["Decline", "Offer", "WorkerConfig", "decide_quote"]
