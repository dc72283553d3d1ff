"""Builders and hypothesis strategies for job messages and receipts (shared by the job tests)."""

from __future__ import annotations

import dataclasses
import hashlib

from hypothesis import strategies as st
from lpnode.protocol import (
    Accept,
    BlobDescriptor,
    Cancel,
    ErrorCode,
    FrameInterpolationParams,
    ImageToImageParams,
    ImageToVideoParams,
    JobError,
    JobSpec,
    LibraryVersion,
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
    job_id,
    sign_receipt,
)
from lpnode.protocol.jobspec import PIPELINE_IO

WORKER = NodeKey(b"\x11" * 32)
REQUESTER = NodeKey(b"\x22" * 32)
MALLORY = NodeKey(b"\x33" * 32)
NOW_MS = 1_800_000_000_000
NONCE = b"\x5a" * 16
WEIGHTS = "ab" * 32
OUTPUT_BYTES = b"\x89PNG fake output"
OUTPUT_SHA = hashlib.sha256(OUTPUT_BYTES).hexdigest()
INPUT_BYTES = b"\x89PNG fake input"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_spec(model_id: str = "sdxl-turbo", seed: int = 7) -> JobSpec:
    return JobSpec(
        pipeline=Pipeline.TEXT_TO_IMAGE,
        model_id=model_id,
        seed=seed,
        inputs=(),
        output=OutputExpectation("image/png", 8 << 20),
        text_to_image=TextToImageParams("a lighthouse at dusk", 512, 512, 1, 0.0, ""),
    )


def upscale_spec() -> JobSpec:
    return JobSpec(
        pipeline=Pipeline.UPSCALE,
        model_id="",
        seed=0,
        inputs=(BlobDescriptor("image", "image/png", len(INPUT_BYTES), sha(INPUT_BYTES)),),
        output=OutputExpectation("image/png", 64 << 20),
        upscale=UpscaleParams(4),
    )


def quote_request(spec: JobSpec | None = None, max_price: int = 1000, deadline_ms: int = 60_000) -> QuoteRequest:
    return QuoteRequest(spec or text_spec(), NONCE, max_price, deadline_ms)


def make_quote(request: QuoteRequest, now_ms: int = NOW_MS, **changes: object) -> Quote:
    quote = Quote(
        quote_id="q-1",
        job_id=job_id(request.spec, REQUESTER.peer_id, request.nonce),
        worker_peer_id=WORKER.peer_id,
        price=500,
        eta_ms=300,
        warm=True,
        model_id=request.spec.model_id or "sdxl-turbo",
        weights_sha256=WEIGHTS,
        issued_at_ms=now_ms,
        expires_at_ms=now_ms + 5_000,
    )
    return dataclasses.replace(quote, **changes)


def output_hashes(data: bytes = OUTPUT_BYTES, frames: int = 1) -> OutputHashes:
    return OutputHashes(
        name="image",
        media_type="image/png",
        size_bytes=len(data),
        sha256=sha(data),
        pixel_sha256=sha(b"pixels" + data),
        phash=("8f373714acfcf4d0",) * frames,
        dhash=("0e0e0c1c3c7c7c3c",) * frames,
    )


def make_receipt(request: QuoteRequest, quote: Quote, **changes: object) -> Receipt:
    receipt = Receipt(
        job_id=quote.job_id,
        requester_peer_id=REQUESTER.peer_id,
        worker_peer_id=WORKER.peer_id,
        nonce=request.nonce,
        spec=request.spec,
        quote_id=quote.quote_id,
        price=quote.price,
        model_id=quote.model_id,
        weights_sha256=quote.weights_sha256,
        runtime=RuntimeFacts(
            "NVIDIA H100 80GB HBM3",
            "float16",
            (LibraryVersion("torch", "2.11.0"), LibraryVersion("diffusers", "0.42.1")),
        ),
        outputs=(output_hashes(),),
        timings=Timings(queue_ms=3, load_ms=0, run_ms=140),
        seq=41,
        issued_at_ms=NOW_MS + 500,
    )
    return dataclasses.replace(receipt, **changes)


def descriptors(receipt: Receipt) -> tuple[BlobDescriptor, ...]:
    return tuple(BlobDescriptor(o.name, o.media_type, o.size_bytes, o.sha256) for o in receipt.outputs)


def make_result(request: QuoteRequest, quote: Quote, key: NodeKey = WORKER, **changes: object) -> Result:
    receipt = make_receipt(request, quote, **changes)
    return Result(quote.job_id, descriptors(receipt), sign_receipt(key, receipt))


# ---------------------------------------------------------------- strategies

hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
fingerprints = st.text("0123456789abcdef", min_size=16, max_size=16)
words = st.text(max_size=40)
prompts = st.text(max_size=300)
ms = st.integers(0, 24 * 3600 * 1000)
guidance = st.floats(0.0, 50.0, allow_nan=False)
blobs = st.builds(
    BlobDescriptor,
    st.text(min_size=1, max_size=32),
    st.sampled_from(["image/png", "video/mp4"]),
    st.integers(1, 2**40),
    hexes,
)

_params = {
    Pipeline.TEXT_TO_IMAGE: st.builds(
        TextToImageParams, prompts, st.integers(8, 8192), st.integers(8, 8192), st.integers(1, 1000), guidance, prompts
    ),
    Pipeline.IMAGE_TO_IMAGE: st.builds(
        ImageToImageParams, prompts, st.floats(0.01, 1.0), st.integers(1, 1000), guidance, prompts
    ),
    Pipeline.IMAGE_TO_VIDEO: st.builds(
        ImageToVideoParams,
        st.integers(8, 4096),
        st.integers(8, 4096),
        st.integers(2, 256),
        st.integers(1, 120),
        st.integers(0, 255),
        st.floats(0.0, 1.0),
        st.integers(1, 1000),
        st.just(1.0),
        st.floats(1.0, 50.0),
        st.integers(1, 256),
    ),
    Pipeline.UPSCALE: st.one_of(
        st.builds(UpscaleParams, st.integers(1, 16)),
        st.builds(
            UpscaleParams, st.integers(1, 16), st.integers(1, 1 << 16), st.integers(1, 1 << 16), st.integers(1, 1 << 16)
        ),
    ),
    Pipeline.FRAME_INTERPOLATION: st.builds(FrameInterpolationParams, st.integers(2, 16)),
}


@st.composite
def specs(draw: st.DrawFn) -> JobSpec:
    pipeline = draw(st.sampled_from(list(Pipeline)))
    names, media_type = draw(st.sampled_from(PIPELINE_IO[pipeline]))
    inputs = tuple(
        BlobDescriptor(
            name,
            draw(st.sampled_from(["image/png", "image/jpeg", "video/mp4"])),
            draw(st.integers(1, 2**30)),
            draw(hexes),
        )
        for name in sorted(names)
    )
    field = pipeline.value.replace("-", "_")
    return JobSpec(
        pipeline=pipeline,
        model_id=draw(st.text(max_size=128)),
        seed=draw(st.integers(0, 2**63 - 1)),
        inputs=inputs,
        output=OutputExpectation(media_type, draw(st.integers(1, 2**40))),
        **{field: draw(_params[pipeline])},
    )


nonces = st.binary(min_size=16, max_size=32)
quote_requests = st.builds(QuoteRequest, specs(), nonces, st.integers(0, 10**15), st.integers(1, 24 * 3600 * 1000))


@st.composite
def quotes(draw: st.DrawFn) -> Quote:
    issued = draw(st.integers(0, 2**50))
    return Quote(
        quote_id=draw(st.text(min_size=1, max_size=64)),
        job_id=draw(hexes),
        worker_peer_id=WORKER.peer_id,
        price=draw(st.integers(0, 10**15)),
        eta_ms=draw(ms),
        warm=draw(st.booleans()),
        model_id=draw(st.text(max_size=128)),
        weights_sha256=draw(hexes),
        issued_at_ms=issued,
        expires_at_ms=issued + draw(st.integers(1, 24 * 3600 * 1000)),
    )


refusals = st.builds(Refusal, hexes, st.sampled_from(list(RefusalReason)), st.text(max_size=200), ms)
accepts = st.builds(Accept, st.text(min_size=1, max_size=64), hexes, st.lists(blobs, max_size=8).map(tuple))
progresses = st.builds(Progress, hexes, st.text(max_size=32), st.integers(0, 10**6), st.integers(0, 10**6), ms)
results = st.builds(Result, hexes, st.lists(blobs, min_size=1, max_size=16).map(tuple), st.binary(max_size=4096))
job_errors = st.builds(JobError, st.one_of(st.just(""), hexes), st.sampled_from(list(ErrorCode)), st.text(max_size=200))
cancels = st.builds(Cancel, hexes, st.text(max_size=128))
job_messages = st.one_of(quote_requests, quotes(), refusals, accepts, progresses, results, job_errors, cancels)


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    spec = draw(specs())
    nonce = draw(nonces)
    requester = draw(st.sampled_from([REQUESTER, MALLORY])).peer_id
    frames = draw(st.integers(1, 64))
    outputs = draw(
        st.lists(
            st.builds(
                OutputHashes,
                st.text(max_size=32),
                st.just(spec.output.media_type),
                st.integers(1, 2**40),
                hexes,
                hexes,
                st.lists(fingerprints, min_size=frames, max_size=frames).map(tuple),
                st.lists(fingerprints, min_size=frames, max_size=frames).map(tuple),
            ),
            min_size=1,
            max_size=4,
        )
    )
    return Receipt(
        job_id=job_id(spec, requester, nonce),
        requester_peer_id=requester,
        worker_peer_id=WORKER.peer_id,
        nonce=nonce,
        spec=spec,
        quote_id=draw(st.text(min_size=1, max_size=64)),
        price=draw(st.integers(0, 10**15)),
        model_id=spec.model_id or draw(st.text(max_size=128)),
        weights_sha256=draw(hexes),
        runtime=RuntimeFacts(
            draw(st.text(max_size=128)),
            draw(st.sampled_from(["float16", "bfloat16", "float32"])),
            tuple(draw(st.lists(st.builds(LibraryVersion, st.text(max_size=32), st.text(max_size=64)), max_size=16))),
        ),
        outputs=tuple(outputs),
        timings=Timings(draw(ms), draw(ms), draw(ms)),
        seq=draw(st.integers(0, 2**63 - 1)),
        issued_at_ms=draw(st.integers(0, 2**50)),
    )
