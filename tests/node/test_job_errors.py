"""A job that fails inside the worker ends with a typed JobError on the stream, never a bare close.

In-memory network, a real tiny preset; the requester side is :func:`run_job`, so the test also
checks what the requester makes of it (an attempt ``error:<code>``, not ``disconnected``).
"""

from __future__ import annotations

import pytest
import trio
from lpnode.models.pool import ModelPool
from lpnode.node.job_requester import JobRequest, ParametersRefused, build_spec, run_job
from lpnode.node.network.memory import open_memory_hub
from lpnode.protocol.jobs import ErrorCode, InputShape, JobError, Quote, QuoteRequest
from lpnode.protocol.jobspec import ImageToImageParams, Pipeline

from .job_fixtures import BOUND_S, MODEL, Peer, ask_by_hand, peers, sees_models

NOT_AN_IMAGE = b"\x89PNG\r\n\x1a\n junk, not an image"  # PNG magic, then junk


async def test_an_input_the_model_cannot_read_is_answered_with_invalid_input(pool: ModelPool) -> None:
    i2i = JobRequest(Pipeline.IMAGE_TO_IMAGE, ImageToImageParams("a storm", 0.5, 2, 0.0, ""), MODEL, seed=3)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with trio.fail_after(BOUND_S):
            # run_job reads the input's size to declare it (workers price on it): refused before any peer is asked
            with pytest.raises(ParametersRefused, match="not a readable image") as refused:
                await run_job(requester.node, i2i, {"image": NOT_AN_IMAGE}, max_price=10_000, deadline_s=BOUND_S)
            assert refused.value.attempts == ()
            # a requester that declares a size its bytes do not have: the worker's model says what is wrong
            spec = build_spec(i2i, {"image": NOT_AN_IMAGE}, 10**7)
            declared = QuoteRequest(spec, b"d" * 16, 10_000, 60_000, input_shape=InputShape(32, 32, 1))
            quote, answer = await ask_by_hand(requester, worker, declared, NOT_AN_IMAGE)
            assert isinstance(quote, Quote)
    assert isinstance(answer, JobError) and answer.code is ErrorCode.INVALID_INPUT, answer
    assert "image" in answer.message
    assert worker.worker is not None and worker.worker.reservations == set() and worker.worker.completed == 0
