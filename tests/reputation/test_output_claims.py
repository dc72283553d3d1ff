"""What a receipt claims about its output never makes two runs agree; the pixels do (QA3 Q1).

Two identities of one cheat signed the same made-up ``pixel_sha256`` over different images, and
the spot check settled "agree" from the two claims without decoding a pixel. Now only identical
files (whose bytes the requester checked against the receipts' ``sha256``) agree unseen, and a
decoded image whose pixels are not its receipt's claim disagrees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np
from lpnode.protocol.jobspec import Pipeline
from lpnode.protocol.receipts import OutputHashes, Receipt
from lpnode.reputation.compare import Verdict, compare_outputs, compare_receipts
from PIL import Image

from ..protocol.job_factory import make_quote, make_receipt, quote_request


def png(seed: int) -> tuple[bytes, str]:
    """A 64² noise image's PNG and the sha256 of its RGB pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue(), hashlib.sha256(pixels.tobytes()).hexdigest()


def receipt_for(data: bytes, pixel_sha256: str) -> Receipt:
    request = quote_request()
    receipt = make_receipt(request, make_quote(request))
    output = OutputHashes(
        "output", "image/png", len(data), hashlib.sha256(data).hexdigest(), pixel_sha256, ("0" * 16,), ("0" * 16,)
    )
    return dataclasses.replace(receipt, outputs=(output,))


def test_equal_claimed_pixel_hashes_over_different_files_settle_nothing() -> None:
    (first, _), (second, _) = png(1), png(2)
    made_up = "ab" * 32
    assert compare_receipts(receipt_for(first, made_up), receipt_for(second, made_up)) is None  # the pixels decide
    same = compare_receipts(receipt_for(first, made_up), receipt_for(first, made_up))
    assert same is not None and (same.verdict, same.reason) == (Verdict.AGREE, "files_equal")


def test_a_decoded_image_that_is_not_its_receipts_claim_disagrees() -> None:
    (first, first_pixels), (again, again_pixels) = png(1), png(1)
    honest = compare_outputs(
        Pipeline.TEXT_TO_IMAGE, first, again, "image/png", claimed_pixels=(first_pixels, again_pixels)
    )
    assert honest.verdict is Verdict.AGREE
    lie = compare_outputs(Pipeline.TEXT_TO_IMAGE, first, again, "image/png", claimed_pixels=(first_pixels, "ab" * 32))
    assert (lie.verdict, lie.reason) == (Verdict.DISAGREE, "false_pixel_hash_b")
    unchecked = compare_outputs(Pipeline.TEXT_TO_IMAGE, first, again, "image/png")  # calibration passes no claims
    assert unchecked.verdict is Verdict.AGREE
