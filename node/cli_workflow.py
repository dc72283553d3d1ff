"""``lpnode workflow run FILE [-o OUT] [--input FILE]``: a chain of pipelines, each step's output the next one's input.

FILE is TOML or JSON in the shape of ``POST /v1/workflows``::

    deadline = 300
    [[steps]]
    pipeline = "text-to-image"
    params = { prompt = "a lighthouse at dusk", width = 64, height = 64 }
    [[steps]]
    pipeline = "image-to-video"
    params = { num_frames = 4 }

A first step that needs a file takes it from ``--input`` (sent as base64).
The final output goes to OUT; step k's receipt (k from 1) to ``OUT.step-<k>.receipt``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio
from lpnode.node.cli_follow import (
    JobNotDone,
    cancel_quietly,
    check_output,
    follow,
    output_paths,
    read_input,
    until_interrupted,
    write_file,
)
from lpnode.node.cli_format import format_note, size_text, uses_seed
from lpnode.node.cli_progress import WorkflowProgress
from lpnode.node.client import LpnodeClient, RpcError
from lpnode.protocol.errors import ConfigError, LpnodeError, ReceiptRejected
from lpnode.protocol.receipts import verify_receipt

EXIT_INTERRUPTED = 130
MAX_SPEC_BYTES = 1024 * 1024
MAX_INPUT_BYTES = 512 * 1024 * 1024
VIDEO_PIPELINES = frozenset({"image-to-video", "frame-interpolation"})  # their output is an MP4
INPUT_PIPELINES = frozenset({"image-to-image", "image-to-video", "upscale", "frame-interpolation"})  # take a file
MAX_PAID_RECEIPTS = 1024  # of a workflow that did not finish: more than its steps × images can make


def add_workflow_command(commands: Any, common: argparse.ArgumentParser) -> None:
    workflow = commands.add_parser("workflow", help="run chains of pipelines")
    actions = workflow.add_subparsers(dest="workflow_command", required=True, metavar="ACTION")
    run = actions.add_parser("run", parents=[common], help="run a workflow file (TOML or JSON) on the network")
    run.add_argument("file", type=Path, metavar="FILE")
    run.add_argument("-o", "--output", type=Path, help="the final output (default: FILE's name, .png or .mp4)")
    run.add_argument("--input", type=Path, metavar="FILE", help="the first step's input image or video")
    run.add_argument("--json", action="store_true", help="print the final workflow record as JSON")


def load_spec(path: Path, input_file: Path | None = None) -> dict[str, Any]:
    """The workflow body from a TOML (``.toml``) or JSON file; ConfigError says what is wrong."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read workflow {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise ConfigError(f"workflow {path} is over {MAX_SPEC_BYTES} bytes")
    try:
        spec = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(
            f"workflow {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}"
        ) from None
    if not isinstance(spec, dict):
        raise ConfigError(f"workflow {path} must be an object with a 'steps' list")
    steps = spec.get("steps")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) and "pipeline" in s for s in steps):
        raise ConfigError(f"workflow {path} needs 'steps': a non-empty list of tables with a 'pipeline'")
    first = str(steps[0]["pipeline"])
    if input_file is not None:
        spec["input"] = base64.b64encode(read_input(input_file, MAX_INPUT_BYTES)).decode()
    elif first in INPUT_PIPELINES and "input" not in spec:
        # the node would ask for "base64 in `input`": true of the API, but a CLI user gives a file
        raise ConfigError(f"workflow {path}: step 1 ({first}) needs an input file: give it with --input FILE")
    return spec


def _media_type(data: bytes) -> str:
    """image/png or video/mp4 by the bytes' signature ("" for neither): what the note on a saved name needs."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return "video/mp4" if data[4:8] == b"ftyp" else ""


def default_output(spec_path: Path, spec: Mapping[str, Any]) -> Path:
    last = str(spec["steps"][-1].get("pipeline", ""))
    return spec_path.with_suffix(".mp4" if last in VIDEO_PIPELINES else ".png")


def cmd_workflow(args: argparse.Namespace, data_dir: Path) -> int:
    spec = load_spec(args.file, args.input)
    output: Path = check_output(args.output or default_output(args.file, spec))

    async def main() -> int:
        async with LpnodeClient.from_data_dir(data_dir) as client:
            display = WorkflowProgress(sys.stderr, [str(step["pipeline"]) for step in spec["steps"]])
            submitted: list[str] = []

            async def run() -> dict[str, Any]:
                answer = await client.run_workflow(spec, wait=False)
                if "images" in answer:  # the node ran it synchronously
                    return {"id": answer.get("request_id"), "state": "succeeded", "result": answer}
                submitted.append(str(answer["id"]))
                return await follow(client, answer, display)

            try:
                record = await until_interrupted(run)
            finally:
                display.close()
            if record is None:
                why = await cancel_quietly(client, submitted[0]) if submitted else "before the node accepted it"
                print(f"lpnode: interrupted: {why}", file=sys.stderr)
                if submitted:  # steps that ended before the Ctrl-C were paid for too
                    for line in await save_paid_receipts(client, submitted[0], output):
                        print(line, file=sys.stderr)
                return EXIT_INTERRUPTED
            if record.get("state") != "succeeded" or not isinstance(record.get("result"), dict):
                if submitted:  # the steps that ran were paid for: their receipts are the proof
                    for line in await save_paid_receipts(client, submitted[0], output):
                        print(line, file=sys.stderr)
                raise JobNotDone(record)
            lines = await save_workflow(client, record["result"], output)
        print(json.dumps(record, indent=2) if args.json else "\n".join(lines))
        return 0

    return trio.run(main)


async def save_workflow(client: LpnodeClient, result: Mapping[str, Any], output: Path) -> list[str]:
    """Save the final output(s) and every step's receipts; the summary lines."""
    media: Sequence[Mapping[str, Any]] = result.get("images") or [{"url": url} for url in result.get("outputs") or []]
    if not media:
        raise LpnodeError("the workflow succeeded but names no output")
    lines: list[str] = []
    digests: dict[str, Path] = {}
    for item, path in zip(media, output_paths(output, len(media)), strict=True):
        data = await client.output(str(item["url"]))
        write_file(path, data)
        digests[hashlib.sha256(data).hexdigest()] = path
        lines.append(f"saved {path} ({size_text(len(data))}{format_note(path, _media_type(data))})")
    total = 0
    last_outputs: set[str] = set()
    step_ids = result.get("steps") or []
    # steps count from 1, as the progress display shows them ("step 1/4 text-to-image")
    for k, step_id in enumerate(step_ids, start=1):
        step = await client.job(str(step_id))
        jobs = (step.get("result") or {}).get("jobs") or []
        last_outputs = set()
        for n, job in enumerate(jobs):
            receipt_bytes = base64.b64decode(str(job["receipt"]))
            receipt = verify_receipt(receipt_bytes)
            last_outputs |= {out.sha256 for out in receipt.outputs}
            suffix = f".step-{k}.receipt" if len(jobs) == 1 else f".step-{k}-{n}.receipt"
            path = output.with_name(output.name + suffix)
            write_file(path, receipt_bytes)
            total += int(job.get("price", 0))
            seed = f"seed {receipt.spec.seed}, " if uses_seed(receipt.spec.pipeline) else ""
            lines.append(
                f"  step {k}/{len(step_ids)} {step.get('kind', '?')}: worker {job.get('worker_peer_id', '?')}, "
                f"model {job.get('model_id', '?')}, price {job.get('price', '?')}, {seed}receipt {path}"
            )
    if last_outputs and not set(digests) <= last_outputs:
        raise ReceiptRejected("output_mismatch", "the final output is not what the last step's receipt names")
    lines.append(f"{len(step_ids)} step(s), {total} micro-credits in all")
    return lines


async def save_paid_receipts(client: LpnodeClient, workflow_id: str, output: Path) -> list[str]:
    """A workflow that did not finish: save the receipts of the network jobs it ran (and paid for).

    The workflow record's receipt n is step n + 1's (a step makes one image: one network job); each
    is saved after it verifies as ``<output>.step-<k>.receipt``, the name a finished workflow gives
    step k's. What cannot be fetched or saved is said, not raised: the workflow's own failure (or the
    interruption) is what the user must see.
    """
    lines: list[str] = []
    for n in range(MAX_PAID_RECEIPTS):
        try:
            receipt_bytes = await client.receipt(workflow_id, n)
            receipt = verify_receipt(receipt_bytes)
            path = output.with_name(f"{output.name}.step-{n + 1}.receipt")
            write_file(path, receipt_bytes)
        except RpcError as exc:
            if exc.status_code != 404:
                lines.append(f"lpnode: could not fetch the workflow's receipt {n}: {exc}")
            break
        except (LpnodeError, OSError) as exc:
            lines.append(f"lpnode: could not save the workflow's receipt {n}: {exc}")
            break
        lines.append(f"lpnode: paid for step {n + 1} ({receipt.spec.pipeline}): receipt {path}")
    return lines


__all__ = [
    "add_workflow_command",
    "cmd_workflow",
    "default_output",
    "load_spec",
    "save_paid_receipts",
    "save_workflow",
]
