"""An image-to-image job over the network is priced by its input, and a requester cannot lie about it.

Real tiny-sdxl runs on the in-memory network; the fixtures are ``job_fixtures``'.
"""

from __future__ import annotations

import trio
from lpnode.models.pool import ModelPool
from lpnode.node.job_requester import JobRequest, build_spec, run_job
from lpnode.node.job_worker import WorkerConfig
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.peer_choice import job_price
from lpnode.protocol.jobs import ErrorCode, InputShape, JobError, Quote, QuoteRequest
from lpnode.protocol.jobspec import ImageToImageParams, Pipeline

from .job_fixtures import BOUND_S, MODEL, Peer, ask_by_hand, peers, png, sees_models

I2I = JobRequest(Pipeline.IMAGE_TO_IMAGE, ImageToImageParams("a storm", 0.5, 4, 0.0, ""), MODEL, seed=3)
PRICE = WorkerConfig().price_per_mpx_step


async def test_image_to_image_is_quoted_on_its_input_and_a_smaller_declaration_is_refused(pool: ModelPool) -> None:
    image = png(128, 64)
    spec = build_spec(I2I, {"image": image}, 10**7)
    true_price = job_price(spec, PRICE, InputShape(128, 64, 1))  # 128 × 64 pixels × int(4 × 0.5) steps
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, I2I, {"image": image}, max_price=10_000, deadline_s=BOUND_S)

            # a requester declaring a smaller input than it sends: quoted for the small one, refused on arrival
            lie = QuoteRequest(spec, b"m" * 16, 10_000, 60_000, input_shape=InputShape(16, 16, 1))
            quote, answer = await ask_by_hand(requester, worker, lie, image)
            assert isinstance(quote, Quote)
    assert true_price == 2 and [(a.outcome, a.price) for a in outcome.attempts] == [("done", true_price)]
    assert quote.price == job_price(spec, PRICE, InputShape(16, 16, 1)) == 1
    assert isinstance(answer, JobError) and answer.code is ErrorCode.INVALID_INPUT
    assert "the declared 16x16" in answer.message
    assert worker.worker is not None and worker.worker.completed == 1 and worker.worker.reservations == set()
