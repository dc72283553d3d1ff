"""Job messages: round trips, canonical job ids, bounds, and frames turned away."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import given
from lpnode.protocol import (
    Accept,
    BlobDescriptor,
    Cancel,
    ErrorCode,
    InvalidSignature,
    JobError,
    JobMessage,
    JobSpec,
    MalformedMessage,
    OversizedMessage,
    Pipeline,
    Progress,
    QuoteRequest,
    Refusal,
    RefusalReason,
    Result,
    TextToImageParams,
    decode,
    decode_job_message,
    encode,
    encode_job_message,
    job_id,
    seal,
)
from lpnode.protocol.codec import max_frame_bytes
from lpnode.protocol.envelope import SignedEnvelope
from lpnode.protocol.jobs import MAX_JOB_FRAME_BYTES
from lpnode.protocol.jobspec import (
    OUTPUT_MEDIA_TYPE,
    OUTPUT_MEDIA_TYPES,
    PIPELINE_IO,
    UpscaleParams,
    output_media_type,
)

from .job_factory import (
    MALLORY,
    NONCE,
    REQUESTER,
    WORKER,
    job_messages,
    make_quote,
    quote_request,
    specs,
    text_spec,
    upscale_spec,
)


@given(job_messages)
def test_every_job_message_round_trips(msg: JobMessage) -> None:
    assert decode_job_message(encode_job_message(msg, WORKER)) == msg


@given(specs())
def test_spec_round_trips_and_its_job_id_is_stable(spec: JobSpec) -> None:
    request = QuoteRequest(spec, NONCE, 1, 1)
    again = decode(encode(request), QuoteRequest).spec
    assert again == spec
    assert job_id(again, REQUESTER.peer_id, NONCE) == job_id(spec, REQUESTER.peer_id, NONCE)


def test_job_id_binds_spec_requester_and_nonce() -> None:
    spec = text_spec()
    base = job_id(spec, REQUESTER.peer_id, NONCE)
    assert len(base) == 64
    assert job_id(text_spec(seed=8), REQUESTER.peer_id, NONCE) != base
    assert job_id(spec, MALLORY.peer_id, NONCE) != base
    assert job_id(spec, REQUESTER.peer_id, b"\x00" * 16) != base


def test_an_integer_float_parameter_gives_the_same_job_id() -> None:
    """guidance_scale=1 and 1.0 must be one job, or a spec built in code and one decoded differ."""
    as_int = TextToImageParams("x", 64, 64, 1, 1, "")
    as_float = TextToImageParams("x", 64, 64, 1, 1.0, "")
    spec_int = dataclasses.replace(text_spec(), text_to_image=as_int)
    spec_float = dataclasses.replace(text_spec(), text_to_image=as_float)
    assert type(as_int.guidance_scale) is float
    assert job_id(spec_int, REQUESTER.peer_id, NONCE) == job_id(spec_float, REQUESTER.peer_id, NONCE)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"text_to_image": None}, "exactly text_to_image"),
        ({"upscale": upscale_spec().upscale}, "exactly text_to_image"),
        ({"inputs": upscale_spec().inputs}, "takes inputs"),
        ({"output": dataclasses.replace(text_spec().output, media_type="video/mp4")}, "outputs image/png"),
        ({"seed": -1}, "seed"),
    ],
)
def test_inconsistent_specs_are_refused(change: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(text_spec(), **change)


def video_upscale_spec(**change: object) -> JobSpec:
    spec = upscale_spec()
    video = dataclasses.replace(spec.inputs[0], name="video", media_type="video/mp4")
    output = dataclasses.replace(spec.output, media_type="video/mp4")
    return dataclasses.replace(spec, **{"inputs": (video,), "output": output, **change})


def test_upscale_takes_an_image_or_a_video_and_makes_the_same_kind() -> None:
    spec = video_upscale_spec()
    assert decode(encode(QuoteRequest(spec, NONCE, 1, 1)), QuoteRequest).spec == spec
    assert output_media_type(Pipeline.UPSCALE, ["video"]) == "video/mp4"
    assert output_media_type(Pipeline.UPSCALE, ["image"]) == "image/png"
    assert OUTPUT_MEDIA_TYPES[Pipeline.UPSCALE] == {"image/png", "video/mp4"}
    assert OUTPUT_MEDIA_TYPE[Pipeline.UPSCALE] == "image/png"  # from its first input choice
    image, video = upscale_spec().inputs[0], spec.inputs[0]
    with pytest.raises(ValueError, match=r"takes inputs \['image'\] or \['video'\], got \['image', 'video'\]"):
        video_upscale_spec(inputs=(image, video))
    with pytest.raises(ValueError, match=r"got \[\]"):
        video_upscale_spec(inputs=())
    with pytest.raises(ValueError, match=r"upscale of \['video'\] outputs video/mp4"):
        video_upscale_spec(output=upscale_spec().output)
    with pytest.raises(ValueError, match=r"upscale of \['image'\] outputs image/png"):
        dataclasses.replace(upscale_spec(), output=spec.output)
    with pytest.raises(ValueError, match="takes inputs"):  # interpolation has no image choice
        output_media_type(Pipeline.FRAME_INTERPOLATION, ["image"])


def test_an_upscale_declares_its_input_all_together_or_not_at_all() -> None:
    assert not UpscaleParams(4).declared and UpscaleParams(4).output_pixels() == 0
    video = UpscaleParams(2, 64, 48, 10)
    assert video.declared and video.output_pixels() == 128 * 96 * 10
    for partial in [(2, 64, 0, 0), (2, 0, 0, 3), (2, 64, 48, 0)]:
        with pytest.raises(ValueError, match="all together"):
            UpscaleParams(*partial)
    with pytest.raises(ValueError, match="input_frames"):
        UpscaleParams(2, 8, 8, -1)
    spec = video_upscale_spec(upscale=video)
    assert decode(encode(QuoteRequest(spec, NONCE, 1, 1)), QuoteRequest).spec == spec


def test_spec_bounds_mirror_the_model_requests() -> None:
    with pytest.raises(ValueError, match="width"):
        TextToImageParams("x", 4, 512, 1, 0.0, "")
    with pytest.raises(ValueError, match="sha256"):
        BlobDescriptor("image", "image/png", 10, "AB" * 32)  # one spelling per hash: lowercase
    with pytest.raises(ValueError, match="nonce"):
        QuoteRequest(text_spec(), b"short", 1, 1)


def test_spec_params_mirror_the_model_request_fields() -> None:
    """The wire spec carries exactly what each model request needs: params + seed + bulky inputs."""
    base = pytest.importorskip("lpnode.models.base")
    for pipeline in Pipeline:
        request_type = base.REQUEST_TYPES[base.PipelineKind(pipeline.value)]
        params_type = typing.get_type_hints(JobSpec)[pipeline.value.replace("-", "_")]
        (params_cls,) = [a for a in typing.get_args(params_type) if a is not type(None)]
        declared = {"input_width", "input_height", "input_frames"}  # describe the input, for the quote
        wire = {f.name for f in dataclasses.fields(params_cls)} - declared | {"seed"}
        bulky = {f.name for f in dataclasses.fields(request_type) if "bytes" in str(f.type)}
        spec_inputs = {name for names, _ in PIPELINE_IO[pipeline] for name in names}
        assert wire | bulky == {f.name for f in dataclasses.fields(request_type)}, pipeline
        assert bulky == spec_inputs, pipeline


def _any_spec(pipeline: Pipeline) -> JobSpec:
    return {Pipeline.TEXT_TO_IMAGE: text_spec(), Pipeline.UPSCALE: upscale_spec()}.get(pipeline) or _spec_with_input(
        pipeline
    )


def _spec_with_input(pipeline: Pipeline) -> JobSpec:
    from lpnode.protocol import FrameInterpolationParams, ImageToImageParams, ImageToVideoParams

    params = {
        Pipeline.IMAGE_TO_IMAGE: ImageToImageParams("x", 0.5, 2, 0.0, ""),
        Pipeline.IMAGE_TO_VIDEO: ImageToVideoParams(64, 64, 4, 7, 127, 0.02, 2, 1.0, 3.0, 8),
        Pipeline.FRAME_INTERPOLATION: FrameInterpolationParams(2),
    }[pipeline]
    name = "video" if pipeline is Pipeline.FRAME_INTERPOLATION else "image"
    return JobSpec(
        pipeline,
        "",
        0,
        (BlobDescriptor(name, "image/png", 1, "0" * 64),),
        dataclasses.replace(text_spec().output, media_type=OUTPUT_MEDIA_TYPE[pipeline]),
        **{pipeline.value.replace("-", "_"): params},
    )


# ---------------------------------------------------------------- bounds

WIDE = "\U0001f600"  # 4 bytes in UTF-8: the worst case for a character bound


def _largest_messages() -> list[JobMessage]:
    blob = BlobDescriptor(WIDE * 32, WIDE * 64, 2**40, "f" * 64)
    base = _spec_with_input(Pipeline.IMAGE_TO_IMAGE)
    assert base.image_to_image is not None
    spec = dataclasses.replace(
        base,
        model_id=WIDE * 128,
        seed=2**63 - 1,
        inputs=(dataclasses.replace(blob, name="image"),),
        image_to_image=dataclasses.replace(base.image_to_image, prompt=WIDE * 2000, negative_prompt=WIDE * 2000),
    )
    request = QuoteRequest(spec, b"\xff" * 32, 10**15, 24 * 3600 * 1000)
    quote = make_quote(quote_request(), quote_id=WIDE * 64, model_id=WIDE * 128, price=10**15, eta_ms=10**7)
    jid = "f" * 64
    return [
        request,
        quote,
        Refusal(jid, RefusalReason.UNSUPPORTED_PARAMS, WIDE * 512, 10**7),
        Accept(WIDE * 64, jid, (blob,) * 8),
        Progress(jid, WIDE * 32, 10**6, 10**6, 10**7),
        Result(jid, (blob,) * 16, b"\xff" * (256 * 1024)),
        JobError(jid, ErrorCode.INTERNAL, WIDE * 512),
        Cancel(jid, WIDE * 128),
    ]


@pytest.mark.parametrize("msg", _largest_messages(), ids=lambda m: type(m).__name__)
def test_the_largest_valid_message_fits_its_frame(msg: JobMessage) -> None:
    frame = encode_job_message(msg, WORKER)
    assert len(frame) <= MAX_JOB_FRAME_BYTES
    assert decode_job_message(frame) == msg


def test_oversized_frames_are_refused_before_decoding() -> None:
    cancel = encode(Cancel("a" * 64, "user"))
    with pytest.raises(OversizedMessage):
        decode(cancel + b"\x00" * max_frame_bytes(Cancel), Cancel)
    with pytest.raises(OversizedMessage):
        decode_job_message(b"\x93" + b"\x00" * MAX_JOB_FRAME_BYTES)


def test_a_field_over_its_bound_is_malformed() -> None:
    frame = encode(Cancel("a" * 64, "user")).replace(b"\xa4user", b"\xd9\x81" + b"u" * 129)
    with pytest.raises(MalformedMessage, match="reason"):
        decode_job_message(frame)


# ---------------------------------------------------------------- signed quotes


def test_quotes_travel_signed_by_the_worker_they_name() -> None:
    quote = make_quote(quote_request())
    frame = encode_job_message(quote, WORKER)
    assert decode(frame, SignedEnvelope).signer == WORKER.peer_id
    with pytest.raises(ValueError, match="signed by the worker"):
        encode_job_message(quote, MALLORY)


def test_an_unsigned_quote_is_refused() -> None:
    with pytest.raises(MalformedMessage, match="signed"):
        decode_job_message(encode(make_quote(quote_request())))


def test_a_tampered_quote_is_refused() -> None:
    frame = encode_job_message(make_quote(quote_request(), price=500), WORKER)
    envelope = decode(frame, SignedEnvelope)
    cheaper = encode(make_quote(quote_request(), price=5))
    with pytest.raises(InvalidSignature):
        decode_job_message(encode(dataclasses.replace(envelope, payload=cheaper)))


def test_a_quote_signed_by_another_key_for_the_named_worker_is_refused() -> None:
    quote = make_quote(quote_request())  # names WORKER
    forged = seal(MALLORY, quote)  # Mallory signs it as herself
    with pytest.raises(InvalidSignature, match="signed by"):
        decode_job_message(forged)
    envelope = decode(forged, SignedEnvelope)
    with pytest.raises(InvalidSignature):  # or claims to be the worker
        decode_job_message(encode(dataclasses.replace(envelope, signer=WORKER.peer_id)))


def test_a_signature_from_another_domain_does_not_open_as_a_quote() -> None:
    quote = make_quote(quote_request())
    payload = encode(quote)
    wrong_domain = SignedEnvelope(WORKER.peer_id, payload, WORKER.sign("lpnode/receipt/1", payload))
    with pytest.raises(InvalidSignature):
        decode_job_message(encode(wrong_domain))


def test_other_registered_types_do_not_belong_on_a_job_stream() -> None:
    from .test_advert import make_advert

    with pytest.raises(MalformedMessage, match="job stream"):
        decode_job_message(encode(make_advert()))
