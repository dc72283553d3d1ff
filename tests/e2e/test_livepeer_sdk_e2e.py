"""Livepeer's own Python SDK (``livepeer-ai`` on PyPI, generated from its AI gateway's OpenAPI) against a node.

The issue's promise is that existing clients of Livepeer's AI API work against
lpnode. This drives a real requester process with that SDK, unmodified, for
the four pipelines it has (it has no frame interpolation): the answers parse as
its response models, the outputs they name are served by the node and match
the signed receipts, and the node's errors parse as the SDK's error types (its
``HTTPError`` for 401, its ``HTTPValidationError`` for 422), so an SDK user
reads why a request was refused.

The SDK sends Livepeer's defaults explicitly (1024×576, 50–100 steps), which
the tiny presets refuse; the calls here give sizes and steps the presets take,
and one call relies on the defaults to see that refusal arrive as a 422 the
SDK understands.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import httpx
import pytest
from lpnode.protocol.receipts import verify_receipt
from PIL import Image

from .cluster import Pair, cluster_in_thread, launch_pair

livepeer_ai = pytest.importorskip("livepeer_ai", reason="the dev extras install Livepeer's SDK (livepeer-ai)")
from livepeer_ai.models import errors  # noqa: E402  (after the importorskip above)

pytestmark = pytest.mark.slow

WORKER_MODELS = "tiny-sdxl,tiny-svd,tiny-realesrgan"
PIPELINES = ["image-to-image", "image-to-video", "text-to-image", "upscale"]
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with cluster_in_thread(tmp_path_factory.mktemp("livepeer-sdk")) as cluster:
        yield cluster.call(partial(launch_pair, serve=WORKER_MODELS, pipelines=PIPELINES))


@pytest.fixture
def sdk(nodes: Pair) -> Iterator[Any]:
    with connect(nodes, nodes.requester.token) as client:
        yield client


@contextmanager
def connect(nodes: Pair, token: str) -> Iterator[Any]:
    """The SDK's client for one block.

    The SDK closes its httpx clients in a finalizer when it is collected, the async one with
    ``asyncio.run``: collected later inside another test's event loop, that warns there. So the
    block ends by collecting it here, where no loop runs.
    """
    client = livepeer_ai.Livepeer(server_url=nodes.requester.url, http_bearer=token, timeout_ms=TIMEOUT_MS)
    try:
        yield client
    finally:
        del client
        gc.collect()


def png(side: int) -> dict[str, Any]:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 80, 40)).save(buffer, format="PNG")
    return {"file_name": "in.png", "content": buffer.getvalue(), "content_type": "image/png"}


def served_output(nodes: Pair, answer: Any, media: Any) -> bytes:
    """The output ``media`` names, fetched from the node, checked against the receipt the answer carries."""
    headers = {"Authorization": f"Bearer {nodes.requester.token}"}
    got = httpx.get(nodes.requester.url + media.url, headers=headers, timeout=30)
    assert got.status_code == 200, got.text
    # the SDK's models drop fields it does not know (lpnode's `jobs` with the receipts): read them from the raw answer
    job = answer.http_meta.response.json()["jobs"][0]
    receipt = verify_receipt(base64.b64decode(job["receipt"]))
    assert receipt.worker_peer_id == nodes.worker.peer_id
    assert receipt.outputs[0].sha256 == hashlib.sha256(got.content).hexdigest()
    return got.content


def test_text_to_image(nodes: Pair, sdk: Any) -> None:
    request = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 7}
    answer = sdk.generate.text_to_image(request=request)
    assert answer.http_meta.response.status_code == 200
    (media,) = answer.image_response.images
    assert media.seed == 7 and media.nsfw is False
    image = Image.open(io.BytesIO(served_output(nodes, answer, media)))
    assert image.format == "PNG" and image.size == (64, 64)


def test_image_to_image(nodes: Pair, sdk: Any) -> None:
    request = {"prompt": "oil painting", "image": png(64), "num_inference_steps": 2, "seed": 3}
    answer = sdk.generate.image_to_image(request=request)
    (media,) = answer.image_response.images
    assert Image.open(io.BytesIO(served_output(nodes, answer, media))).size == (64, 64)


def test_image_to_video(nodes: Pair, sdk: Any) -> None:
    request = {"image": png(64), "width": 64, "height": 64, "num_inference_steps": 2, "seed": 3}
    answer = sdk.generate.image_to_video(request=request)
    (media,) = answer.video_response.images
    assert served_output(nodes, answer, media)[4:8] == b"ftyp"  # an MP4


def test_upscale_with_the_sdk_defaults(nodes: Pair, sdk: Any) -> None:
    answer = sdk.generate.upscale(request={"prompt": "sharper", "image": png(32)})
    (media,) = answer.image_response.images
    image = Image.open(io.BytesIO(served_output(nodes, answer, media)))
    assert image.size[0] > 32  # tiny-realesrgan's factor


def test_errors_parse_as_the_sdks_error_types(nodes: Pair, sdk: Any) -> None:
    with pytest.raises(errors.HTTPError) as unauthorized, connect(nodes, "not-the-token") as stranger:
        stranger.generate.text_to_image(request={"prompt": "x"})
    assert "wrong bearer token" in unauthorized.value.data.detail.msg

    with pytest.raises(errors.HTTPValidationError) as invalid:
        sdk.generate.text_to_image(request={"prompt": "x", "width": -5})
    (issue,) = invalid.value.data.detail
    assert issue.loc == ["body", "width"] and issue.type == "greater_than_equal"

    # Livepeer's defaults (1024×576) are past the tiny preset's limits: refused before any job, and said so
    with pytest.raises(errors.HTTPValidationError) as refused:
        sdk.generate.text_to_image(request={"prompt": "x"})
    (issue,) = refused.value.data.detail
    assert issue.type == "parameters_refused" and "1024×576 exceeds its 256-pixel side" in issue.msg
