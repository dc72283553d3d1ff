"""Submit a job, follow it to the end, save what it made: the part every job command shares.

The job is submitted asynchronously (``Prefer: respond-async``) so the
command can draw progress from ``/v1/jobs/{id}/events`` and cancel the job
(``DELETE``) on Ctrl-C: a job the user gave up on must not keep a worker busy
and a reservation held. Outputs are checked against the hash in their url and
against the worker's signed receipt before they are called saved.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio
from lpnode.node.cli_progress import ProgressDisplay
from lpnode.node.client import EventStreamBroken, LpnodeClient, NodeNotRunning, RpcError
from lpnode.protocol.errors import LpnodeError, ReceiptRejected
from lpnode.protocol.receipts import Receipt, verify_receipt

T = TypeVar("T")

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
MAX_RECONNECTS = 3  # the event stream ended before `done`: ask again this often, then give up
CANCEL_TIMEOUT_S = 10.0  # after Ctrl-C: how long to wait for the node to confirm the cancel
_SHA256_URL = re.compile(r"/([0-9a-f]{64})$")


class JobNotDone(LpnodeError):
    """The job ended in a state other than ``succeeded``; the message says why."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        job_id, state = record.get("id", "?"), record.get("state", "?")
        error = record.get("error") or {}
        if state == "cancelled":
            text = f"job {job_id} was cancelled"
        elif state == "interrupted":
            text = f"job {job_id} was interrupted: its node stopped while it ran"
        else:
            text = f"job {job_id} {state}: {error.get('message', 'no reason given')}"
            if error.get("status"):
                text += f" (HTTP {error['status']} {error.get('error', '')})".replace(" )", ")")
        super().__init__(text)
        self.record = dict(record)


@dataclass(frozen=True)
class Saved:
    """One output written to disk, with the receipt of the network job that made it."""

    path: Path
    size_bytes: int
    seed: int | None
    job: Mapping[str, Any]  # the response's `jobs[n]` entry: worker, model, price, attempts
    receipt_path: Path
    receipt: Receipt
    media_type: str = ""  # what the receipt says the bytes are (image/png, video/mp4)


async def until_interrupted(run: Callable[[], Awaitable[T]]) -> T | None:
    """``run()``'s result, or None when SIGINT (Ctrl-C) arrives first; ``run`` is then cancelled."""
    result: list[T] = []
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def body() -> None:
                result.append(await run())
                nursery.cancel_scope.cancel()

            nursery.start_soon(body)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return result[0] if result else None


async def cancel_quietly(client: LpnodeClient, job_id: str) -> str:
    """Cancel ``job_id`` after an interrupt; the line to tell the user."""
    with trio.move_on_after(CANCEL_TIMEOUT_S):
        try:
            record = await client.cancel_job(job_id)
        except RpcError as exc:
            if exc.status_code == 409:
                return f"job {job_id} had already finished"
            return f"job {job_id} may still run: cancelling failed: {exc}"
        return f"job {job_id} {record.get('state', 'cancelled')}"
    return f"job {job_id} may still run: the node did not confirm the cancel"


async def follow(client: LpnodeClient, record: Mapping[str, Any], display: ProgressDisplay) -> dict[str, Any]:
    """Follow a submitted job's events to its final record."""
    job_id = str(record["id"])
    current = dict(record)
    for _ in range(MAX_RECONNECTS + 1):
        if current.get("state") in FINAL_STATES:
            return current
        display.state(str(current.get("state", "queued")))
        try:
            async with contextlib.aclosing(client.job_events(job_id)) as events:
                async for event in events:
                    if event.name == "progress":
                        display.progress(event.data)
                    elif event.name == "state":
                        display.state(str(event.data.get("state", "?")))
                    elif event.name == "attempt":
                        display.attempt(event.data)
                    elif event.name == "done":
                        display.state(str(event.data.get("state", "?")))
                        return event.data
        except EventStreamBroken:
            pass  # a node that stopped answers nothing below; one that is still there says where the job is
        try:
            current = await client.job(job_id)  # the stream ended early: where is it now?
        except NodeNotRunning:
            raise LpnodeError(
                f"the node stopped while job {job_id} ran; once it runs again, `lpnode job {job_id}` shows"
                " what became of it"
            ) from None
    raise LpnodeError(f"job {job_id}: the node's event stream kept ending before the job did")


def output_paths(output: Path, count: int) -> list[Path]:
    """``out.png`` for one output; ``out-0.png``, ``out-1.png``, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def receipt_path(output: Path) -> Path:
    return output.with_name(output.name + ".receipt")


async def save_outputs(client: LpnodeClient, result: Mapping[str, Any], output: Path) -> list[Saved]:
    """Download every output of a finished job to ``output`` (numbered when several), with its receipt.

    Image ``i`` was made by network job ``i`` (one image per job); each output is
    checked against its url's hash and its receipt's signed output hashes.
    """
    images: Sequence[Mapping[str, Any]] = result.get("images") or []
    jobs: Sequence[Mapping[str, Any]] = result.get("jobs") or []
    if not images:
        raise LpnodeError("the job succeeded but its result names no outputs")
    if len(jobs) != len(images):
        raise LpnodeError(f"the result names {len(images)} outputs but {len(jobs)} network jobs")
    saved: list[Saved] = []
    for media, job, path in zip(images, jobs, output_paths(output, len(images)), strict=True):
        data = await client.output(str(media["url"]))
        digest = hashlib.sha256(data).hexdigest()
        named = _SHA256_URL.search(str(media["url"]))
        if named and named.group(1) != digest:
            raise LpnodeError(f"output {media['url']} arrived with sha256 {digest}")
        receipt_bytes = base64.b64decode(str(job["receipt"]))
        receipt = verify_receipt(receipt_bytes)
        if digest not in {out.sha256 for out in receipt.outputs}:
            raise ReceiptRejected("output_mismatch", f"{path.name} hashes to {digest}, not to what its receipt names")
        write_file(path, data)
        write_file(receipt_path(path), receipt_bytes)
        seed = media.get("seed")
        kind = next((out.media_type for out in receipt.outputs if out.sha256 == digest), "")
        saved.append(
            Saved(path, len(data), seed if isinstance(seed, int) else None, job, receipt_path(path), receipt, kind)
        )
    return saved


def check_output(path: Path) -> Path:
    """``path`` if an output can be written there; an error before the job is submitted (and paid) if not.

    Found by hand: a job to ``-o missing-dir/out.png`` ran, was paid for, and only then failed to save.
    """
    parent = path.parent
    if path.is_dir():
        raise LpnodeError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise LpnodeError(f"cannot write {path}: no directory {parent}")
    if not os.access(parent, os.W_OK):
        raise LpnodeError(f"cannot write {path}: directory {parent} is not writable")
    return path


def write_file(path: Path, data: bytes) -> None:
    """Write via a temporary name so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LpnodeError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_input(path: Path, limit_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit_bytes:
            raise LpnodeError(f"{path} is {size} bytes; inputs are limited to {limit_bytes}")
        return path.read_bytes()
    except OSError as exc:
        raise LpnodeError(f"cannot read {path}: {exc.strerror or exc}") from None


async def submit_and_save(
    client: LpnodeClient,
    submit: Callable[[], Awaitable[dict[str, Any]]],
    output: Path,
    display: ProgressDisplay,
) -> tuple[dict[str, Any], list[Saved]] | str:
    """Submit, follow, save: the final record and what was saved, or (after Ctrl-C) the line to print.

    A node answering 200 to ``Prefer: respond-async`` (it runs the job
    synchronously) is accepted: its answer is the finished result itself.
    """
    submitted: list[str] = []

    async def run() -> dict[str, Any]:
        answer = await submit()
        if "images" in answer:  # finished synchronously
            return {"id": answer.get("request_id"), "state": "succeeded", "result": answer, "error": None}
        submitted.append(str(answer["id"]))
        return await follow(client, answer, display)

    try:
        record = await until_interrupted(run)
    finally:
        display.close()
    if record is None:
        if not submitted:
            return "interrupted before the node accepted the job"
        return "interrupted: " + await cancel_quietly(client, submitted[0])
    if record.get("state") != "succeeded" or not isinstance(record.get("result"), dict):
        raise JobNotDone(record)
    return record, await save_outputs(client, record["result"], output)


__all__ = [
    "FINAL_STATES",
    "JobNotDone",
    "Saved",
    "cancel_quietly",
    "check_output",
    "follow",
    "output_paths",
    "read_input",
    "receipt_path",
    "save_outputs",
    "submit_and_save",
    "until_interrupted",
    "write_file",
]
