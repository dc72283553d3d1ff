"""Ranking candidate peers for a job: pure, seeded, no network."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lpnode.node.peer_choice import (
    COLD_LOAD_S,
    UNMEASURED_RUN_S,
    Candidate,
    Priority,
    describe_offers,
    expected_seconds,
    job_price,
    rank_candidates,
    work_is_known,
)
from lpnode.protocol.advert import CapabilityAdvert, GpuInfo, ModelOffer
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


def advert(
    peer: str, *offers: ModelOffer, depth: int = 0, capacity: int = 4, gpus: tuple[GpuInfo, ...] = ()
) -> CapabilityAdvert:
    return CapabilityAdvert(
        peer_id=peer,
        seq=1,
        issued_at_ms=0,
        expires_at_ms=1000,
        listen_addrs=(f"/memory/{peer}/p2p/{peer}",),
        software_version="0.1.0",
        protocol_version=1,
        gpus=gpus,
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


def test_speed_orders_by_expected_time_with_queue_and_cold_load() -> None:
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
    # asked for, full peers are ranked too (when every peer that could take a job is full, the requester
    # asks them anyway and waits for a free slot rather than answering that nobody offers the job)
    assert set(ranked(adverts, include_full=True)) == {"a", "b", "full"}
    assert ranked([advert("full", offer(), depth=4)], include_full=True) == ["full"]


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


# --- priorities ------------------------------------------------------------------------------------

GIB = 1 << 30


class Reputation:
    """A ReputationView from a table: unknown peers are neutral."""

    def __init__(self, scores: dict[str, float] | None = None, banned: set[str] | None = None) -> None:
        self.scores = scores or {}
        self.banned = banned or set()
        self.asked: list[tuple[str, str]] = []

    def score(self, peer_id: str, model_family: str) -> float:
        self.asked.append((peer_id, model_family))
        return self.scores.get(peer_id, 0.5)

    def is_banned(self, peer_id: str) -> bool:
        return peer_id in self.banned


# one job: 512 × 512 × 4 steps = 1.048576 mpx-steps
MARKET = [
    advert("cheap-slow", offer(speed=0.5, price=10)),  # 2.1 s, 11 µc
    advert("dear-fast", offer(speed=8.0, price=100)),  # 0.13 s, 105 µc
    advert("mid", offer(speed=2.0, price=40)),  # 0.52 s, 42 µc
    advert("cold-cheapest", offer(warm=False, speed=8.0, price=5)),  # 30.1 s, 6 µc
]
TRUST = Reputation({"cheap-slow": 0.9, "dear-fast": 0.5, "mid": 0.7, "cold-cheapest": 0.5})


@pytest.mark.parametrize(
    ("priority", "reputation", "order"),
    [
        (Priority.SPEED, None, ["dear-fast", "mid", "cheap-slow", "cold-cheapest"]),
        (Priority.COST, None, ["cold-cheapest", "cheap-slow", "mid", "dear-fast"]),
        (Priority.TRUST, None, ["dear-fast", "mid", "cheap-slow", "cold-cheapest"]),  # all neutral: speed decides
        (Priority.TRUST, TRUST, ["cheap-slow", "mid", "dear-fast", "cold-cheapest"]),
        (Priority.COST, TRUST, ["cold-cheapest", "cheap-slow", "mid", "dear-fast"]),  # price first still
        # time to a *verified* result: 0.13/0.5 = 0.26 s < 0.52/0.7 = 0.75 s < 2.1/0.9 = 2.3 s
        (Priority.SPEED, TRUST, ["dear-fast", "mid", "cheap-slow", "cold-cheapest"]),
    ],
)
def test_each_priority_gives_its_documented_order(
    priority: Priority, reputation: Reputation | None, order: list[str]
) -> None:
    assert ranked(MARKET, priority=priority, reputation=reputation) == order


def test_a_poor_reputation_costs_a_fast_peer_its_lead_under_speed() -> None:
    # to a verified result: mid 0.52 s / 0.5 = 1.05 s, dear-fast 0.13 s / 0.05 = 2.6 s, cheap-slow 2.1 s / 0.5 = 4.2 s
    poor = Reputation({"dear-fast": 0.05})
    assert ranked(MARKET, reputation=poor)[:3] == ["mid", "dear-fast", "cheap-slow"]


def test_priority_accepts_its_string_value() -> None:
    assert ranked(MARKET, priority="cost") == ranked(MARKET, priority=Priority.COST)


def test_expected_time_counts_queue_cold_load_and_unmeasured_speed() -> None:
    assert expected_seconds(4.0, speed=2.0, warm=True, queue_depth=0) == 2.0
    assert expected_seconds(4.0, speed=2.0, warm=True, queue_depth=3) == 8.0  # three like ours ahead
    assert expected_seconds(4.0, speed=2.0, warm=False, queue_depth=0) == 2.0 + COLD_LOAD_S
    assert expected_seconds(4.0, speed=0.0, warm=True, queue_depth=0) == UNMEASURED_RUN_S
    (only,) = rank_candidates([advert("a", offer(speed=2.0), depth=1)], spec(), max_price=10**9, rng=random.Random())
    assert only.expected_s == pytest.approx(2 * 1.048576 / 2.0)


def test_the_model_router_picks_per_priority_and_keeps_one_entry_per_peer() -> None:
    adverts = [advert("a", offer("fast-dear", speed=8.0, price=100), offer("slow-cheap", speed=1.0, price=1))]
    assert [(c.peer_id, c.model_id) for c in rank(adverts, spec(model_id=""), Priority.SPEED)] == [("a", "fast-dear")]
    assert [(c.peer_id, c.model_id) for c in rank(adverts, spec(model_id=""), Priority.COST)] == [("a", "slow-cheap")]
    # a model over max_price is not routed to; the peer still serves the job with the other one
    capped = rank(adverts, spec(model_id=""), Priority.SPEED, max_price=50)
    assert [(c.peer_id, c.model_id) for c in capped] == [("a", "slow-cheap")]


def rank(adverts: list[CapabilityAdvert], job: JobSpec, priority: Priority, max_price: int = 10**9) -> list[Candidate]:
    return rank_candidates(
        adverts, job, max_price=max_price, rng=random.Random(0), explore_share=0.0, priority=priority
    )


# --- requirements and reputation -------------------------------------------------------------------


def gpu(vram_gib: int, kind: str = "cuda") -> GpuInfo:
    return GpuInfo(f"{kind} device", kind, vram_gib * GIB, vram_gib * GIB // 2)


def test_min_vram_keeps_peers_with_one_large_enough_gpu() -> None:
    adverts = [
        advert("cpu-only", offer(speed=9.0), gpus=(GpuInfo("cpu: x", "cpu", 0, 0),)),
        advert("no-devices", offer(speed=9.0)),
        advert("small", offer(speed=5.0), gpus=(gpu(8),)),
        advert("two-small-one-big", offer(speed=1.0), gpus=(gpu(8), gpu(24))),
        advert("exactly", offer(speed=2.0), gpus=(gpu(16),)),
    ]
    assert ranked(adverts, min_vram_bytes=16 * GIB) == ["exactly", "two-small-one-big"]  # total VRAM, not free
    assert ranked(adverts, min_vram_bytes=1) == ["small", "exactly", "two-small-one-big"]
    assert len(ranked(adverts)) == 5  # no requirement: CPU peers serve too


def test_banned_peers_are_never_chosen_not_even_when_preferred_or_explored() -> None:
    adverts = [advert(f"p{i}", offer(speed=5.0 - i)) for i in range(4)]
    view = Reputation(banned={"p0", "p2"})
    assert ranked(adverts, reputation=view, prefer=["p0"]) == ["p1", "p3"]
    for seed in range(200):
        assert set(ranked(adverts, reputation=view, rng=random.Random(seed), explore_share=1.0)) == {"p1", "p3"}


def test_min_reputation_drops_low_scores_and_unknown_peers_are_neutral() -> None:
    adverts = [advert("known-good", offer()), advert("known-bad", offer()), advert("newcomer", offer())]
    view = Reputation({"known-good": 0.8, "known-bad": 0.2})
    assert set(ranked(adverts, reputation=view, min_reputation=0.3)) == {"known-good", "newcomer"}
    assert ranked(adverts, reputation=view, min_reputation=0.6) == ["known-good"]
    assert set(ranked(adverts, min_reputation=0.5)) == set(ranked(adverts))  # no view: everyone neutral
    assert ("known-good", "m") in view.asked  # scored per peer and advertised model
    with pytest.raises(ValueError, match="min_reputation"):
        ranked(adverts, min_reputation=1.5)


def test_a_score_out_of_range_is_clamped() -> None:
    adverts = [advert("a", offer(speed=1.0)), advert("b", offer(speed=1.0))]
    (first, *_) = rank_candidates(
        adverts,
        spec(),
        max_price=10**9,
        rng=random.Random(0),
        explore_share=0.0,
        priority=Priority.TRUST,
        reputation=Reputation({"a": 7.0, "b": 0.9}),
    )
    assert (first.peer_id, first.reputation) == ("a", 1.0)


@pytest.mark.parametrize("priority", list(Priority))
def test_prefer_and_avoid_hold_under_every_priority(priority: Priority) -> None:
    order = ranked(MARKET, priority=priority, reputation=TRUST, prefer=["cold-cheapest"], avoid=["mid"])
    assert order[0] == "cold-cheapest" and "mid" not in order and len(order) == 3


def test_exploration_keeps_its_share_under_every_priority_and_never_jumps_a_preferred_peer() -> None:
    adverts = [advert(f"p{i}", offer(speed=10.0 - i, price=10 + i)) for i in range(5)]
    for priority in Priority:
        firsts = Counter(
            ranked(adverts, rng=random.Random(seed), explore_share=0.2, priority=priority)[0] for seed in range(500)
        )
        assert 360 <= firsts["p0"] <= 440  # ~80% exploit (p0 is fastest and cheapest)
        assert set(firsts) == {"p0", "p1", "p2", "p3", "p4"}
    preferred = {ranked(adverts, rng=random.Random(s), explore_share=1.0, prefer=["p4"])[0] for s in range(50)}
    assert preferred == {"p4"}


offers_st = st.builds(
    offer,
    st.sampled_from(["m", "n"]),
    warm=st.booleans(),
    speed=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
    price=st.integers(0, 300),
)
adverts_st = st.lists(
    st.builds(
        lambda i, offers, depth: advert(f"p{i}", *offers, depth=depth, capacity=8),
        st.integers(0, 20),
        st.lists(offers_st, min_size=1, max_size=3),
        st.integers(0, 8),
    ),
    max_size=8,
    unique_by=lambda a: a.peer_id,
)


@settings(max_examples=150, deadline=None)
@given(adverts_st, st.sampled_from(list(Priority)), st.integers(0, 400), st.sampled_from(["", "m"]))
def test_ranking_invariants(adverts: list[CapabilityAdvert], priority: Priority, max_price: int, model: str) -> None:
    job = spec(model_id=model)
    got = rank_candidates(adverts, job, max_price=max_price, rng=random.Random(0), explore_share=0.0, priority=priority)
    assert len({c.peer_id for c in got}) == len(got)  # one entry per peer
    assert all(c.price <= max_price and c.queue_depth < c.queue_capacity for c in got)
    assert all(not model or c.model_id == model for c in got)
    # the key each priority optimises never gets worse down the list
    if priority is Priority.COST:
        assert [c.price for c in got] == sorted(c.price for c in got)
    else:
        assert [c.expected_s for c in got] == sorted(c.expected_s for c in got)
    # exactly the peers with an affordable offer for the job and room in the queue; the router
    # (no model named) only among the models two or more of those serve, when there are any
    offers = {
        (a.peer_id, o.model_id)
        for a in adverts
        if a.queue_depth < a.queue_capacity
        for o in a.models
        if o.pipeline == T2I
        and (not model or o.model_id == model)
        and job_price(job, o.price_per_mpx_step) <= max_price
    }
    checkable = {m for _, m in offers if sum(1 for _, n in offers if n == m) >= 2} if not model else set()
    assert {c.peer_id for c in got} == {peer for peer, m in offers if not checkable or m in checkable}


def test_the_router_picks_a_model_a_spot_check_can_compare() -> None:
    """A model one peer alone advertises (any peer can name one) gets no job that left the model open,
    however cheap: no other peer could ever check it (QA3 Q2). Named, or its peer preferred, it runs."""
    adverts = [
        advert("a", offer("m", price=50)),
        advert("b", offer("m", price=60)),
        advert("z", offer("fake", price=1)),
    ]
    cheapest = {"max_price": 10**6, "rng": random.Random(0), "explore_share": 0.0, "priority": Priority.COST}
    assert [(c.peer_id, c.model_id) for c in rank_candidates(adverts, spec(model_id=""), **cheapest)] == [
        ("a", "m"),
        ("b", "m"),
    ]
    assert [c.peer_id for c in rank_candidates(adverts, spec(model_id="fake"), **cheapest)] == ["z"]
    preferred = rank_candidates(adverts, spec(model_id=""), prefer=["z"], **cheapest)
    assert [(c.peer_id, c.model_id) for c in preferred] == [("z", "fake"), ("a", "m"), ("b", "m")]
    alone = [advert("a", offer("m", price=50)), advert("z", offer("fake", price=1))]  # nothing is checkable
    assert [c.peer_id for c in rank_candidates(alone, spec(model_id=""), **cheapest)] == ["z", "a"]
