"""Signed receipts of one job spec from several workers, for the reputation store tests."""

from __future__ import annotations

import dataclasses
import hashlib

from lpnode.protocol import NodeKey, job_id, sign_receipt
from lpnode.protocol.jobspec import JobSpec

from tests.protocol.job_factory import REQUESTER, make_quote, make_receipt, output_hashes, quote_request, text_spec

KEYS = [NodeKey(bytes([0x40 + i]) * 32) for i in range(6)]


def signed(key: NodeKey, output: bytes, *, nonce: bytes | None = None, spec: JobSpec | None = None) -> bytes:
    """``key``'s receipt for ``spec`` (a text-to-image job by default) with one output of bytes ``output``."""
    spec = spec or text_spec()
    nonce = nonce or hashlib.sha256(key.peer_id.encode() + output).digest()[:16]
    request = dataclasses.replace(quote_request(spec), nonce=nonce)
    quote = make_quote(request, worker_peer_id=key.peer_id)
    receipt = make_receipt(
        request,
        quote,
        worker_peer_id=key.peer_id,
        job_id=job_id(spec, REQUESTER.peer_id, nonce),
        outputs=(output_hashes(output),),
    )
    return sign_receipt(key, receipt)
