"""Ranking candidate peers for a job: pure, seeded, no network."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from lpnode.node.peer_choice import describe_offers, job_price, rank_candidates, work_is_known
from lpnode.protocol.advert import CapabilityAdvert, ModelOffer
from lpnode.protocol.jobspec import (
    BlobDescriptor,
    JobSpec,
    OutputExpectation,
    Pipeline,
    TextToImageParams,
    UpscaleParams,
)

T2I = "text-to-image"


def spec(model_id: str = "m", width: int = 512, steps: int = 4) -> JobSpec:
    return JobSpec(
        pipeline=Pipeline.TEXT_TO_IMAGE,
        model_id=model_id,
        seed=1,
        inputs=(),
        output=OutputExpectation("image/png", 10**7),
        text_to_image=TextToImageParams("a cat", width, width, steps, 0.0, ""),
    )


def offer(
    model_id: str = "m", *, warm: bool = True, speed: float = 1.0, price: int = 10, pipeline: str = T2I
) -> ModelOffer:
    return ModelOffer(pipeline, model_id, "0" * 64, warm, speed, price)


def advert(peer: str, *offers: ModelOffer, depth: int = 0, capacity: int = 4) -> CapabilityAdvert:
    return CapabilityAdvert(
        peer_id=peer,
        seq=1,
        issued_at_ms=0,
        expires_at_ms=1000,
        listen_addrs=(f"/memory/{peer}/p2p/{peer}",),
        software_version="0.1.0",
        protocol_version=1,
        gpus=(),
        models=offers,
        queue_depth=depth,
        queue_capacity=capacity,
    )


def ranked(adverts: list[CapabilityAdvert], job: JobSpec | None = None, **kw: object) -> list[str]:
    options: dict[str, object] = {"max_price": 10**9, "rng": random.Random(0), "explore_share": 0.0} | kw
    return [c.peer_id for c in rank_candidates(adverts, job or spec(), **options)]  # type: ignore[arg-type]


def test_price_follows_the_advert_formula() -> None:
    # 512 × 512 × 4 steps = 1.048576 megapixel-steps
    assert job_price(spec(), 100) == 105
    assert job_price(spec(width=64, steps=2), 0) == 0


def test_only_peers_serving_the_model_and_pipeline_within_price() -> None:
    adverts = [
        advert("a", offer("m")),
        advert("b", offer("other")),
        advert("c", offer("m", pipeline="upscale")),
        advert("d", offer("m", price=1000)),  # 1049 micro-credits for this job
    ]
    assert ranked(adverts, max_price=500) == ["a"]
    assert ranked(adverts, max_price=2000) == ["a", "d"]


def test_empty_model_id_routes_to_any_model_of_the_pipeline_preferring_warm_and_fast() -> None:
    adverts = [advert("a", offer("slow", speed=1.0), offer("fast", speed=5.0)), advert("b", offer("x", warm=False))]
    candidates = rank_candidates(adverts, spec(model_id=""), max_price=10**9, rng=random.Random(0), explore_share=0.0)
    assert [(c.peer_id, c.model_id) for c in candidates] == [("a", "fast"), ("b", "x")]


def test_warm_first_then_speed_per_queued_job_then_price() -> None:
    adverts = [
        advert("cold-fast", offer(warm=False, speed=100.0)),
        advert("warm-slow", offer(speed=1.0)),
        advert("warm-fast-busy", offer(speed=4.0), depth=4, capacity=8),  # 4 / (1 + 4) < 1
        advert("warm-fast", offer(speed=4.0)),
        advert("warm-unmeasured", offer(speed=0.0)),
    ]
    assert ranked(adverts) == ["warm-fast", "warm-slow", "warm-fast-busy", "warm-unmeasured", "cold-fast"]


def test_full_peers_are_skipped_and_prefer_avoid_are_honoured() -> None:
    adverts = [advert("a", offer(speed=9.0)), advert("b", offer(speed=1.0)), advert("full", offer(), depth=4)]
    assert ranked(adverts) == ["a", "b"]
    assert ranked(adverts, prefer=["b"]) == ["b", "a"]
    assert ranked(adverts, avoid=["a"]) == ["b"]


def test_exploration_is_a_small_seeded_share() -> None:
    adverts = [advert(f"p{i}", offer(speed=10.0 - i)) for i in range(5)]
    firsts = Counter(
        ranked(adverts, rng=random.Random(seed), explore_share=0.1)[0]
        for seed in range(1000)  # type: ignore[arg-type]
    )
    assert 820 <= firsts["p0"] <= 960  # ~90% exploit
    assert set(firsts) == {"p0", "p1", "p2", "p3", "p4"}  # every other peer gets a turn
    # same seed, same ranking
    assert ranked(adverts, rng=random.Random(3), explore_share=0.5) == ranked(
        adverts, rng=random.Random(3), explore_share=0.5
    )


def test_explore_share_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="explore_share"):
        ranked([advert("a", offer())], explore_share=2.0)


def test_describe_offers_lists_what_the_network_has() -> None:
    adverts = [advert("a", offer("m"), offer("u", pipeline="upscale")), advert("b", offer("m"))]
    assert describe_offers(adverts) == ["text-to-image m", "upscale u"]


def test_input_sized_jobs_are_priced_at_one_mpx_step_and_say_their_work_is_unknown() -> None:
    upscale = JobSpec(
        pipeline=Pipeline.UPSCALE,
        model_id="",
        seed=0,
        inputs=(BlobDescriptor("image", "image/png", 10, "0" * 64),),
        output=OutputExpectation("image/png", 10**7),
        upscale=UpscaleParams(2),
    )
    assert job_price(upscale, 100) == 100
    assert not work_is_known(upscale) and work_is_known(spec())
