"""The file-input bodies: a file's bytes decide which input it is; ``/upscale`` takes an image or a video."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
import trio
from fastapi.exceptions import RequestValidationError
from lpnode.models.outputs import decode_video_bytes, encode_mp4
from lpnode.models.pool import ModelPool, PoolConfig, open_model_pool
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc_job_bodies import (
    INPUT_FILE,
    INPUT_FILES,
    FrameInterpolationBody,
    ImageToImageBody,
    InputTooLarge,
    JobOptions,
    TextToImageBody,
    UpscaleBody,
    input_kind,
    name_inputs,
    prepare,
    read_form,
    validate,
)
from lpnode.node.workflows import plan_workflow
from lpnode.protocol.jobs import MAX_PRICE
from lpnode.protocol.jobspec import Pipeline, UpscaleParams
from lpnode.protocol.peer_id import peer_id_from_public_key
from lpnode.protocol.receipts import verify_receipt
from lpnode.reputation.errors import BadVerification
from lpnode.reputation.policy import parse_verification
from pydantic import ValidationError
from starlette.requests import Request

from .job_fixtures import BOUND_S, Peer, peers, png, sees_models
from .test_rpc_jobs import AUTH, OPTIONS, rpc

MP4_HEAD = b"\x00\x00\x00\x18ftypisom"


def clip(width: int = 16, height: int = 12, frames: int = 3, fps: float = 6.0) -> bytes:
    rng = np.random.default_rng(0)
    return encode_mp4([rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)], fps)


@pytest.fixture
async def upscaler() -> AsyncIterator[ModelPool]:
    async with open_model_pool(
        PoolConfig(serve=("tiny-realesrgan",), pinned=("tiny-realesrgan",), device="cpu")
    ) as pool:
        yield pool


def test_file_kinds_per_pipeline() -> None:
    assert INPUT_FILES[Pipeline.UPSCALE] == ("image", "video")
    assert INPUT_FILE[Pipeline.UPSCALE] == "image"  # the field Livepeer's API documents
    assert INPUT_FILES[Pipeline.TEXT_TO_IMAGE] == () and INPUT_FILE[Pipeline.TEXT_TO_IMAGE] is None
    assert (input_kind(png(4, 4)), input_kind(MP4_HEAD), input_kind(b"GIF89a")) == ("image", "video", None)


def test_inputs_are_named_after_their_bytes() -> None:
    assert list(name_inputs(Pipeline.UPSCALE, {"image": MP4_HEAD})) == ["video"]
    assert list(name_inputs(Pipeline.UPSCALE, {"video": png(4, 4)})) == ["image"]
    assert list(name_inputs(Pipeline.IMAGE_TO_IMAGE, {"image": b"RIFF....WEBP"})) == ["image"]  # unknown: as given
    with pytest.raises(RequestValidationError, match="image-to-image takes image, but the file 'image' is a video"):
        name_inputs(Pipeline.IMAGE_TO_IMAGE, {"image": MP4_HEAD})
    with pytest.raises(RequestValidationError, match="frame-interpolation takes video, but the file 'video' is an"):
        name_inputs(Pipeline.FRAME_INTERPOLATION, {"video": png(4, 4)})
    body = UpscaleBody(scale=2)
    prepared = prepare(body, {"image": clip(16, 12, frames=3)}, 1 << 20)
    assert list(prepared.inputs) == ["video"] and set(prepared.request["inputs"]) == {"video"}
    assert prepared.jobs[0].params == UpscaleParams(2, 16, 12, 3)  # declared for the quote
    assert prepare(body, {"image": png(10, 6)}, 1 << 20).jobs[0].params == UpscaleParams(2, 10, 6, 1)
    with pytest.raises(RequestValidationError, match=r"'video'.*not a readable video"):
        prepare(body, {"video": MP4_HEAD + bytes(8)}, 1 << 20)
    assert not prepare(body, {"video": MP4_HEAD}, 1 << 20, declare=False).jobs[0].params.input_frames  # planning


def test_an_image_to_image_input_of_odd_sides_is_refused_about_the_image_before_any_peer() -> None:
    # every peer used to be asked, and each refused "width=250 is not allowed", a field the request lacks (QA s11)
    body = ImageToImageBody(prompt="a photo")
    with pytest.raises(RequestValidationError) as caught:
        prepare(body, {"image": png(250, 180)}, 1 << 20)
    [error] = caught.value.errors()
    assert error["loc"] == ("body", "image")
    assert "the input image is 250×180" in error["msg"] and "248×176 or 256×184" in error["msg"]
    assert prepare(body, {"image": png(248, 176)}, 1 << 20).jobs  # whole blocks: taken
    # a workflow's file is held to the same rule, at its `input`
    plan = {"steps": [{"pipeline": "image-to-image", "params": {"prompt": "x"}}]}
    with pytest.raises(RequestValidationError, match="250×180") as caught:
        plan_workflow(plan | {"input": base64.b64encode(png(250, 180)).decode()}, 1 << 20)
    assert caught.value.errors()[0]["loc"] == ("body", "input")


async def test_upscale_endpoint_takes_a_video_file(upscaler: ModelPool) -> None:
    video = clip(16, 12, frames=3, fps=6.0)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=upscaler)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with rpc(requester.node) as (client, _):
            with trio.fail_after(BOUND_S):
                answer = await client.post(
                    "/upscale", files={"video": ("clip.mp4", video)}, data=OPTIONS | {"scale": "4"}, headers=AUTH
                )
                assert answer.status_code == 200, answer.text
                result = answer.json()
                media = await client.get(result["images"][0]["url"], headers=AUTH)
                both = await client.post(
                    "/upscale",
                    files=[("image", ("a.png", png(8, 8))), ("video", ("b.mp4", video))],
                    data=OPTIONS,
                    headers=AUTH,
                )
                mp4_to_i2i = await client.post(
                    "/image-to-image", files={"image": ("c.mp4", video)}, data=OPTIONS, headers=AUTH
                )
    receipt = verify_receipt(base64.b64decode(result["jobs"][0]["receipt"]))
    assert [(b.name, b.media_type) for b in receipt.spec.inputs] == [("video", "video/mp4")]
    assert receipt.outputs[0].media_type == "video/mp4" and len(receipt.outputs[0].phash) == 3
    assert receipt.outputs[0].sha256 == hashlib.sha256(media.content).hexdigest()
    frames, fps = decode_video_bytes(media.content)
    assert len(frames) == 3 and frames[0].size == (64, 48) and fps == 6.0
    assert result["jobs"][0]["model_id"] == "lpnode/tiny-realesrgan"
    assert both.status_code == 422, both.text  # exactly one file
    assert mp4_to_i2i.status_code == 422 and "is a video" in mp4_to_i2i.text


def test_verification_accepts_exactly_what_the_spot_checker_runs() -> None:
    # the field's pattern and reputation.policy.parse_verification must agree, or a request
    # that passed validation would fail later as a 500
    for text in ("none", "spot", "redundant:2", "redundant:5"):
        assert JobOptions(verification=text).verification == text
        parse_verification(text)
    for text in ("redundant:1", "redundant:6", "redundant:", "always"):
        with pytest.raises(ValidationError):
            JobOptions(verification=text)
        with pytest.raises(BadVerification):
            parse_verification(text)


def test_max_price_is_bounded_by_what_a_quote_request_carries() -> None:
    # above MAX_PRICE the QuoteRequest could not be built: the job failed later as a 500 (review)
    assert JobOptions(max_price=MAX_PRICE).max_price == MAX_PRICE
    with pytest.raises(ValidationError, match="less than or equal to"):
        JobOptions(max_price=MAX_PRICE + 1)


def test_prefer_and_avoid_take_peer_ids_only() -> None:
    # a typo in `avoid` (a suspected cheater's id) used to avoid nobody, silently (QA)
    real = peer_id_from_public_key(bytes(range(32)))
    assert JobOptions(avoid=[real], prefer=[real]).avoid == [real]
    for field in ("avoid", "prefer"):
        with pytest.raises(ValidationError, match="'notapeer' is not a peer id"):
            JobOptions.model_validate({field: ["notapeer"]})
        # base58, but no Ed25519 key inside: no lpnode peer can have it
        with pytest.raises(ValidationError, match="is not a peer id: peer id does not embed"):
            JobOptions.model_validate({field: [real[:-3]]})


def test_unknown_fields_are_refused_by_name_but_livepeers_own_are_taken() -> None:
    # ignored, a typo in max_price ran the job with the default budget of 10^6 (QA s11)
    with pytest.raises(RequestValidationError) as caught:
        validate(TextToImageBody, {"prompt": "x", "max_prize": 1})
    [error] = caught.value.errors()
    assert error["loc"] == ("body",) and "unknown field(s) ['max_prize']; text-to-image takes [" in error["msg"]
    assert "'max_price'" in error["msg"]
    # what Livepeer's SDK sends with every request, for features lpnode does not have, is taken
    assert validate(TextToImageBody, {"prompt": "x", "safety_check": True, "loras": ""}).prompt == "x"
    assert validate(UpscaleBody, {"scale": 2, "num_inference_steps": 20, "safety_check": False}).scale == 2
    assert validate(ImageToImageBody, {"image_guidance_scale": 1.5}).prompt == ""
    with pytest.raises(RequestValidationError, match="unknown field"):
        validate(FrameInterpolationBody, {"multiplier": 2, "safety_check": True})  # not a Livepeer pipeline


async def test_a_declared_upload_over_the_limit_names_the_same_limit_as_a_streamed_one() -> None:
    # QA s11: the same endpoint said "over the node's limit of 68157440 bytes" (limit + the form's allowance)
    # for a declared length, and "input limit of 67108864 bytes" for a streamed one
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/image-to-image",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"200000200")],
    }

    async def nothing() -> dict[str, object]:
        raise AssertionError("refused from the header, before any body is read")

    with pytest.raises(InputTooLarge) as refused:
        await read_form(Request(scope, nothing), "image", 1 << 20)
    assert str(refused.value) == (
        "request of 200000200 bytes is over the node's input limit of 1048576 bytes (plus the form's fields)"
    )
