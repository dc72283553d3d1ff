"""The worker's quote decision, pure: rows and config in, an offer or a typed refusal out."""

from __future__ import annotations

from dataclasses import replace

from lpnode.models.base import PipelineKind
from lpnode.models.pool import ModelStatus
from lpnode.node.job_quote import Decline, Offer, WorkerConfig, decide_quote
from lpnode.protocol.jobs import QuoteRequest, RefusalReason
from lpnode.protocol.jobspec import JobSpec, OutputExpectation, Pipeline, TextToImageParams

ROW = ModelStatus(
    name="tiny-sdxl",
    model_id="lpnode/tiny-sdxl",
    pipelines=(PipelineKind.TEXT_TO_IMAGE, PipelineKind.IMAGE_TO_IMAGE),
    weights_sha256="ab" * 32,
    warm=True,
    pinned=True,
    loading=False,
    compiled=(),
    vram_estimate_bytes=0,
    vram_measured_bytes=None,
    speed_mpx_steps_per_s=0.0,
    queued=0,
    running=0,
    problem="",
)


def request(
    model_id: str = "lpnode/tiny-sdxl", side: int = 64, steps: int = 2, max_price: int = 10_000
) -> QuoteRequest:
    spec = JobSpec(
        pipeline=Pipeline.TEXT_TO_IMAGE,
        model_id=model_id,
        seed=1,
        inputs=(),
        output=OutputExpectation("image/png", 10**7),
        text_to_image=TextToImageParams("a cat", side, side, steps, 0.0, ""),
    )
    return QuoteRequest(spec, b"n" * 16, max_price, 60_000)


def refusal(decision: Offer | Decline) -> RefusalReason:
    assert isinstance(decision, Decline), decision
    return decision.reason


def test_a_served_model_within_limits_gets_an_offer() -> None:
    decision = decide_quote(request(), [ROW], WorkerConfig(), held=0)
    assert isinstance(decision, Offer) and decision.row is ROW and decision.price == 1
    assert decision.eta_ms == WorkerConfig().unmeasured_eta_ms  # speed not measured yet


def test_an_empty_model_id_routes_to_the_warm_fastest_model() -> None:
    cold = replace(ROW, name="other", model_id="x/other", warm=False, speed_mpx_steps_per_s=99.0)
    fast = replace(ROW, speed_mpx_steps_per_s=5.0)
    decision = decide_quote(request(model_id=""), [cold, fast], WorkerConfig(), held=0)
    assert isinstance(decision, Offer) and decision.row is fast


def test_every_refusal_is_typed_and_comes_before_any_reservation() -> None:
    cfg = WorkerConfig(max_jobs=2)
    assert refusal(decide_quote(request(model_id="nope"), [ROW], cfg, held=0)) is RefusalReason.UNKNOWN_MODEL
    upscaler = replace(ROW, pipelines=(PipelineKind.UPSCALE,))
    assert refusal(decide_quote(request(), [upscaler], cfg, held=0)) is RefusalReason.UNSUPPORTED_PIPELINE
    assert refusal(decide_quote(request(side=512), [ROW], cfg, held=0)) is RefusalReason.UNSUPPORTED_PARAMS  # max 256
    assert refusal(decide_quote(request(steps=51), [ROW], cfg, held=0)) is RefusalReason.UNSUPPORTED_PARAMS
    assert refusal(decide_quote(request(max_price=0), [ROW], cfg, held=0)) is RefusalReason.PRICE
    slow = replace(ROW, speed_mpx_steps_per_s=1e-6)
    assert refusal(decide_quote(request(), [slow], cfg, held=0)) is RefusalReason.DEADLINE
    busy = decide_quote(request(), [ROW], cfg, held=2)
    assert refusal(busy) is RefusalReason.BUSY and isinstance(busy, Decline) and busy.retry_after_ms >= 1000
    unhashed = replace(ROW, weights_sha256="")
    assert refusal(decide_quote(request(), [unhashed], cfg, held=0)) is RefusalReason.OTHER


def test_the_eta_is_the_models_fixed_cost_plus_the_work_at_its_marginal_speed() -> None:
    # 256x256, 50 steps = 3.28 megapixel-steps; a model that spends 0.03 s per run and 2.5 mpx-steps/s
    row = replace(ROW, speed_mpx_steps_per_s=2.5, overhead_s=0.03)
    big = replace(request(side=256, steps=50), deadline_ms=5_000)
    offer = decide_quote(big, [row], WorkerConfig(), held=0)
    assert isinstance(offer, Offer) and offer.eta_ms == int((0.03 + 256 * 256 * 50 / 1e6 / 2.5) * 1000)
    # measured as work ÷ time on small jobs alone (~0.24), the same job looked 13.7 s long: refused, wrongly
    assert refusal(decide_quote(big, [replace(ROW, speed_mpx_steps_per_s=0.24)], WorkerConfig(), held=0)) is (
        RefusalReason.DEADLINE
    )


def test_a_model_that_cannot_load_is_refused_for_what_it_is_not_retried() -> None:
    pending = replace(ROW, weights_sha256="")
    missing = replace(ROW, weights_sha256="", warm=False, problem="weights for preset 'x' are missing")
    waiting = decide_quote(request(), [pending], WorkerConfig(), held=0)
    assert isinstance(waiting, Decline) and "not hashed yet" in waiting.message and waiting.retry_after_ms > 0
    lost = decide_quote(request(), [missing], WorkerConfig(), held=0)
    # it said "not hashed yet" and "retry in 5 s" before, which waiting would never cure (QA)
    assert isinstance(lost, Decline) and lost.retry_after_ms == 0
    assert lost.message == "lpnode/tiny-sdxl cannot run here: weights for preset 'x' are missing"
