"""What the jobs endpoints document in OpenAPI: the file each takes, and what kind of file it may be."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from lpnode.node.rpc_jobs import jobs_router


async def no_token() -> None:
    return None


def operation(path: str) -> dict[str, Any]:
    app = FastAPI()
    app.include_router(jobs_router(None, no_token, max_input_bytes=1 << 20))  # type: ignore[arg-type]  # no calls
    found: dict[str, Any] = app.openapi()["paths"][path]["post"]
    return found


def form_schema(path: str) -> dict[str, Any]:
    body = operation(path)["requestBody"]
    schema: dict[str, Any] = body["content"]["multipart/form-data"]["schema"]
    return schema


def test_upscale_documents_an_image_or_a_video() -> None:
    schema = form_schema("/upscale")
    described = schema["properties"]["image"]["description"]
    assert "image (PNG or JPEG)" in described and "MP4" in described and "`video`" in described
    assert schema["required"][0] == "image" and schema["properties"]["image"]["format"] == "binary"


def test_single_kind_endpoints_document_that_kind_only() -> None:
    assert "MP4" not in form_schema("/image-to-image")["properties"]["image"]["description"]
    assert "MP4" in form_schema("/frame-interpolation")["properties"]["video"]["description"]


def test_pipeline_operations_document_respond_async() -> None:
    # QA s11: `Prefer: respond-async` was in the README only, not in what clients are generated from
    for path in ("/text-to-image", "/image-to-image", "/image-to-video", "/upscale", "/frame-interpolation"):
        prefer = [p for p in operation(path).get("parameters", []) if p["name"] == "Prefer"]
        assert prefer and prefer[0]["in"] == "header" and "202" in prefer[0]["description"], path
