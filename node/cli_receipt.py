"""``lpnode receipt verify FILE [--output FILE...]``: check a worker's signed receipt offline.

No node is needed: the signer's public key is inside its peer id, and the job
id is recomputed from the spec the receipt carries. With ``--output`` each
given file must hash to one of the outputs the worker signed. Exit 0 when
everything holds, 1 with the reason when anything does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from lpnode.node.cli_format import uses_seed
from lpnode.protocol.errors import OutputMismatch, ReceiptRejected
from lpnode.protocol.jobs import MAX_RECEIPT_BYTES
from lpnode.protocol.receipts import Receipt, verify_receipt

EXIT_INVALID = 1
_CHUNK_BYTES = 1024 * 1024


def add_receipt_command(commands: Any) -> None:
    receipt = commands.add_parser("receipt", help="work with signed job receipts (offline)")
    actions = receipt.add_subparsers(dest="receipt_command", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check a receipt's signature and, with --output, the output files")
    verify.add_argument("file", type=Path, metavar="FILE", help="the receipt (<output>.receipt)")
    verify.add_argument(
        "--output", action="append", type=Path, default=[], metavar="FILE", help="an output to check (repeatable)"
    )
    verify.add_argument("--json", action="store_true", help="print the receipt as JSON")


def cmd_receipt(args: argparse.Namespace) -> int:
    try:
        receipt = load_and_verify(args.file, args.output)
    except ReceiptRejected as exc:
        print(f"lpnode: INVALID receipt {args.file}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(receipt_json(receipt), indent=2))
    else:
        print(receipt_text(receipt, args.output))
    return 0


def load_and_verify(path: Path, outputs: list[Path]) -> Receipt:
    """The verified receipt in ``path``; :class:`ReceiptRejected` with the reason otherwise."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_RECEIPT_BYTES + 1)  # bounded: what is past the limit is never read
    except OSError as exc:
        raise ReceiptRejected("unreadable", f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_RECEIPT_BYTES:  # said here: verify_receipt would name the bytes read, not the file's size
        raise ReceiptRejected("oversized", f"over the {MAX_RECEIPT_BYTES}-byte receipt limit")
    receipt = verify_receipt(data)
    signed = {out.sha256: out.name for out in receipt.outputs}
    for output in outputs:
        digest = file_sha256(output)
        if digest not in signed:
            raise OutputMismatch(f"{output} hashes to {digest}; the receipt names {', '.join(signed)}")
    return receipt


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as exc:
        raise ReceiptRejected("unreadable", f"{path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    """The receipt as JSON-able data (bytes as hex)."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return {"valid": True, **plain(dataclasses.asdict(receipt))}


def receipt_text(receipt: Receipt, checked: list[Path]) -> str:
    spec = receipt.spec
    params = getattr(spec, str(spec.pipeline).replace("-", "_"), None)
    issued = datetime.datetime.fromtimestamp(receipt.issued_at_ms / 1000, tz=datetime.UTC)
    lines = [
        "VALID receipt: signature and job id check out",
        f"job id     {receipt.job_id}",
        f"worker     {receipt.worker_peer_id}",
        f"requester  {receipt.requester_peer_id}",
        f"model      {receipt.model_id}",
        f"weights    sha256 {receipt.weights_sha256}",
        f"pipeline   {spec.pipeline}",
    ]
    if params is not None:
        for field in dataclasses.fields(params):
            lines.append(f"  {field.name} = {getattr(params, field.name)!r}")
    if uses_seed(spec.pipeline):  # signed all the same (see --json), but it shapes nothing here
        lines.append(f"seed       {spec.seed}")
    for blob in spec.inputs:
        lines.append(f"input      {blob.name} {blob.media_type} {blob.size_bytes} B sha256 {blob.sha256}")
    for out in receipt.outputs:
        lines.append(f"output     {out.name} {out.media_type} {out.size_bytes} B")
        lines.append(f"  sha256        {out.sha256}")
        lines.append(f"  pixel sha256  {out.pixel_sha256} ({len(out.phash)} image(s)/frame(s) fingerprinted)")
    libraries = ", ".join(f"{lib.name} {lib.version}" for lib in receipt.runtime.libraries)
    lines += [
        f"runtime    {receipt.runtime.device}, {receipt.runtime.dtype}" + (f"; {libraries}" if libraries else ""),
        f"timings    queue {receipt.timings.queue_ms} ms, load {receipt.timings.load_ms} ms, "
        f"run {receipt.timings.run_ms} ms",
        f"price      {receipt.price} micro-credits (quote {receipt.quote_id})",
        f"sequence   {receipt.seq}",
        f"issued     {issued.isoformat(timespec='seconds')}",
    ]
    for path in checked:
        lines.append(f"checked    {path}: matches a signed output")
    return "\n".join(lines)


__all__ = ["add_receipt_command", "cmd_receipt", "load_and_verify", "receipt_json", "receipt_text"]
