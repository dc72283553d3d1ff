"""Model limits in adverts: the requester drops offers whose limits a job exceeds; offers without limits stay."""

from __future__ import annotations

import dataclasses

from lpnode.node.job_requester import JobRequest, build_spec
from lpnode.node.peer_choice import fit_offers, limits_refusal
from lpnode.protocol.advert import CapabilityAdvert, ModelLimits, ModelOffer
from lpnode.protocol.codec import decode, encode
from lpnode.protocol.jobspec import Pipeline, TextToImageParams

LIMITS = ModelLimits(max_pixels=128 * 128, max_side=256, max_steps=8, max_frames=1, max_batch=4)
OFFER = ModelOffer("text-to-image", "lpnode/tiny-sdxl", "ab" * 32, True, 1.0, 100, LIMITS)


def spec(size: int = 64, steps: int = 2) -> object:
    params = TextToImageParams("x", size, size, steps, 0.0, "")
    return build_spec(JobRequest(Pipeline.TEXT_TO_IMAGE, params, "lpnode/tiny-sdxl"), {}, 10**7)


def advert(*offers: ModelOffer, peer: str = "12D3KooWpeer") -> CapabilityAdvert:
    return CapabilityAdvert(peer, 1, 1, 2, (), "0.1.0", 1, (), offers, 0, 4)


def test_limits_refusal_names_the_parameter() -> None:
    assert limits_refusal(LIMITS, spec()) == ""  # type: ignore[arg-type]
    assert "num_inference_steps 9" in limits_refusal(LIMITS, spec(steps=9))  # type: ignore[arg-type]
    assert "256-pixel side" in limits_refusal(LIMITS, spec(size=512))  # type: ignore[arg-type]
    assert "pixels" in limits_refusal(LIMITS, spec(size=192))  # type: ignore[arg-type]
    assert limits_refusal(None, spec(steps=999)) == ""  # type: ignore[arg-type]


def test_fit_offers_drops_only_offers_whose_limits_refuse() -> None:
    old = dataclasses.replace(OFFER, limits=None)  # an older node's offer: asked as before
    kept, dropped = fit_offers([advert(OFFER), advert(old, peer="12D3KooWolder")], spec(steps=9))  # type: ignore[arg-type]
    assert [a.models for a in kept] == [(), (old,)] and len(dropped) == 1


def test_an_offer_without_limits_decodes_from_an_older_nodes_bytes() -> None:
    new = advert(OFFER)
    assert decode(encode(new), CapabilityAdvert) == new
    legacy = advert(dataclasses.replace(OFFER, limits=None))
    assert decode(encode(legacy), CapabilityAdvert).models[0].limits is None
