"""The requester's side of ``JOB_PROTOCOL``: pick peers, negotiate, check the proof, retry elsewhere.

:func:`run_job` ranks the directory's candidates (``peer_choice``), then tries
them in order within the job's deadline. Each try is one stream driven by
:class:`RequesterNegotiation`; what ends it (refusal, timeout, disconnect, a
receipt or output that does not check out) is recorded as an :class:`Attempt`
and the next candidate gets the job. A result counts only when its receipt
verifies, binds this job, quote and worker, and the bytes received hash to
what the receipt signed. Each try uses a fresh nonce, so each has its own job
id and a worker's receipt can never be replayed into another try.

The model router: a job without a ``model_id`` is bound, per try, to the model
the ranking chose on that peer (the spec sent, the receipt, every
:class:`Attempt` and the :class:`JobOutcome` name it), so the worker runs the
model that was ranked, not one of its own choosing.

This node is a candidate only with ``allow_local`` and a ``local`` worker
(:class:`~lpnode.node.local_jobs.LocalWorker`): that try runs through this
node's own worker over an in-process stream, with the same checks.

Imports nothing from ``lpnode.models``: a requester-only node never loads torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from lpnode.protocol.errors import (
    LpnodeError,
)
from lpnode.protocol.jobs import InputShape, RefusalReason
from lpnode.protocol.jobspec import (
    IMAGE_PNG,
    VIDEO_MP4,
    BlobDescriptor,
    FrameInterpolationParams,
    ImageToImageParams,
    ImageToVideoParams,
    JobSpec,
    OutputExpectation,
    Pipeline,
    TextToImageParams,
    UpscaleParams,
    output_media_type,
)
from lpnode.protocol.receipts import Receipt

from .daemon import Node
from .framing import FramingConfig
from .input_probe import InputUnreadable, input_shape
from .job_try import (
    ACCEPT_IN_ADVANCE_MAX_INPUT_BYTES,
    DEFAULT_QUOTE_TIMEOUT_S,
    DEFAULT_SILENCE_S,
    QUOTE_ABOVE_ADVERT,
    Attempt,
    CandidateTry,
    ProgressCallback,
    TryWatcher,
)
from .peer_choice import (
    DEFAULT_EXPLORE_SHARE,
    Candidate,
    Priority,
    ReputationView,
    describe_offers,
    fit_offers,
    job_mpx_steps,
    rank_candidates,
)
from .spare_streams import SpareStreams
from .transfer import DEFAULT_MAX_TOTAL_BYTES

if TYPE_CHECKING:  # local_jobs imports the worker, and with it torch: only for the annotation
    from .local_jobs import LocalWorker

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # candidates tried per job at most, whatever the deadline allows
# Workers that refused "busy" are asked again, once their advert shows a free slot or their refusal's
# retry_after passed (clamped here), while the deadline allows. Before each round a job waits at least a
# floor that doubles from BUSY_MIN_WAIT_S up to BUSY_MAX_WAIT_S, jittered: a burst of jobs waiting on the
# same full workers (a script's batch through one node) would otherwise all wake at each free slot
# advertised, all but one be refused again, and spend their rounds in seconds (QA: 8 rounds gone 7 s into
# a 120 s deadline). 32 rounds reach ~10 minutes and bound what the record keeps of them.
BUSY_ROUNDS = 32
# Refusals that say "not now" rather than "not this job": the worker is asked again after the wait.
ASK_AGAIN = frozenset({RefusalReason.BUSY, RefusalReason.RATE_LIMITED})
BUSY_MIN_WAIT_S = 0.25
BUSY_MAX_WAIT_S = 30.0
UNBOUNDED_PRICE = 1 << 62  # above any price an advert can make for one job (micro-credits)

Params = TextToImageParams | ImageToImageParams | ImageToVideoParams | UpscaleParams | FrameInterpolationParams


@dataclass(frozen=True)
class JobRequest:
    """What the user asks for, before inputs are hashed into a spec."""

    pipeline: Pipeline
    params: Params
    model_id: str = ""  # "" = the best model of the pipeline on offer
    seed: int = 0


@dataclass(frozen=True)
class JobOutcome:
    spec: JobSpec  # as run: with the router's model_id when the job named none
    job_id: str
    worker_peer_id: str
    model_id: str  # the model that ran it, as the receipt signs it
    price: int  # micro-credits, as quoted and signed
    outputs: tuple[bytes, ...]  # in receipt order, each checked against its signed sha256
    receipt: Receipt
    receipt_bytes: bytes  # as signed, for storage and `lpnode receipt verify`
    attempts: tuple[Attempt, ...]  # every try, the successful one last
    input_shape: InputShape | None = None  # the input's size as declared to the worker, where it sizes the job

    @property
    def work_mpx_steps(self) -> float:
        """The job's work as the worker priced it (``peer_choice.job_mpx_steps``)."""
        return job_mpx_steps(self.spec, self.input_shape)


class JobFailed(LpnodeError):
    """No candidate produced a verified result within the deadline; ``attempts`` says why each failed."""

    def __init__(self, message: str, attempts: Sequence[Attempt] = ()) -> None:
        lines = [f"{a.peer_id[-12:]}: {a.outcome} ({a.detail})" for a in attempts]
        super().__init__(message + ("; attempts: " + "; ".join(lines) if lines else ""))
        self.attempts = tuple(attempts)


PARAMS_REFUSED = "refused:unsupported_params"  # an Attempt's outcome when a worker's model limits refuse the job
INVALID_INPUT = "error:invalid_input"  # ... when its model could not take the input (size, format) it was sent


class ParametersRefused(JobFailed):
    """Every peer asked refused the job's parameters as beyond its model's limits (steps, size, frames ...)."""


class NoCandidates(JobFailed):
    """No known peer serves the job's model/pipeline within ``max_price``; ``offered`` lists what is on offer."""

    def __init__(self, spec: JobSpec, offered: Sequence[str], max_price: int, requirements: str = "") -> None:
        wanted = f"{spec.pipeline} {spec.model_id or '(any model)'}"
        on_offer = ", ".join(offered) or "nothing (no peers known)"
        within = f"max_price {max_price}" + (f", {requirements}" if requirements else "")
        super().__init__(f"no peer offers {wanted} within {within}; the network offers: {on_offer}")
        self.offered = tuple(offered)


class PriceBelowOffers(ParametersRefused):
    """Peers offer the job, but every offer prices it above the request's ``max_price`` (HTTP 422).

    Like parameters beyond every advertised limit, it is the request that cannot be met, told
    before any peer is asked; not a 404: the model is on offer.
    """


class FiltersExcludeOffers(NoCandidates):
    """Peers offer the job within ``max_price``, but the request's own filters (``avoid``, ``min_vram``,
    ``min_reputation`` and bans) leave none of them (HTTP 422, not NoCandidates' 404: the network has
    the model, the request narrows too far)."""

    def __init__(self, spec: JobSpec, peers: Sequence[str], max_price: int, filters: Sequence[str]) -> None:
        shown = ", ".join(peer[-12:] for peer in peers[:8]) + (", ..." if len(peers) > 8 else "")
        JobFailed.__init__(
            self,
            f"{len(peers)} peer(s) offer {spec.pipeline} {spec.model_id or '(any model)'} within max_price "
            f"{max_price} ({shown}), but none passes this request's filters: {'; '.join(filters)}",
        )
        self.offered = tuple(peers)


def _vram_text(size_bytes: int) -> str:
    """``24 GiB`` as a request's ``min_vram_gb`` said it (bytes below one GiB)."""
    if size_bytes < 2**30:
        return f"{size_bytes} bytes"
    return f"{size_bytes / 2**30:.2f}".rstrip("0").rstrip(".") + " GiB"


def media_type_of(name: str, data: bytes) -> str:
    """The media type of an input, from its magic bytes (the spec hashes it in, so guess once, here)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return IMAGE_PNG
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[4:8] == b"ftyp" or name == "video":
        return VIDEO_MP4
    return "application/octet-stream"


def build_spec(job: JobRequest, inputs: Mapping[str, bytes], max_output_bytes: int) -> JobSpec:
    """The spec for ``job`` with descriptors of ``inputs``; ValueError for a bad combination."""
    blobs = tuple(
        BlobDescriptor(name, media_type_of(name, data), len(data), hashlib.sha256(data).hexdigest())
        for name, data in sorted(inputs.items())
    )
    params: dict[str, Any] = {job.pipeline.value.replace("-", "_"): job.params}  # JobSpec checks the pairing
    return JobSpec(
        pipeline=job.pipeline,
        model_id=job.model_id,
        seed=job.seed,
        inputs=blobs,
        output=OutputExpectation(output_media_type(job.pipeline, inputs), max_output_bytes),
        **params,
    )


async def run_job(
    node: Node,
    job: JobRequest,
    inputs: Mapping[str, bytes] | None = None,
    *,
    max_price: int,
    deadline_s: float,
    prefer: Sequence[str] = (),
    avoid: Sequence[str] = (),
    allow_local: bool = False,
    priority: Priority = Priority.SPEED,
    min_vram_bytes: int = 0,
    reputation: ReputationView | None = None,
    min_reputation: float = 0.0,
    local: LocalWorker | None = None,
    rng: random.Random | None = None,
    on_progress: ProgressCallback | None = None,
    max_output_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    framing: FramingConfig | None = None,
    quote_timeout_s: float = DEFAULT_QUOTE_TIMEOUT_S,
    silence_s: float = DEFAULT_SILENCE_S,
    spares: SpareStreams | None = None,
    check_output_size: bool = True,
    offload_checks: bool = True,
    explore_share: float = DEFAULT_EXPLORE_SHARE,
) -> JobOutcome:
    """Get ``job`` done by the best peer that will; raises NoCandidates or JobFailed (with every attempt).

    ``priority``, ``min_vram_bytes``, ``reputation``, ``min_reputation`` and ``explore_share`` shape
    the ranking (``peer_choice``). This node is a candidate only when ``allow_local`` is set
    and ``local`` is this node's worker; otherwise the job always goes to another peer.
    ``spares``: job streams opened ahead (``spare_streams``); a try takes the worker's spare
    if there is one, and has the next one opened while the worker runs the job.
    ``on_progress`` gets each try's progress; a :class:`~.job_try.TryWatcher` also hears each try
    start and end.
    ``check_output_size``: each output must be of the size the job asked for (``output_check``);
    off only where workers are simulated by stand-ins that draw small pictures (``lpnode.simnet``).
    ``offload_checks``: a video output's check runs in a thread; off (on the event loop) only in simulations
    under a virtual clock, which a thread lets jump, so a seeded run would not repeat (``lpnode.simnet``).
    """
    if local is not None and local.peer_id != node.peer_id:
        raise ValueError(f"the local worker is {local.peer_id}, not this node {node.peer_id}")
    if node.peer_id in prefer and not allow_local:
        # ranked without it, the job went elsewhere and the preference was dropped without a word (QA s11)
        raise ParametersRefused(
            f"prefer names this node itself ({node.peer_id}), which runs a job only with allow_local: "
            "add allow_local, or leave this node out of prefer"
        )
    inputs = dict(inputs or {})
    spec = build_spec(job, inputs, max_output_bytes)
    adverts = [record.advert for record in node.directory if record.advert.peer_id != node.peer_id]
    if allow_local and local is not None:
        adverts.append(node.publisher.build())  # the directory never holds our own advert
    # the input's size, read from its header, prices and bounds the jobs it sizes (QuoteRequest.input_shape)
    try:
        shape = input_shape(spec, inputs)
    except InputUnreadable as exc:  # no worker takes such a job undeclared: told before any peer is asked
        raise ParametersRefused(f"{spec.pipeline}: {exc}") from None
    fitting, beyond_limits = fit_offers(adverts, spec, shape)
    wanted = spec.pipeline.value
    if beyond_limits and not any(
        o.pipeline == wanted and (not spec.model_id or o.model_id == spec.model_id) for a in fitting for o in a.models
    ):
        # every offer of this pipeline advertises limits the job exceeds: the request is what is wrong
        raise ParametersRefused(
            f"{spec.pipeline} parameters exceed the advertised limits of every model on offer: "
            + "; ".join(beyond_limits[:8])
        )

    def ranked(price_bound: int, ranking_rng: random.Random, *, include_full: bool = False) -> list[Candidate]:
        return rank_candidates(
            fitting,
            spec,
            max_price=price_bound,
            rng=ranking_rng,
            prefer=prefer,
            avoid=avoid,
            priority=priority,
            min_vram_bytes=min_vram_bytes,
            reputation=reputation,
            min_reputation=min_reputation,
            input_shape=shape,
            include_full=include_full,
            explore_share=explore_share,
        )

    job_rng = rng or random.Random()  # the ranking's exploration and the busy rounds' jitter
    candidates = ranked(max_price, job_rng)
    if not candidates:
        # Every peer that could take it was full when it last advertised: ask them all the same. A full one
        # refuses "busy" with when to ask again, and the busy rounds below wait for its free slot; answering
        # "no peer offers this" was wrong (QA: 48 of a 400-request flood got 404 while two workers served it).
        candidates = ranked(max_price, job_rng, include_full=True)
    if not candidates:
        # the same ranking without the price bound: if it finds peers, max_price alone left none
        if priced := ranked(UNBOUNDED_PRICE, random.Random(0)):
            cheapest = min(priced, key=lambda c: (c.price, c.peer_id))
            raise PriceBelowOffers(
                f"no offer fits max_price {max_price}: the cheapest {spec.pipeline} offer "
                f"({cheapest.model_id} on {cheapest.peer_id[-12:]}) prices this job at {cheapest.price} micro-credits"
            )
        required = [f"min_vram {_vram_text(min_vram_bytes)}"] if min_vram_bytes > 0 else []
        if avoid:
            required.append("avoid " + ", ".join(peer[-12:] for peer in avoid))
        if reputation is not None:
            required.append(f"min_reputation {min_reputation}, banned peers excluded")
        unfiltered = rank_candidates(
            fitting, spec, max_price=max_price, rng=random.Random(0), input_shape=shape, include_full=True
        )
        if unfiltered and required:
            # the model is on offer within the price: the request's own filters left no peer (QA s11: this
            # read "no peer offers X ... the network offers: X", a 404 that contradicted itself)
            raise FiltersExcludeOffers(spec, sorted({c.peer_id for c in unfiltered}), max_price, required)
        raise NoCandidates(spec, describe_offers(adverts), max_price, ", ".join(required))
    attempts: list[Attempt] = []
    started = trio.current_time()
    give_up_at = started + deadline_s

    def new_try(candidate: Candidate, remaining: float, *, take_spare: bool = True) -> CandidateTry:
        # the router's choice is bound into what this peer is asked, so it runs the ranked model
        try_spec = spec if spec.model_id else dataclasses.replace(spec, model_id=candidate.model_id)
        try_ = CandidateTry(
            node,
            candidate,
            try_spec,
            inputs,
            max_price,
            remaining,
            on_progress,
            framing or FramingConfig(),
            input_shape=shape,
        )
        try_.quote_timeout_s, try_.silence_s = quote_timeout_s, silence_s
        try_.local = local if candidate.peer_id == node.peer_id else None
        try_.spares, try_.take_spare = spares, take_spare
        try_.check_output_size = check_output_size
        try_.offload_checks = offload_checks
        return try_

    watcher = on_progress if isinstance(on_progress, TryWatcher) else None

    async def try_one(candidate: Candidate) -> tuple[CandidateTry, tuple[Receipt, tuple[bytes, ...]] | None]:
        number = len(attempts) + 1
        if watcher is not None:
            watcher.try_started(number, candidate.peer_id, candidate.model_id)
        try_ = new_try(candidate, give_up_at - trio.current_time())
        outcome = await try_.run()
        if spares is not None and try_.spare_was_dead() and (remaining := give_up_at - trio.current_time()) > 0:
            # A spare the worker had already closed (it restarted, or waits less than we hold spares)
            # says nothing about the worker: the same candidate again, on a stream opened now.
            spares.note_stale()
            try_ = new_try(candidate, remaining, take_spare=False)
            outcome = await try_.run()
        attempts.append(attempt := try_.attempt())
        if outcome is None:  # the operator sees why a job moved to another peer (or failed)
            log.info(
                "%s try %d on %s failed (%s): %s",
                spec.pipeline,
                number,
                candidate.peer_id[-12:],
                attempt.outcome,
                attempt.detail,
            )
        if watcher is not None:
            watcher.try_ended(number, attempt)
        return try_, outcome

    pending = candidates[:MAX_ATTEMPTS]
    for busy_round in range(BUSY_ROUNDS + 1):
        busy: list[Candidate] = []
        wait_s = BUSY_MAX_WAIT_S
        for candidate in pending:
            if give_up_at - trio.current_time() <= 0:
                break
            try_, outcome = await try_one(candidate)
            if outcome is not None:
                return JobOutcome(
                    spec=try_.machine.request.spec,
                    job_id=try_.machine.job_id,
                    worker_peer_id=candidate.peer_id,
                    model_id=outcome[0].model_id,
                    price=outcome[0].price,
                    outputs=outcome[1],
                    receipt=outcome[0],
                    receipt_bytes=try_.machine.receipt_bytes,
                    attempts=tuple(attempts),
                    input_shape=try_.machine.request.input_shape,
                )
            if (refusal := try_.machine.refusal) is not None and refusal.reason in ASK_AGAIN:
                busy.append(candidate)
                wait_s = min(wait_s, max(BUSY_MIN_WAIT_S, refusal.retry_after_ms / 1000))
        # at most half the time left, so a last ask still fits before the deadline
        wait_s = min(wait_s, (give_up_at - trio.current_time()) / 2)
        if not busy or busy_round == BUSY_ROUNDS or wait_s < BUSY_MIN_WAIT_S:
            break
        # Every other candidate failed for good; a busy one may have room soon. Its advert says when
        # a slot frees (queue depth), and its refusal's retry_after bounds the wait; the floor first.
        floor_s = min(wait_s, BUSY_MAX_WAIT_S, BUSY_MIN_WAIT_S * 2**busy_round) * job_rng.uniform(0.5, 1.0)
        refused_at = {candidate.peer_id: _advert_seq(node, candidate.peer_id) for candidate in busy}
        await trio.sleep(floor_s)
        await _until_capacity(node, refused_at, wait_s - floor_s)
        pending = busy
    refused_params = (PARAMS_REFUSED, INVALID_INPUT)
    if attempts and all(a.outcome in refused_params for a in attempts):
        # every worker asked said its model cannot take these parameters or this input: the request is wrong
        raise ParametersRefused(f"{spec.pipeline} job refused by every peer asked ({len(attempts)})", attempts)
    peers = len({a.peer_id for a in attempts})
    elapsed = trio.current_time() - started
    raise JobFailed(
        f"{spec.pipeline} job failed on {peers} peer(s), {len(attempts)} attempt(s), "
        f"after {elapsed:.1f} s of its {deadline_s:g} s deadline",
        attempts,
    )


def _advert_seq(node: Node, peer: str) -> int:
    record = node.directory.get(peer)
    return -1 if record is None else record.advert.seq


async def _until_capacity(node: Node, refused_at: Mapping[str, int], timeout_s: float) -> None:
    """Return once one of the busy peers advertises a free slot, or after ``timeout_s``.

    ``refused_at``: each peer's advert ``seq`` when it refused. Only a newer advert counts: the one it
    refused under may well show a free slot (adverts lag the queue by a beat), and waking on it would
    shrink every busy round to its floor.
    """
    with trio.move_on_after(timeout_s):
        while True:
            for peer, seq in refused_at.items():
                record = node.directory.get(peer)
                if (
                    record is not None
                    and record.advert.seq > seq
                    and record.advert.queue_depth < record.advert.queue_capacity
                ):
                    return
            await node.directory.wait_changed()


__all__ = [
    "ACCEPT_IN_ADVANCE_MAX_INPUT_BYTES",
    "PARAMS_REFUSED",
    "QUOTE_ABOVE_ADVERT",
    "Attempt",
    "FiltersExcludeOffers",
    "JobFailed",
    "JobOutcome",
    "JobRequest",
    "NoCandidates",
    "ParametersRefused",
    "PriceBelowOffers",
    "Priority",
    "ProgressCallback",
    "ReputationView",
    "TryWatcher",
    "build_spec",
    "run_job",
]
