"""The test vectors of ``docs/protocol.md``, built by the real code from fixed keys, nonces and times.

Each vector has a JSON block (the values, as the msgpack structure they encode to) and a hex
block (the bytes). The doc holds committed copies; ``test_protocol_doc`` checks them against
the codec and against this module. After a deliberate wire change, print fresh blocks with::

    .venv/bin/python -m tests.protocol.vectors

and paste them over the old ones (hand annotations after ``#`` in hex blocks may stay).

JSON conventions (msgpack has types JSON lacks):

- ``{"$bin": "<hex>"}`` is a msgpack bin (bytes);
- ``{"$msgpack": X}`` is a bin holding the canonical msgpack of X (an envelope's payload);
- ``{"$ref": "<vector>"}`` is a bin holding the bytes of another vector;
- a JSON number with a ``.`` is a float64, one without is an integer.

A vector's JSON is one of ``{"frames": [{"kind": 1|2, "body": X}, ...]}`` (framed bytes on a
job stream), ``{"msgpack": X}`` (canonical msgpack of X), or a vector-specific object
(``identity``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgpack
from lpnode.node.framing import HEADER, FrameKind
from lpnode.node.transfer import DEFAULT_CHUNK_BYTES, TransferHeader
from lpnode.protocol import (
    Accept,
    BlobDescriptor,
    Cancel,
    CapabilityAdvert,
    ErrorCode,
    GpuInfo,
    JobError,
    JobSpec,
    LibraryVersion,
    ModelLimits,
    ModelOffer,
    NodeKey,
    OutputExpectation,
    OutputHashes,
    Pipeline,
    Progress,
    Quote,
    QuoteRequest,
    Receipt,
    Refusal,
    RefusalReason,
    Result,
    RuntimeFacts,
    TextToImageParams,
    Timings,
    UpscaleParams,
    encode,
    job_id,
    sign_advert,
    sign_receipt,
)
from lpnode.protocol.codec import canonical_bytes
from lpnode.protocol.jobs import encode_job_message

WORKER_SEED = bytes.fromhex("11" * 32)
REQUESTER_SEED = bytes.fromhex("22" * 32)
WORKER = NodeKey(WORKER_SEED)
REQUESTER = NodeKey(REQUESTER_SEED)
NOW_MS = 1_800_000_000_000  # unix ms, 2027-01-15
NONCE = bytes(range(16))
UPSCALE_NONCE = bytes(range(16, 32))
WEIGHTS_SHA256 = hashlib.sha256(b"tiny-sdxl weights").hexdigest()
INPUT_PNG = b"\x89PNG\r\n\x1a\nlpnode vector input"
OUTPUT_PNG = b"\x89PNG\r\n\x1a\nlpnode vector output"
JOB_ID_DOMAIN = "lpnode/job-id/1"


def text_spec() -> JobSpec:
    return JobSpec(
        pipeline=Pipeline.TEXT_TO_IMAGE,
        model_id="tiny-sdxl",
        seed=42,
        inputs=(),
        output=OutputExpectation("image/png", 8 * 1024 * 1024),
        text_to_image=TextToImageParams("a lighthouse at dusk", 64, 64, 2, 1.5, ""),
    )


def upscale_spec() -> JobSpec:
    blob = BlobDescriptor("image", "image/png", len(INPUT_PNG), hashlib.sha256(INPUT_PNG).hexdigest())
    return JobSpec(
        pipeline=Pipeline.UPSCALE,
        model_id="",
        seed=0,
        inputs=(blob,),
        output=OutputExpectation("image/png", 64 * 1024 * 1024),
        upscale=UpscaleParams(scale=2, input_width=32, input_height=32, input_frames=1),
    )


def text_request() -> QuoteRequest:
    return QuoteRequest(text_spec(), NONCE, max_price=1_000_000, deadline_ms=60_000, accept=True)


def text_job_id() -> str:
    return job_id(text_spec(), REQUESTER.peer_id, NONCE)


def upscale_job_id() -> str:
    return job_id(upscale_spec(), REQUESTER.peer_id, UPSCALE_NONCE)


def quote() -> Quote:
    return Quote(
        quote_id="1a3185c5000-1",
        job_id=text_job_id(),
        worker_peer_id=WORKER.peer_id,
        price=41,
        eta_ms=1200,
        warm=True,
        model_id="tiny-sdxl",
        weights_sha256=WEIGHTS_SHA256,
        issued_at_ms=NOW_MS,
        expires_at_ms=NOW_MS + 15_000,
    )


def receipt() -> Receipt:
    output = OutputHashes(
        name="image",
        media_type="image/png",
        size_bytes=len(OUTPUT_PNG),
        sha256=hashlib.sha256(OUTPUT_PNG).hexdigest(),
        pixel_sha256=hashlib.sha256(b"decoded RGB pixels").hexdigest(),
        phash=("c3c3e1e1f0f0781c",),
        dhash=("0f0f1e1e3c3c7878",),
    )
    return Receipt(
        job_id=text_job_id(),
        requester_peer_id=REQUESTER.peer_id,
        worker_peer_id=WORKER.peer_id,
        nonce=NONCE,
        spec=text_spec(),
        quote_id=quote().quote_id,
        price=41,
        model_id="tiny-sdxl",
        weights_sha256=WEIGHTS_SHA256,
        runtime=RuntimeFacts(
            "cpu", "float32", (LibraryVersion("torch", "2.13.0"), LibraryVersion("diffusers", "0.42.1"))
        ),
        outputs=(output,),
        timings=Timings(queue_ms=0, load_ms=0, run_ms=812),
        seq=1_800_000_000_000_001,
        issued_at_ms=NOW_MS + 2_000,
    )


def advert() -> CapabilityAdvert:
    limits = ModelLimits(max_pixels=65_536, max_side=256, max_steps=50, max_frames=1, max_batch=4)
    return CapabilityAdvert(
        peer_id=WORKER.peer_id,
        seq=NOW_MS,
        issued_at_ms=NOW_MS,
        expires_at_ms=NOW_MS + 30_000,
        listen_addrs=(f"/ip4/192.0.2.7/tcp/9471/p2p/{WORKER.peer_id}",),
        software_version="0.1.0",
        protocol_version=1,
        gpus=(GpuInfo("cpu", "cpu", 0, 0),),
        models=(ModelOffer("text-to-image", "tiny-sdxl", WEIGHTS_SHA256, True, 12.5, 100, limits),),
        queue_depth=0,
        queue_capacity=4,
    )


# ---------------------------------------------------------------- bytes -> JSON values


def _plain(value: Any) -> Any:
    """A msgpack-decoded value as JSON: bytes become {"$bin": hex}."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)


def _envelope_values(envelope_frame: bytes) -> Any:
    """An envelope frame as JSON, its payload shown decoded ({"$msgpack": ...})."""
    version, tag, body = unpack(envelope_frame)
    shown = _plain(body)
    shown["payload"] = {"$msgpack": _plain(unpack(body["payload"]))}
    return [version, tag, shown]


def _frames(*frames: tuple[FrameKind, bytes, Any]) -> tuple[dict[str, Any], bytes]:
    wire = b"".join(HEADER.pack(kind, len(body)) + body for kind, body, _ in frames)
    values = {"frames": [{"kind": int(kind), "body": shown} for kind, _, shown in frames]}
    return values, wire


def _message(frame: bytes) -> tuple[FrameKind, bytes, Any]:
    return FrameKind.MESSAGE, frame, _plain(unpack(frame))


def _data(chunk: bytes) -> tuple[FrameKind, bytes, Any]:
    return FrameKind.DATA, chunk, {"$bin": chunk.hex()}


def build() -> dict[str, tuple[Any, bytes]]:
    """Every vector: name -> (JSON values, bytes)."""
    vectors: dict[str, tuple[Any, bytes]] = {}
    multihash = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + WORKER.public_key
    vectors["identity"] = (
        {"seed": WORKER_SEED.hex(), "public_key": WORKER.public_key.hex(), "peer_id": WORKER.peer_id},
        multihash,
    )
    preimage = [JOB_ID_DOMAIN, text_spec(), REQUESTER.peer_id, NONCE]
    preimage_bytes = canonical_bytes(preimage)
    vectors["job_id"] = (
        {"msgpack": _plain(unpack(preimage_bytes)), "sha256": hashlib.sha256(preimage_bytes).hexdigest()},
        preimage_bytes,
    )
    vectors["quote_request"] = _frames(_message(encode(text_request())))
    signed_quote = encode_job_message(quote(), WORKER)
    vectors["signed_quote"] = _frames((FrameKind.MESSAGE, signed_quote, _envelope_values(signed_quote)))
    vectors["progress"] = _frames(_message(encode(Progress(text_job_id(), "denoise", 1, 2, 350))))
    sealed = sign_receipt(WORKER, receipt())
    vectors["receipt"] = ({"msgpack": _envelope_values(sealed)}, sealed)
    out = receipt().outputs[0]
    result = Result(text_job_id(), (BlobDescriptor(out.name, out.media_type, out.size_bytes, out.sha256),), sealed)
    result_values = _plain(unpack(encode(result)))
    result_values[2]["receipt"] = {"$ref": "receipt"}
    transfer = TransferHeader(len(OUTPUT_PNG), hashlib.sha256(OUTPUT_PNG).digest(), "image/png", DEFAULT_CHUNK_BYTES)
    vectors["result"] = _frames(
        (FrameKind.MESSAGE, encode(result), result_values),
        _message(encode(transfer)),
        _data(OUTPUT_PNG),
        _data(b""),
    )
    up_request = QuoteRequest(upscale_spec(), UPSCALE_NONCE, max_price=1_000_000, deadline_ms=60_000)
    vectors["upscale_request"] = _frames(_message(encode(up_request)))
    accept = Accept("1a3185c5000-2", upscale_job_id(), upscale_spec().inputs)
    header = TransferHeader(len(INPUT_PNG), hashlib.sha256(INPUT_PNG).digest(), "image/png", DEFAULT_CHUNK_BYTES)
    vectors["accept_and_input"] = _frames(
        _message(encode(accept)), _message(encode(header)), _data(INPUT_PNG), _data(b"")
    )
    refusal = Refusal(upscale_job_id(), RefusalReason.BUSY, "4 jobs held", 1200)
    vectors["refusal"] = _frames(_message(encode(refusal)))
    error = JobError(text_job_id(), ErrorCode.DEADLINE_EXCEEDED, "deadline passed")
    vectors["job_error"] = _frames(_message(encode(error)))
    vectors["cancel"] = _frames(_message(encode(Cancel(text_job_id(), "user"))))
    signed_advert = sign_advert(WORKER, advert())
    vectors["advert"] = ({"msgpack": _envelope_values(signed_advert)}, signed_advert)
    return vectors


# ---------------------------------------------------------------- markdown


def hex_lines(data: bytes, width: int = 32) -> str:
    return "\n".join(data[i : i + width].hex(" ") for i in range(0, len(data), width)) or "# (empty)"


def pretty(value: Any, indent: str = "", used: int = 0, width: int = 100) -> str:
    """JSON with a container on one line when it fits in ``width`` (``used`` columns taken), else an item a line."""
    flat = json.dumps(value, ensure_ascii=False)
    if used + len(flat) <= width or not isinstance(value, dict | list) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, dict):
        items = [
            f"{inner}{json.dumps(k)}: {pretty(v, inner, len(inner) + len(k) + 4, width)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    items = [inner + pretty(v, inner, len(inner), width) for v in value]
    return "[\n" + ",\n".join(items) + f"\n{indent}]"


def render(name: str, values: Any, data: bytes) -> str:
    text = pretty(values)
    return f"```json vector:{name}\n{text}\n```\n\n```hex vector:{name}\n{hex_lines(data)}\n```\n"


def main() -> None:
    for name, (values, data) in build().items():
        print(f"<!-- {name}: {len(data)} bytes -->")
        print(render(name, values, data))


if __name__ == "__main__":
    main()

__all__ = ["NOW_MS", "REQUESTER", "WORKER", "build", "hex_lines", "render", "unpack"]
