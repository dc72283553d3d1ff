"""Workflows: the chain checked before anything runs, then each step a child record on the network."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import numpy as np
import pytest
import trio
from fastapi.exceptions import RequestValidationError
from lpnode.models.outputs import decode_video_bytes, encode_mp4
from lpnode.models.pool import ModelPool
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.workflows import MAKES, plan_workflow
from lpnode.protocol.jobspec import Pipeline, UpscaleParams
from lpnode.protocol.receipts import verify_receipt

from .job_fixtures import BOUND_S, Peer, peers, png, sees_models
from .test_rpc_jobs import AUTH, pool4, rpc

__all__ = ["pool4"]

T2I = {"pipeline": "text-to-image", "params": {"prompt": "a lighthouse", "width": 32, "height": 32}}
UPSCALE = {"pipeline": "upscale", "params": {"scale": 2}}
I2V = {"pipeline": "image-to-video", "params": {"width": 64, "height": 64, "num_frames": 4, "fps": 4}}
INTERPOLATE = {"pipeline": "frame-interpolation", "params": {"multiplier": 2}}
I2I = {"pipeline": "image-to-image", "params": {"prompt": "x", "strength": 0.5}}


def rejected(body: dict[str, Any]) -> str:
    with pytest.raises(RequestValidationError) as caught:
        plan_workflow(body, 1 << 20)
    return str(caught.value.errors())


def test_a_chain_whose_media_fit_is_planned_with_each_steps_checked_body() -> None:
    plan = plan_workflow({"steps": [T2I, UPSCALE, I2V, INTERPOLATE], "max_price": 7}, 1 << 20)
    assert [type(b).__name__ for b in plan.bodies] == [
        "TextToImageBody",
        "UpscaleBody",
        "ImageToVideoBody",
        "FrameInterpolationBody",
    ]
    assert plan.options.max_price == 7 and plan.request["steps"][1]["pipeline"] == "upscale"
    with_file = plan_workflow({"steps": [I2I], "input": base64.b64encode(png(8, 8)).decode()}, 1 << 20)
    assert with_file.first_input == png(8, 8) and with_file.request["inputs"]["input"]["size"] == len(png(8, 8))


def test_upscale_takes_the_video_of_the_step_before_and_makes_a_video() -> None:
    """The brief's own chain: image → video → upscale → interpolate (upscale maps video → video)."""
    plan = plan_workflow({"steps": [T2I, I2V, UPSCALE, INTERPOLATE]}, 1 << 20)
    assert [type(b).__name__ for b in plan.bodies][2:] == ["UpscaleBody", "FrameInterpolationBody"]
    assert MAKES[Pipeline.UPSCALE] == {"image": "image", "video": "video"}
    # a video input file can start a chain at upscale; an upscaled image still cannot be interpolated
    clip = encode_mp4([np.zeros((12, 16, 3), dtype=np.uint8)] * 3, 4.0)
    video = base64.b64encode(clip).decode()
    assert len(plan_workflow({"steps": [UPSCALE, INTERPOLATE], "input": video}, 1 << 20).bodies) == 2
    assert "step 3 (frame-interpolation) needs a video but step 2 makes an image" in rejected(
        {"steps": [T2I, UPSCALE, INTERPOLATE]}
    )
    # the step for an MP4 names its input "video", and its spec declares the video's size for the quote
    step = plan.step(2, clip)
    assert list(step.inputs) == ["video"] and step.request["inputs"]["video"]["size"] == len(clip)
    assert step.jobs[0].params == UpscaleParams(2, 16, 12, 3)


def test_chains_that_do_not_fit_are_refused_before_running() -> None:
    assert "needs an image but step 2 makes a video" in rejected({"steps": [T2I, I2V, I2I]})
    assert "needs an image or a video: give it as base64" in rejected({"steps": [UPSCALE]})
    assert "takes no input" in rejected({"steps": [T2I, T2I]})
    assert "give it as base64" in rejected({"steps": [UPSCALE]})
    assert "takes no input file" in rejected({"steps": [T2I], "input": base64.b64encode(png()).decode()})
    assert "not base64" in rejected({"steps": [UPSCALE], "input": "%%%"})
    # the step's own parameters, as its endpoint checks them; options belong to the workflow
    assert "step 2 (upscale)" in rejected({"steps": [T2I, {"pipeline": "upscale", "params": {"scale": 99}}]})
    assert "belong to the workflow" in rejected({"steps": [T2I | {"params": {"prompt": "x", "max_price": 1}}]})
    assert "num_images_per_prompt" in rejected(
        {"steps": [T2I | {"params": {"prompt": "x", "num_images_per_prompt": 2}}]}
    )
    assert "steps" in rejected({"steps": []})


def test_an_input_file_that_cannot_be_read_is_refused_at_input_before_anything_runs() -> None:
    # found only when its step ran, it ended the workflow as an internal error (a 500) (QA s11)
    garbage = base64.b64encode(bytes(range(256)) * 4).decode()
    assert "'loc': ('body', 'input')" in rejected({"steps": [UPSCALE], "input": garbage})
    assert "not a readable image" in rejected({"steps": [UPSCALE], "input": garbage})
    truncated = base64.b64encode(encode_mp4([np.zeros((16, 16, 3), dtype=np.uint8)] * 3, 4.0)[:200]).decode()
    assert "'loc': ('body', 'input')" in rejected({"steps": [UPSCALE, INTERPOLATE], "input": truncated})


def test_unknown_keys_in_a_workflow_are_refused_by_name() -> None:
    # a workflow is our own format: a typo in max_price used to run the chain with the default budget (QA)
    assert "max_prise" in rejected({"steps": [T2I], "max_prise": 5})
    assert "Extra inputs are not permitted" in rejected({"steps": [T2I], "max_prise": 5})
    assert "stepz" in rejected({"steps": [T2I], "stepz": []})
    assert "modle_id" in rejected({"steps": [T2I | {"modle_id": "x"}]})
    why = rejected({"steps": [T2I, {"pipeline": "upscale", "params": {"scale": 2, "widht": 5}}]})
    assert "step 2 (upscale): unknown parameter(s) ['widht']; upscale takes [" in why
    assert "'scale'" in why and "'max_price'" not in why  # what the step takes, options left to the workflow


async def test_four_step_workflow_runs_each_step_as_a_child_with_its_receipt(pool4: ModelPool) -> None:
    """text-to-image → image-to-video → upscale (the video, frame by frame) → frame-interpolation."""
    two_steps = {"num_inference_steps": 2}
    steps = [
        T2I | {"params": T2I["params"] | two_steps},
        I2V | {"params": I2V["params"] | two_steps},
        UPSCALE,
        INTERPOLATE,
    ]
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool4)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with rpc(requester.node) as (client, _):
            with trio.fail_after(BOUND_S):
                answer = await client.post("/v1/workflows", json={"steps": steps, "deadline": BOUND_S}, headers=AUTH)
                assert answer.status_code == 200, answer.text
                result = answer.json()
                record = (await client.get(f"/v1/jobs/{result['request_id']}", headers=AUTH)).json()
                children = [(await client.get(f"/v1/jobs/{c}", headers=AUTH)).json() for c in result["steps"]]
                receipts = [
                    (await client.get(f"/v1/jobs/{result['request_id']}/receipts/{n}", headers=AUTH)).content
                    for n in range(4)
                ]
                final = await client.get(result["outputs"][0], headers=AUTH)
                bad = await client.post("/v1/workflows", json={"steps": [T2I, I2V, I2I]}, headers=AUTH)
    assert record["kind"] == "workflow" and record["state"] == "succeeded" and record["result"] == result
    assert [c["kind"] for c in children] == ["text-to-image", "image-to-video", "upscale", "frame-interpolation"]
    assert all(c["parent_id"] == record["id"] and c["state"] == "succeeded" for c in children)
    # each step's input is the previous step's output, as signed in the receipts
    signed = [verify_receipt(r) for r in receipts]
    for before, after in itertools.pairwise(signed):
        assert [b.sha256 for b in after.spec.inputs] == [before.outputs[0].sha256]
    upscale = signed[2]
    assert [(b.name, b.media_type) for b in upscale.spec.inputs] == [("video", "video/mp4")]
    assert upscale.outputs[0].media_type == "video/mp4" and len(upscale.outputs[0].phash) == 4  # per frame
    # 4 frames of 64x64 upscaled ×2, then interpolated ×2: (4 - 1) · 2 + 1 frames of 128x128
    smooth = decode_video_bytes(final.content)[0]
    assert len(smooth) == 7 and smooth[0].size == (128, 128)
    assert signed[-1].outputs[0].sha256 == result["outputs"][0].rsplit("/", 1)[1]
    assert final.status_code == 200 and final.content[4:8] == b"ftyp"
    assert bad.status_code == 422


async def test_a_failed_workflow_s_steps_are_listed_by_parent(pool: ModelPool) -> None:
    """A chain that fails has no result to name its steps: GET /v1/jobs?parent_id= lists them, the failed one too."""
    two_steps = {"num_inference_steps": 2}
    steps = [T2I | {"params": T2I["params"] | two_steps}, I2V | {"params": I2V["params"] | two_steps}]
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]  (text-to-image only)
        await sees_models(requester.node, [worker])
        async with rpc(requester.node) as (client, _):
            with trio.fail_after(BOUND_S):
                answer = await client.post("/v1/workflows", json={"steps": steps, "deadline": BOUND_S}, headers=AUTH)
                assert answer.status_code == 404, answer.text  # nobody offers image-to-video
                jobs = (await client.get("/v1/jobs", headers=AUTH)).json()["jobs"]
                (workflow,) = [job for job in jobs if job["kind"] == "workflow"]
                listed = await client.get("/v1/jobs", params={"parent_id": workflow["id"]}, headers=AUTH)
                unrelated = await client.get("/v1/jobs", params={"parent_id": "job_none"}, headers=AUTH)
                malformed = await client.get("/v1/jobs", params={"parent_id": "../x"}, headers=AUTH)
    assert workflow["kind"] == "workflow" and workflow["state"] == "failed" and workflow["result"] is None
    children = listed.json()["jobs"][::-1]  # newest first
    assert [(c["kind"], c["state"]) for c in children] == [("text-to-image", "succeeded"), ("image-to-video", "failed")]
    assert all(c["parent_id"] == workflow["id"] for c in children)
    assert unrelated.json() == {"jobs": []} and malformed.status_code == 422


def test_a_model_id_in_a_steps_params_is_used_not_ignored() -> None:
    # review: it passed the unknown-key check, then the step's own (empty) model_id overwrote it
    in_params = {"pipeline": "text-to-image", "params": {"prompt": "x", "model_id": "lpnode/tiny-sdxl"}}
    assert plan_workflow({"steps": [in_params]}, 1 << 20).bodies[0].model_id == "lpnode/tiny-sdxl"
    both = in_params | {"model_id": "lpnode/tiny-sdxl"}
    assert plan_workflow({"steps": [both]}, 1 << 20).bodies[0].model_id == "lpnode/tiny-sdxl"
    why = rejected({"steps": [in_params | {"model_id": "stabilityai/sdxl-turbo"}]})
    assert "step 1 (text-to-image): two model_ids, 'stabilityai/sdxl-turbo' (the step's)" in why
