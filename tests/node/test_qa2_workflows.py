"""QA pass 2 (O1, O7): a workflow's job options reach every step, its max_price is a budget, its deadline a clock.

The steps run on the in-memory network with real tiny presets. The trio clock is a
MockClock running at real speed that a runner around the real one jumps forward
between steps, so the time a step loses to the one before is known without sleeping.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from fastapi.exceptions import RequestValidationError
from lpnode.models.pool import ModelPool, PoolConfig, open_model_pool
from lpnode.node.cli_workflow import save_paid_receipts
from lpnode.node.client import LpnodeClient
from lpnode.node.daemon import Node
from lpnode.node.job_book import MemoryRecordBook
from lpnode.node.job_manager import open_job_manager
from lpnode.node.job_requester import JobOutcome, JobRequest, ProgressCallback
from lpnode.node.job_runner import requester_runner
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import create_app, status_for
from lpnode.node.rpc_job_bodies import JobOptions
from lpnode.node.rpc_jobs import OutputStore
from lpnode.node.workflows import plan_workflow
from lpnode.protocol.peer_id import peer_id_from_public_key
from lpnode.protocol.receipts import verify_receipt

from .job_fixtures import Peer, peers, png, sees_models
from .test_gossip import virtual_wall_clock
from .test_rpc_jobs import AUTH

T2I = {"pipeline": "text-to-image", "params": {"prompt": "a lighthouse", "width": 32, "height": 32}}
T2I_FAST = T2I | {"params": T2I["params"] | {"num_inference_steps": 2, "seed": 3}}
UPSCALE = {"pipeline": "upscale", "params": {"scale": 2}}
DEADLINE_S = 50.0
AfterStep = Callable[[JobOptions], None]


@pytest.fixture
async def pool2() -> AsyncIterator[ModelPool]:
    models = ("tiny-sdxl", "tiny-realesrgan")
    async with open_model_pool(PoolConfig(serve=models, pinned=models, device="cpu")) as pool:
        yield pool


@asynccontextmanager
async def workflow_client(
    node: Node, seen: list[JobOptions], after_step: list[AfterStep]
) -> AsyncIterator[httpx.AsyncClient]:
    """An RPC client whose runner is the real one, noting each step's options and then calling ``after_step``."""
    async with (
        workflow_transport(node, seen, after_step) as transport,
        httpx.AsyncClient(transport=transport, base_url="http://node") as client,
    ):
        yield client


@asynccontextmanager
async def workflow_transport(
    node: Node, seen: list[JobOptions], after_step: list[AfterStep]
) -> AsyncIterator[httpx.ASGITransport]:
    """The node's RPC app, as ``workflow_client`` talks to it (for another client: the CLI's)."""
    real = requester_runner(node)

    async def runner(
        job: JobRequest, inputs: Mapping[str, bytes], options: JobOptions, on_progress: ProgressCallback
    ) -> JobOutcome:
        seen.append(options)
        outcome = await real(job, inputs, options, on_progress)
        for hook in after_step:
            hook(options)
        return outcome

    async with open_job_manager(MemoryRecordBook(), OutputStore(), runner, status_for=status_for) as jobs:
        yield httpx.ASGITransport(app=create_app(node, "t", jobs=jobs))


async def test_a_workflows_options_reach_its_steps_with_the_budget_and_time_left(
    pool2: ModelPool, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.rate = 1.0  # real speed (gossip and the runs need time to pass); jumps come on top
    seen: list[JobOptions] = []
    after_step: list[AfterStep] = []
    options = {
        "deadline": DEADLINE_S,
        "priority": "cost",
        "verification": "none",
        "min_reputation": 0.0,
        "min_vram_gb": 0.0,
        "prefer": [],
        "allow_local": False,
    }
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool2)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        avoid = [peer_id_from_public_key(b"\x09" * 32)]  # a peer id no node here has

        async def post(body: dict[str, Any]) -> httpx.Response:
            return await client.post("/v1/workflows", json=body, headers=AUTH)

        async with workflow_client(requester.node, seen, after_step) as client:
            # 1. the whole chain, with time passing during step 1
            after_step.append(lambda _: mock_clock.jump(10.0))
            rich = await post({"steps": [T2I_FAST, UPSCALE], "max_price": 10_000, "avoid": avoid} | options)
            assert rich.status_code == 200, rich.text
            prices = [job["price"] for job in rich.json()["jobs"]]
            steps = [(await client.get(f"/v1/jobs/{s}", headers=AUTH)).json() for s in rich.json()["steps"]]
            after_step.clear()
            # 2. the workflow's own max_price below the first step's price: refused as /text-to-image would be
            broke = await post({"steps": [T2I_FAST, UPSCALE], "max_price": 0} | options)
            # 3. what step 1 leaves is one micro-credit short of step 2's price
            short = await post({"steps": [T2I_FAST, UPSCALE], "max_price": sum(prices) - 1} | options)
            # 4. step 1 uses up the whole deadline: step 2 never starts
            after_step.append(lambda step: mock_clock.jump(step.deadline))
            late = await post({"steps": [T2I_FAST, UPSCALE], "max_price": 10_000} | options)
            after_step.clear()
            # 5. avoiding the only worker leaves step 1 without a peer (avoid used to be ignored)
            avoided = await post({"steps": [T2I_FAST], "avoid": [worker.peer_id]} | options)

    # every step ran with the workflow's options; max_price as the budget left, deadline as the time left
    first, second = seen[0].model_dump(), seen[1].model_dump()
    assert first == options | {"max_price": 10_000, "avoid": avoid, "deadline": pytest.approx(DEADLINE_S, abs=1)}
    # step 1's run took a moment of real time besides the 10 s jump
    assert second == first | {"max_price": 10_000 - prices[0], "deadline": pytest.approx(DEADLINE_S - 10, abs=5)}
    assert second["deadline"] <= first["deadline"] - 10
    # ... and each step's record says so
    assert [s["request"]["max_price"] for s in steps] == [10_000, 10_000 - prices[0]]
    assert [s["request"]["deadline"] for s in steps] == [first["deadline"], second["deadline"]]
    assert all(s["request"]["verification"] == "none" and s["request"]["avoid"] == avoid for s in steps)
    assert steps[0]["request"]["prompt"] == "a lighthouse" and steps[1]["request"]["scale"] == 2

    assert broke.status_code == 422, broke.text
    assert broke.json()["error"] == "price_below_offers"
    assert broke.json()["message"].startswith("step 1 (text-to-image): no offer fits max_price 0")

    assert short.status_code == 422, short.text
    assert short.json()["error"] == "workflow_budget_spent"
    assert short.json()["message"].startswith(
        f"step 2 (upscale): the earlier steps spent {prices[0]} of the workflow's max_price {sum(prices) - 1}, "
        f"and the {prices[1] - 1} micro-credits left do not cover it"
    )

    assert late.status_code == 503, late.text
    assert late.json()["error"] == "workflow_deadline_passed"
    assert late.json()["message"].startswith("step 2 (upscale) not started: the workflow's deadline of 50.0 s passed")

    assert avoided.status_code == 422, avoided.text
    assert avoided.json()["message"].startswith("step 1 (text-to-image): 1 peer(s) offer text-to-image")


def _refused(body: dict[str, Any]) -> str:
    with pytest.raises(RequestValidationError) as caught:
        plan_workflow(body, 1 << 20)
    return str(caught.value.errors()[0]["msg"])


def test_a_workflows_422s_count_steps_from_1_as_the_cli_does() -> None:
    image = base64.b64encode(png(8, 8)).decode()
    assert _refused({"steps": [T2I], "input": image}).startswith("step 1 (text-to-image) takes no input file")
    assert _refused({"steps": [UPSCALE]}).startswith("step 1 (upscale) needs an image or a video")
    assert _refused({"steps": [T2I, T2I]}) == "step 2 (text-to-image) takes no input, so it cannot follow step 1"
    bad_width = {"pipeline": "text-to-image", "params": {"prompt": "x", "width": 33}}
    assert _refused({"steps": [bad_width]}).startswith("step 1 (text-to-image): width:")
    options_in_step = T2I | {"params": {"prompt": "x", "max_price": 1}}
    assert _refused({"steps": [options_in_step]}).startswith("step 1 (text-to-image): job options ['max_price']")


async def test_a_workflow_that_runs_out_of_budget_leaves_the_receipts_of_the_steps_it_paid_for(
    pool2: ModelPool, tmp_path: Path
) -> None:
    # QA: the CLI saved no receipt for the steps a failed workflow had run and paid for
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool2)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with (
            workflow_transport(requester.node, [], []) as transport,
            httpx.AsyncClient(transport=transport, base_url="http://node") as http,
            LpnodeClient("http://node", "t", data_dir=tmp_path, transport=transport) as client,
        ):
            with trio.fail_after(60):
                rich = await http.post("/v1/workflows", json={"steps": [T2I_FAST, UPSCALE]}, headers=AUTH)
                prices = [job["price"] for job in rich.json()["jobs"]]
                body = {"steps": [T2I_FAST, UPSCALE], "max_price": sum(prices) - 1}
                accepted = await http.post("/v1/workflows", json=body, headers=AUTH | {"Prefer": "respond-async"})
                async for event in client.job_events(accepted.json()["id"]):
                    if event.name == "done":
                        assert event.data["state"] == "failed"  # step 2 did not fit what was left
                lines = await save_paid_receipts(client, accepted.json()["id"], tmp_path / "out.png")
    saved = tmp_path / "out.png.step-1.receipt"  # as a finished workflow names step 1's (QA: it was .receipt-0)
    assert lines == [f"lpnode: paid for step 1 (text-to-image): receipt {saved}"]
    receipt = verify_receipt(saved.read_bytes())
    assert receipt.spec.pipeline == "text-to-image" and receipt.price == prices[0]
    assert not (tmp_path / "out.png.step-2.receipt").exists()
