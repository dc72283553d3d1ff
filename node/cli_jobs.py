"""Job commands: ``txt2img``, ``img2img``, ``img2vid``, ``upscale``, ``interpolate``; ``jobs``, ``job``, ``cancel``.

Each pipeline command maps its flags onto the RPC endpoint's fields (the
Livepeer names), leaves out what the user did not give (the node's defaults
apply), and hands the rest to :func:`cli_follow.submit_and_save`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from lpnode.node.cli_follow import check_output, read_input, submit_and_save
from lpnode.node.cli_format import job_summary, job_text, jobs_table
from lpnode.node.cli_progress import ProgressDisplay
from lpnode.node.client import LpnodeClient
from lpnode.protocol.errors import LpnodeError

EXIT_INTERRUPTED = 130
MAX_INPUT_BYTES = 512 * 1024 * 1024  # read into memory and sent whole; the node sets its own (smaller) limit
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
STEPS_SHOWN = 50  # step records `lpnode job` lists for a workflow (a workflow has at most 8 steps: workflows.MAX_STEPS)


@dataclass(frozen=True)
class Option:
    flag: str
    field: str  # the endpoint's field name
    type: Callable[[str], Any]
    help: str


# flag → endpoint field; each pipeline picks the ones its endpoint takes
OPTIONS = {
    o.flag: o
    for o in (
        Option("--width", "width", int, "pixels"),
        Option("--height", "height", int, "pixels"),
        Option("--steps", "num_inference_steps", int, "denoising steps"),
        Option("--guidance", "guidance_scale", float, "classifier-free guidance scale"),
        Option("--negative", "negative_prompt", str, "what the image should not show"),
        Option("--num-images", "num_images_per_prompt", int, "images to make (out.png → out-0.png, out-1.png, ...)"),
        Option("--strength", "strength", float, "how much of the input is re-noised, 0..1"),
        Option("--frames", "num_frames", int, "frames of the video"),
        Option("--fps", "fps", int, "frames per second of the video"),
        Option("--motion", "motion_bucket_id", int, "amount of motion, 0..255"),
        Option("--noise-aug", "noise_aug_strength", float, "noise added to the input image, 0..1"),
        Option("--min-guidance", "min_guidance_scale", float, "guidance at the first frame"),
        Option("--max-guidance", "max_guidance_scale", float, "guidance at the last frame"),
        Option("--decode-chunk-size", "decode_chunk_size", int, "frames decoded at once (memory only)"),
        Option("--scale", "scale", int, "output side / input side"),
        Option("--prompt", "prompt", str, "accepted for Livepeer compatibility; unused by upscalers"),
        Option("--multiplier", "multiplier", int, "output fps / input fps"),
        # lpnode's job options, every pipeline
        Option("--model", "model_id", str, "model id (default: the best one on offer)"),
        Option("--seed", "seed", int, "seed (default: random; image i of several uses seed + i)"),
        Option("--max-price", "max_price", int, "most micro-credits to pay per job"),
        Option("--deadline", "deadline", float, "seconds for the whole request"),
        Option("--priority", "priority", str, "'cost', 'speed' (default) or 'trust'"),
        Option("--verification", "verification", str, "'none', 'spot' (default) or 'redundant:K'"),
        Option("--min-reputation", "min_reputation", float, "only peers at least this trusted, 0..1"),
        Option("--min-vram-gb", "min_vram_gb", float, "only peers with this much GPU memory"),
    )
}
JOB_OPTIONS: tuple[str, ...] = (
    "--model",
    "--seed",
    "--max-price",
    "--deadline",
    "--priority",
    "--verification",
    "--min-reputation",
    "--min-vram-gb",
)


@dataclass(frozen=True)
class PipelineCommand:
    name: str  # the CLI command
    pipeline: str  # the endpoint, /<pipeline>
    input_name: str | None  # the multipart file field, None for text-to-image
    help: str
    options: tuple[str, ...]


PIPELINE_COMMANDS = {
    c.name: c
    for c in (
        PipelineCommand(
            "txt2img",
            "text-to-image",
            None,
            "make images from a prompt on the network",
            ("--width", "--height", "--steps", "--guidance", "--negative", "--num-images"),
        ),
        PipelineCommand(
            "img2img",
            "image-to-image",
            "image",
            "redraw an image after a prompt",
            ("--strength", "--steps", "--guidance", "--negative", "--num-images"),
        ),
        PipelineCommand(
            "img2vid",
            "image-to-video",
            "image",
            "animate an image into an MP4 video",
            (
                "--width",
                "--height",
                "--frames",
                "--fps",
                "--motion",
                "--noise-aug",
                "--steps",
                "--min-guidance",
                "--max-guidance",
                "--decode-chunk-size",
            ),
        ),
        PipelineCommand(
            "upscale", "upscale", "image", "upscale an image, or an MP4 frame by frame", ("--scale", "--prompt")
        ),
        PipelineCommand(
            "interpolate", "frame-interpolation", "video", "add frames between a video's frames", ("--multiplier",)
        ),
    )
}


def add_job_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register the job commands on ``commands`` (the ``lpnode`` subparsers)."""
    for command in PIPELINE_COMMANDS.values():
        sub = commands.add_parser(command.name, parents=[common], help=command.help)
        if command.input_name is not None:
            sub.add_argument(command.input_name, type=Path, metavar=command.input_name.upper())
        if command.pipeline in ("text-to-image", "image-to-image"):
            sub.add_argument("prompt", metavar="PROMPT")
        sub.add_argument("-o", "--output", type=Path, required=True, help="where to save the output")
        for flag in (*command.options, *JOB_OPTIONS):
            option = OPTIONS[flag]
            sub.add_argument(flag, dest=option.field, type=option.type, help=option.help)
        for flag, what in (("--prefer", "prefer"), ("--avoid", "avoid")):
            sub.add_argument(flag, action="append", metavar="PEER_ID[,PEER_ID...]", help=f"peers to {what}")
        sub.add_argument("--allow-local", action="store_true", default=None, help="this node may run the job")
        sub.add_argument("--json", action="store_true", help="print the final job record as JSON")
        sub.set_defaults(pipeline_command=command)

    jobs = commands.add_parser("jobs", parents=[common], help="list this node's jobs, newest first")
    jobs.add_argument("--state", choices=JOB_STATES)
    jobs.add_argument("--limit", type=int, default=50, help="records per page (at most 500)")
    jobs.add_argument("--before", metavar="ID", help="the page of records older than job ID")
    jobs.add_argument("--json", action="store_true", help="print the RPC API's JSON instead of a table")
    job = commands.add_parser("job", parents=[common], help="show one job record")
    job.add_argument("id", metavar="ID")
    job.add_argument("--json", action="store_true", help="print the RPC API's JSON")
    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    cancel.add_argument("id", metavar="ID")


def job_fields(args: argparse.Namespace, command: PipelineCommand) -> dict[str, Any]:
    """The endpoint's fields from parsed flags; what the user left out is left out."""
    fields: dict[str, Any] = {}
    if command.pipeline in ("text-to-image", "image-to-image"):
        fields["prompt"] = args.prompt
    for flag in (*command.options, *JOB_OPTIONS):
        value = getattr(args, OPTIONS[flag].field)
        if value is not None:
            fields[OPTIONS[flag].field] = value
    for name in ("prefer", "avoid"):
        given = getattr(args, name) or []
        peers = [peer.strip() for item in given for peer in item.split(",") if peer.strip()]
        if peers:
            fields[name] = peers
    if args.allow_local:
        fields["allow_local"] = True
    return fields


# The RPC API keeps Livepeer's default output size (its clients rely on it); the CLI, when the user gives no
# size, asks for the largest size of that shape that some peer on offer takes, so `lpnode txt2img "..."` works
# on a network of small CPU models too. The endpoints' own defaults, for the commands that take a size:
LIVEPEER_DEFAULT_SIZE = {"text-to-image": (1024, 576), "image-to-video": (1024, 576)}


def fitted_size(width: int, height: int, limits: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """``width`` × ``height``, or the largest size of its shape (sides multiples of 8) that one of ``limits`` takes.

    ``limits`` are the advertised limits of the offers that could run the job (``max_side``, ``max_pixels``).
    Unchanged when any offer takes the size, or when none says what it takes (the node then answers).
    """
    scales = []
    for limit in limits:
        scale = min(limit["max_side"] / max(width, height), math.sqrt(limit["max_pixels"] / (width * height)))
        if scale >= 1.0:
            return width, height
        scales.append(scale)
    if not scales:
        return width, height
    scale = max(scales)
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)


# Likewise the endpoints' default steps where some model on offer may take fewer (Livepeer's image-to-image
# default is 100; the tiny presets take 50): the CLI asks for the most that some peer on offer takes.
LIVEPEER_DEFAULT_STEPS = {"text-to-image": 50, "image-to-image": 100, "image-to-video": 25}
LIVEPEER_DEFAULT_STRENGTH = 0.8  # image-to-image's, as the endpoint's body has it


def fitted_steps(steps: int, limits: Iterable[Mapping[str, Any]]) -> int:
    """``steps``, or the most steps one of ``limits`` takes when none takes ``steps`` (unchanged without limits)."""
    most = [int(limit["max_steps"]) for limit in limits]
    return steps if not most or max(most) >= steps else max(most)


async def fit_defaults(client: LpnodeClient, pipeline: str, fields: dict[str, Any]) -> str:
    """Set a size and steps that the network takes where the user gave none; what was chosen, or ""."""
    size_free = pipeline in LIVEPEER_DEFAULT_SIZE and "width" not in fields and "height" not in fields
    steps_free = pipeline in LIVEPEER_DEFAULT_STEPS and "num_inference_steps" not in fields
    if not (size_free or steps_free):
        return ""
    model = fields.get("model_id")
    on_offer = [offer for peer in (await client.peers())["peers"] for offer in peer.get("models", [])]
    if fields.get("allow_local"):
        # this node may run the job itself: its own models are on offer too (a lone node has no peers)
        on_offer += (await client.node()).get("models", [])
    offers = [
        offer for offer in on_offer if offer["pipeline"] == pipeline and (not model or offer["model_id"] == model)
    ]
    if any(offer.get("limits") is None for offer in offers):
        return ""  # some peer does not say what it takes: ask for the endpoint's defaults
    limits = [offer["limits"] for offer in offers]
    notes = []
    if size_free:
        width, height = LIVEPEER_DEFAULT_SIZE[pipeline]
        fitted = fitted_size(width, height, limits)
        if fitted != (width, height):
            fields["width"], fields["height"] = fitted
            notes.append(
                f"size {fitted[0]}×{fitted[1]}: the largest of the default {width}×{height} shape"
                " that a peer on offer takes (--width/--height to choose)"
            )
    if steps_free:
        default = LIVEPEER_DEFAULT_STEPS[pipeline]
        steps = fitted_steps(default, limits)
        if steps != default:
            fields["num_inference_steps"] = steps
            notes.append(
                f"{steps} steps: the most a peer on offer takes, under the default {default} (--steps to choose)"
                + _steps_run(pipeline, fields, steps)
            )
    return "; ".join(notes)


def _steps_run(pipeline: str, fields: Mapping[str, Any], steps: int) -> str:
    """Image-to-image denoises only the last ``strength`` of its schedule: the bar counts those steps, so say so."""
    if pipeline != "image-to-image":
        return ""
    strength = float(fields.get("strength", LIVEPEER_DEFAULT_STRENGTH))
    run = min(int(steps * strength), steps)  # as diffusers' img2img pipelines cut the schedule
    return "" if run == steps else f"; at strength {strength:g}, {run} of them run"


def cmd_pipeline(args: argparse.Namespace, data_dir: Path) -> int:
    command: PipelineCommand = args.pipeline_command
    fields = job_fields(args, command)
    check_output(args.output)
    files = None
    if command.input_name is not None:
        files = {command.input_name: read_input(getattr(args, command.input_name), MAX_INPUT_BYTES)}

    async def main() -> int:
        async with LpnodeClient.from_data_dir(data_dir) as client:
            note = await fit_defaults(client, command.pipeline, fields)

            async def submit() -> dict[str, Any]:
                answer = await client.submit(command.pipeline, fields, files=files, wait=False)
                if note:  # once the node took the job: a request it refuses (422) needs no word on its size
                    print(f"{command.name}: {note}", file=sys.stderr)
                return answer

            display = ProgressDisplay(sys.stderr, command.name, images=int(fields.get("num_images_per_prompt", 1)))
            outcome = await submit_and_save(client, submit, args.output, display)
            if isinstance(outcome, str):
                print(f"lpnode: {outcome}", file=sys.stderr)
                return EXIT_INTERRUPTED
            record, saved = outcome
            checks = await checks_quietly(client, str(record.get("id") or ""))
        print(json.dumps(record, indent=2) if args.json else job_summary(saved, checks, str(record.get("id") or "")))
        return 0

    return trio.run(main)


async def checks_quietly(client: LpnodeClient, record_id: str) -> list[dict[str, Any]]:
    """Where the record's spot checks stand, or none: the outputs are saved, and a node that cannot say
    (an older one, or a request-only record) must not turn a finished job into an error."""
    if not record_id:
        return []
    try:
        return list((await client.job_checks(record_id))["checks"])
    except LpnodeError:
        return []


def cmd_jobs(args: argparse.Namespace, data_dir: Path) -> int:
    async def main() -> list[dict[str, Any]]:
        async with LpnodeClient.from_data_dir(data_dir) as client:
            return await client.jobs(state=args.state, limit=args.limit, before=args.before)

    records = trio.run(main)
    if args.json:
        print(json.dumps({"jobs": records}, indent=2))
        return 0
    print(jobs_table(records) if records or args.before is None else f"no jobs before {args.before}")
    if records and len(records) == args.limit:  # a full page: say there may be more, and how to see them
        print(next_page_hint("jobs", records[-1]["id"], args, {"--state": args.state}))
    return 0


def next_page_hint(command: str, last: object, args: argparse.Namespace, filters: Mapping[str, object]) -> str:
    """The command for the page after this one, with this page's filters and size (review: they were dropped)."""
    words = [f"lpnode {command}", f"--before {last}"]
    words += [f"{flag} {value}" for flag, value in filters.items() if value is not None]
    if args.limit != 50:
        words.append(f"--limit {args.limit}")
    return f"({args.limit} shown; older ones: {' '.join(words)})"


def cmd_job(args: argparse.Namespace, data_dir: Path) -> int:
    async def main() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        async with LpnodeClient.from_data_dir(data_dir) as client:
            record = await client.job(args.id)
            # a workflow's steps are records of their own: listed by parent, so a failed chain shows them too
            steps = await client.jobs(parent_id=args.id, limit=STEPS_SHOWN) if record.get("kind") == "workflow" else []
            checks = (await client.job_checks(args.id))["checks"] if record.get("state") == "succeeded" else []
            return record, steps[::-1], checks  # steps oldest first: step 1 first

    record, steps, checks = trio.run(main)
    if args.json:
        print(
            json.dumps(record | ({"steps": steps} if steps else {}) | ({"checks": checks} if checks else {}), indent=2)
        )
    else:
        print(job_text(record, steps, checks))
    return 0


def cmd_cancel(args: argparse.Namespace, data_dir: Path) -> int:
    async def main() -> dict[str, Any]:
        async with LpnodeClient.from_data_dir(data_dir) as client:
            return await client.cancel_job(args.id)

    record = trio.run(main)
    state = record.get("state", "cancelled")
    if state != "cancelled":  # seen: a workflow's running step answered after it ended, as "succeeded"
        print(f"lpnode: job {record.get('id', args.id)} was not cancelled: it ended {state}", file=sys.stderr)
        return 1
    print(f"job {record.get('id', args.id)} cancelled")
    return 0


def commands_table() -> dict[str, Callable[[argparse.Namespace, Path], int]]:
    table: dict[str, Callable[[argparse.Namespace, Path], int]] = dict.fromkeys(PIPELINE_COMMANDS, cmd_pipeline)
    table.update(jobs=cmd_jobs, job=cmd_job, cancel=cmd_cancel)
    return table


__all__ = [
    "PIPELINE_COMMANDS",
    "add_job_commands",
    "commands_table",
    "job_fields",
]
