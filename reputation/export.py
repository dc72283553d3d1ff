"""The evidence export: every settled check with its signed receipts, checkable offline by anyone.

``lpnode reputation export -o FILE`` writes :data:`FORMAT` documents::

    {"format": "lpnode/reputation-evidence/1", "exported_at": 1.8e9,
     "evidence": [{"id", "at", "kind", "spec_id", "pipeline", "model_family", "verdict",
                   "blamed", "credited", "detail", "voided", "receipts": [{"worker_peer_id", "job_id", "receipt"}]}]}

``receipt`` is the signed receipt, base64. ``voided`` is null, or ``{"at", "reason"}`` for
a row whose blames were withdrawn because a peer on its majority was banned
later (the row stays, as signed, for audit). :func:`check_export` is what a
third party runs: each receipt verifies from its bytes alone (the signer's key
is in its peer id), names the worker it is filed under, and all receipts of one
row are for the spec the row names; blamed and credited peers are among the
signers. It cannot re-decide a verdict without the outputs, but it proves who
signed what for which job (and an equivocation row proves itself).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from lpnode.protocol.errors import ReceiptRejected
from lpnode.protocol.receipts import conflicting, verify_receipt

from .store import spec_id

__all__ = ["FORMAT", "check_export", "export_document", "wire_row"]

FORMAT = "lpnode/reputation-evidence/1"


def wire_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A store evidence row as JSON: receipts base64."""
    receipts = [{**r, "receipt": base64.b64encode(r["receipt"]).decode()} for r in row["receipts"]]
    return {**row, "receipts": receipts}


def export_document(rows: Sequence[Mapping[str, Any]], exported_at: float) -> dict[str, Any]:
    return {"format": FORMAT, "exported_at": exported_at, "evidence": list(rows)}


def check_export(document: Mapping[str, Any]) -> list[str]:
    """Problems found in an export (empty: every row is backed by receipts that verify)."""
    if document.get("format") != FORMAT:
        return [f"not an {FORMAT} document"]
    problems: list[str] = []
    for row in document.get("evidence", []):
        where = f"evidence {row.get('id')}"
        signers: list[str] = []
        receipts = []
        for item in row.get("receipts", []):
            try:
                receipt = verify_receipt(base64.b64decode(item["receipt"], validate=True))
            except (ReceiptRejected, binascii.Error, KeyError, TypeError) as exc:
                problems.append(f"{where}: a receipt does not verify ({exc})")
                continue
            if receipt.worker_peer_id != item.get("worker_peer_id") or receipt.job_id != item.get("job_id"):
                problems.append(f"{where}: receipt filed under another worker or job id")
            if spec_id(receipt.spec) != row.get("spec_id"):
                problems.append(f"{where}: a receipt is for another job spec")
            signers.append(receipt.worker_peer_id)
            receipts.append(receipt)
        if len(receipts) < 2:
            problems.append(f"{where}: fewer than two verified receipts")
        if not set(row.get("blamed", [])) | set(row.get("credited", [])) <= set(signers):
            problems.append(f"{where}: blames or credits a peer that signed no receipt here")
        if row.get("kind") == "equivocation" and not (len(receipts) == 2 and conflicting(*receipts)):
            problems.append(f"{where}: the equivocation receipts do not conflict")
    return problems
