"""The job CLI's pure parts: argument mapping, SSE parsing, progress display, output names, tables, workflow files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from lpnode.node.cli import build_parser, main
from lpnode.node.cli_follow import JobNotDone, output_paths, receipt_path
from lpnode.node.cli_format import job_summary, job_text, jobs_table
from lpnode.node.cli_jobs import PIPELINE_COMMANDS, fitted_size, job_fields
from lpnode.node.cli_progress import ProgressDisplay, WorkflowProgress, bar_text
from lpnode.node.cli_workflow import default_output, load_spec
from lpnode.node.client_sse import MAX_LINE_BYTES, Event, EventParser, EventStreamError
from lpnode.protocol.errors import ConfigError

from ..protocol.job_factory import make_quote, make_receipt, quote_request

PEER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"


def fields(*argv: str) -> dict[str, object]:
    args = build_parser().parse_args(list(argv))
    return job_fields(args, args.pipeline_command)


def test_flags_map_to_the_endpoint_fields_and_unset_ones_are_left_out() -> None:
    assert fields("txt2img", "a lighthouse", "-o", "out.png") == {"prompt": "a lighthouse"}
    got = fields(
        *("txt2img", "a lighthouse at dusk", "-o", "out.png", "--model", "lpnode/tiny-sdxl", "--width", "64"),
        *("--height", "48", "--steps", "2", "--guidance", "0", "--negative", "fog", "--seed", "11"),
        *("--num-images", "3", "--max-price", "100", "--deadline", "30", "--priority", "cost"),
        *("--verification", "redundant:2", "--prefer", "a,b", "--prefer", "c", "--avoid", "d", "--allow-local"),
    )
    assert got == {
        "prompt": "a lighthouse at dusk",
        "model_id": "lpnode/tiny-sdxl",
        "width": 64,
        "height": 48,
        "num_inference_steps": 2,
        "guidance_scale": 0.0,
        "negative_prompt": "fog",
        "seed": 11,
        "num_images_per_prompt": 3,
        "max_price": 100,
        "deadline": 30.0,
        "priority": "cost",
        "verification": "redundant:2",
        "prefer": ["a", "b", "c"],
        "avoid": ["d"],
        "allow_local": True,
    }
    assert fields("img2img", "in.png", "make it night", "-o", "o.png", "--strength", "0.5") == {
        "prompt": "make it night",
        "strength": 0.5,
    }
    assert fields("img2vid", "in.png", "-o", "o.mp4", "--frames", "4", "--fps", "6", "--motion", "90") == {
        "num_frames": 4,
        "fps": 6,
        "motion_bucket_id": 90,
    }
    assert fields("upscale", "in.png", "-o", "o.png", "--scale", "2") == {"scale": 2}
    assert fields("interpolate", "in.mp4", "-o", "o.mp4", "--multiplier", "3") == {"multiplier": 3}
    args = build_parser().parse_args(["interpolate", "in.mp4", "-o", "o.mp4"])
    assert args.video == Path("in.mp4") and PIPELINE_COMMANDS["interpolate"].pipeline == "frame-interpolation"


def test_flags_a_pipeline_does_not_take_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["upscale", "in.png", "-o", "o.png", "--strength", "0.5"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["txt2img", "no output given"])
    assert "-o/--output" in capsys.readouterr().err


def test_event_parser_handles_any_chunking_comments_and_crlf() -> None:
    stream = (
        b": keep-alive\n\n"
        b'event: progress\ndata: {"fraction": 0.5, "step": 1, "total": 2, "peer_id": null}\n\n'
        b'event: state\r\ndata: {"state": "running"}\r\n\r\n'
        b"id: 7\nretry: 100\n\n"  # no data: no event
        b'data: {"a":\ndata: 1}\n\n'  # two data lines join with a newline
        b'event: done\ndata: {"id": "j1", "state": "succeeded"}\n\n'
    )
    expected = [
        Event("progress", {"fraction": 0.5, "step": 1, "total": 2, "peer_id": None}),
        Event("state", {"state": "running"}),
        Event("message", {"a": 1}),
        Event("done", {"id": "j1", "state": "succeeded"}),
    ]
    for size in (1, 2, 7, len(stream)):
        parser = EventParser()
        events = [e for k in range(0, len(stream), size) for e in parser.feed(stream[k : k + size])]
        assert events == expected


def test_event_parser_refuses_garbage_and_unbounded_lines() -> None:
    with pytest.raises(EventStreamError, match="not JSON"):
        EventParser().feed(b"event: done\ndata: {oops\n\n")
    with pytest.raises(EventStreamError, match="not an object"):
        EventParser().feed(b"data: [1]\n\n")
    parser = EventParser()
    with pytest.raises(EventStreamError, match="line is over"):
        for _ in range(MAX_LINE_BYTES // (1 << 20) + 1):
            parser.feed(b"x" * (1 << 20))


def test_progress_bar_text() -> None:
    assert bar_text("txt2img", "running", {"fraction": 0.5, "step": 1, "total": 2, "peer_id": PEER}) == (
        "txt2img [##########..........]  50%  step 1/2  running on 12D3KooW…CVe2Xo"
    )
    assert bar_text("x", "queued", {}) == "x [....................]   0%  queued"
    assert bar_text("x", "running", {"fraction": 7}).startswith("x [####################] 100%")


def test_progress_redraws_on_a_terminal_and_writes_few_lines_elsewhere() -> None:
    tty = io.StringIO()
    display = ProgressDisplay(tty, "t", tty=True)
    display.state("queued")
    display.progress({"fraction": 0.5, "step": 1, "total": 2})
    display.close()
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\n")

    plain = io.StringIO()
    display = ProgressDisplay(plain, "t", tty=False)
    display.state("queued")
    for step in range(1, 11):
        display.progress({"fraction": step / 10, "step": step, "total": 10})
    display.state("succeeded")
    display.close()
    lines = plain.getvalue().splitlines()
    assert lines[0] == "t: queued" and lines[-1] == "t: succeeded"
    assert [line.split("]")[1].split("%")[0].strip() for line in lines[1:-1]] == ["10", "30", "50", "80", "100"]
    assert "\r" not in plain.getvalue()


def test_output_names() -> None:
    assert output_paths(Path("d/out.png"), 1) == [Path("d/out.png")]
    assert output_paths(Path("d/out.png"), 3) == [Path("d/out-0.png"), Path("d/out-1.png"), Path("d/out-2.png")]
    assert receipt_path(Path("d/out-1.png")) == Path("d/out-1.png.receipt")


def test_a_job_that_did_not_succeed_reads_as_one_line() -> None:
    failed = {"id": "j1", "state": "failed", "error": {"status": 503, "error": "job_failed", "message": "all busy"}}
    assert str(JobNotDone(failed)) == "job j1 failed: all busy (HTTP 503 job_failed)"
    assert str(JobNotDone({"id": "j2", "state": "cancelled"})) == "job j2 was cancelled"
    assert "interrupted" in str(JobNotDone({"id": "j3", "state": "interrupted"}))


def test_summary_and_tables() -> None:
    request = quote_request()
    receipt = make_receipt(request, make_quote(request))
    job = {
        "job_id": "a" * 64,
        "worker_peer_id": PEER,
        "model_id": "sdxl-turbo",
        "price": 42,
        "attempts": [
            {"peer_id": "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAbusy", "outcome": "refused", "detail": "busy", "price": None},
            {"peer_id": PEER, "outcome": "done", "detail": "", "price": 42},
        ],
    }
    saved = [
        SimpleNamespace(
            path=Path(f"out-{i}.png"),
            size_bytes=2048,
            seed=11 + i,
            job=job,
            receipt_path=Path(f"out-{i}.png.receipt"),
            receipt=receipt,
        )
        for i in range(2)
    ]
    text = job_summary(saved)
    assert "saved out-0.png (2.0 KiB)" in text and f"worker   {PEER}" in text
    assert "price    42 micro-credits" in text and "seed     12" in text
    assert "attempts 2: 12D3KooW…AAbusy refused, 12D3KooW…CVe2Xo done" in text
    assert "receipt  out-1.png.receipt (signature verified" in text
    assert text.endswith("2 outputs, 84 micro-credits in all")
    assert "check" not in text  # a node that could not say where the checks stand: no line
    pending = [{"job_id": job["job_id"], "worker_peer_id": PEER, "state": "pending", "reason": ""}]
    text = job_summary(saved[:1], pending, "job_abc")
    assert "  check    pending: another peer runs it too; `lpnode job job_abc` shows the verdict" in text
    skipped = [pending[0] | {"state": "not_checked", "reason": "not picked"}]
    assert "  check    not checked (not picked)" in job_summary(saved[:1], skipped, "job_abc")

    record = {
        "id": "j1",
        "kind": "text-to-image",
        "state": "succeeded",
        "progress": {"fraction": 1.0, "step": 2, "total": 2, "peer_id": PEER},
        "request": {"prompt": "a lighthouse", "width": 64},
        "result": {
            "images": [{"url": "/v1/outputs/ab", "seed": 11, "nsfw": False}],
            "jobs": [job | {"job_id": "f" * 64}],
        },
        "error": None,
        "attempts": job["attempts"],
        "parent_id": None,
    }
    failed = record | {
        "id": "j2",
        "state": "failed",
        "result": None,
        "error": {"status": 503, "error": "x", "message": "all busy"},
    }
    lines = jobs_table([record, failed]).splitlines()
    assert lines[0].split() == ["ID", "KIND", "STATE", "PROGRESS", "WORKER", "ERROR"]
    assert lines[1].split() == ["j1", "text-to-image", "succeeded", "100%", "12D3KooW…CVe2Xo"]
    assert lines[2].endswith("all busy") and lines[-1] == "2 job(s)"
    assert jobs_table([]) == "no jobs asked of this node yet (the jobs it served for others: lpnode served)"
    text = job_text(failed)
    assert "state     failed" in text and "\nrequest\n" in text and '  prompt = "a lighthouse"' in text
    assert "error     all busy (HTTP 503 x)" in text
    # a failed workflow's steps, from their own records: step 1 ran, step 2 failed
    workflow = failed | {"id": "wf", "kind": "workflow", "request": {"steps": [{}, {}]}}
    steps = [record | {"id": "j1", "parent_id": "wf"}, failed | {"kind": "image-to-video", "parent_id": "wf"}]
    text = job_text(workflow, steps)
    assert "step 1    j1  text-to-image  succeeded\nstep 2    j2  image-to-video  failed" in text
    # each output's spot check (GET /v1/jobs/{id}/checks), one line each
    blamed = {"evidence_id": 3, "verdict": "disagree", "peers": [PEER, "a", "b"]}
    checks = [
        {"job_id": "f" * 64, "worker_peer_id": PEER, "state": "settled", "worker": "blamed", "evidence": [blamed]},
        {"job_id": "e" * 64, "worker_peer_id": PEER, "state": "not_checked", "reason": "not picked"},
        {"job_id": "d" * 64, "worker_peer_id": PEER, "state": "pending", "reason": ""},
    ]
    lines = [line for line in job_text(record, checks=checks).splitlines() if line.startswith("check")]
    assert lines == [
        "check     ffffffffffffffff… on 12D3KooW…CVe2Xo: blamed — the output is judged wrong; do not use it "
        "(disagree, evidence #3; 2 other peer(s) ran it)",
        "check     eeeeeeeeeeeeeeee… on 12D3KooW…CVe2Xo: not checked (not picked)",
        "check     dddddddddddddddd… on 12D3KooW…CVe2Xo: pending (copies running on other peers)",
    ]


def test_workflow_files_in_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "chain.toml"
    toml.write_text(
        'deadline = 300\n[[steps]]\npipeline = "text-to-image"\nparams = { prompt = "a lighthouse", width = 64 }\n'
        '[[steps]]\npipeline = "image-to-video"\nparams = { num_frames = 4 }\n'
    )
    spec = load_spec(toml)
    assert spec["deadline"] == 300 and [s["pipeline"] for s in spec["steps"]] == ["text-to-image", "image-to-video"]
    assert default_output(toml, spec) == tmp_path / "chain.mp4"
    image = tmp_path / "in.png"
    image.write_bytes(b"\x89PNG")
    as_json = tmp_path / "up.json"
    as_json.write_text(json.dumps({"steps": [{"pipeline": "upscale", "params": {"scale": 2}}]}))
    spec = load_spec(as_json, image)
    assert spec["input"] == "iVBORw==" and default_output(as_json, spec) == tmp_path / "up.png"
    for text, complaint in (("{not json", "not valid JSON"), ('{"steps": []}', "non-empty list"), ("[1]", "object")):
        as_json.write_text(text)
        with pytest.raises(ConfigError, match=complaint):
            load_spec(as_json)
    with pytest.raises(ConfigError, match="cannot read"):
        load_spec(tmp_path / "missing.toml")


def test_workflow_progress_is_shown_per_step() -> None:
    out = io.StringIO()
    display = WorkflowProgress(out, ["text-to-image", "upscale"], tty=False)
    display.state("running")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        display.progress({"fraction": fraction, "step": 1, "total": 2})
    lines = out.getvalue().splitlines()
    assert lines[0] == "step 1/2 text-to-image: running"
    assert [line.split(" [")[0] for line in lines[1:]] == ["step 1/2 text-to-image"] * 2 + ["step 2/2 upscale"] * 3
    assert [line.split("]")[1].split("%")[0].strip() for line in lines[1:]] == ["0", "50", "0", "50", "100"]


def test_a_failed_workflow_is_said_failed_as_a_workflow_not_as_the_step_the_bar_last_showed() -> None:
    # QA: step 3 refused before any progress (budget spent) printed "step 2/4 image-to-video: failed"
    out = io.StringIO()
    display = WorkflowProgress(out, ["text-to-image", "image-to-video", "upscale", "frame-interpolation"], tty=False)
    display.state("running")
    display.progress({"fraction": 0.5, "step": 2, "total": 2, "peer_id": "A"})  # step 2's end
    display.state("failed")
    assert out.getvalue().splitlines()[-1] == "workflow: failed"


def test_a_workflow_step_that_ends_shows_as_its_own_end_not_as_the_next_step() -> None:
    # the node reports a step's last event at the boundary fraction (k + 1) / steps: it showed under the next
    # step's label with the finished step's counter and worker ("step 2/3 upscale [....] 0%  step 2/2 ...")
    out = io.StringIO()
    display = WorkflowProgress(out, ["text-to-image", "upscale", "frame-interpolation"], tty=False)
    display.state("running")
    display.progress({"fraction": 1 / 6, "step": 1, "total": 2, "peer_id": "A"})
    display.progress({"fraction": 2 / 6, "step": 2, "total": 2, "peer_id": "A"})
    display.progress({"fraction": 2 / 6 + 1 / 12, "step": 1, "total": 4, "peer_id": "B"})
    display.progress({"fraction": 1.0, "step": 3, "total": 3, "peer_id": "C"})
    lines = out.getvalue().splitlines()[1:]
    assert [line.split(" [")[0] for line in lines] == [
        "step 1/3 text-to-image",
        "step 1/3 text-to-image",
        "step 2/3 upscale",
        "step 3/3 frame-interpolation",
    ]
    assert "100%  step 2/2" in lines[1] and "25%  step 1/4" in lines[2] and "100%  step 3/3" in lines[3]


def test_sim_is_a_subcommand_of_lpnode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "list"]) == 0
    assert "baseline" in capsys.readouterr().out
    assert main(["sim", "run", "no-such-scenario"]) == 2
    assert "no bundled scenario 'no-such-scenario'" in capsys.readouterr().err


def test_sim_finds_bundled_scenarios_by_the_issue_s_spelling() -> None:
    from lpnode.simnet.cli import resolve_scenario

    assert resolve_scenario("scenarios/churn.toml").name == "churn.toml"
    assert resolve_scenario("churn") == resolve_scenario("churn.toml")
    with pytest.raises(FileNotFoundError, match="no such scenario file"):
        resolve_scenario("elsewhere/churn.toml")


def test_a_default_size_beyond_every_offer_shrinks_to_the_roomiest_keeping_its_shape() -> None:
    tiny = {"max_side": 256, "max_pixels": 256 * 256}
    assert fitted_size(1024, 576, [tiny]) == (256, 144)
    assert fitted_size(1024, 576, [tiny, {"max_side": 2048, "max_pixels": 512 * 512}]) == (680, 384)  # pixel-bound
    assert fitted_size(1024, 576, [tiny, {"max_side": 1024, "max_pixels": 1024 * 1024}]) == (1024, 576)  # one takes it
    assert fitted_size(1024, 576, []) == (1024, 576)  # nobody says: the node answers
    assert fitted_size(1024, 576, [{"max_side": 4, "max_pixels": 16}]) == (8, 8)  # never below the API's minimum


def test_an_img2img_step_note_says_how_many_steps_its_strength_runs() -> None:
    # the note said "50 steps", then the bar counted to 40 (strength 0.8 of 50; QA)
    from lpnode.node.cli_jobs import LIVEPEER_DEFAULT_STRENGTH, _steps_run
    from lpnode.node.rpc_job_bodies import ImageToImageBody

    assert ImageToImageBody.model_fields["strength"].default == LIVEPEER_DEFAULT_STRENGTH
    assert _steps_run("image-to-image", {}, 50) == "; at strength 0.8, 40 of them run"
    assert _steps_run("image-to-image", {"strength": 0.5}, 50) == "; at strength 0.5, 25 of them run"
    assert _steps_run("image-to-image", {"strength": 1.0}, 50) == ""
    assert _steps_run("text-to-image", {}, 50) == ""


def test_a_job_record_says_why_each_try_that_did_not_deliver_ended() -> None:
    # QA: "error:cancelled" alone; the reason ("the worker is shutting down") was only in the API's record
    record = {
        "id": "job_1",
        "kind": "text-to-image",
        "state": "succeeded",
        "attempts": [
            {"peer_id": "12D3KooWaaaaaaaaaaaa", "outcome": "error:cancelled", "detail": "the worker is shutting down"},
            {"peer_id": "12D3KooWbbbbbbbbbbbb", "outcome": "done", "detail": ""},
        ],
    }
    text = job_text(record)
    assert ": the worker is shutting down" in text and text.count("the worker is shutting down") == 1


def test_the_banner_says_a_model_that_cannot_load_is_not_offered() -> None:
    from dataclasses import replace

    from lpnode.node.run import _model_state

    from .test_job_quote import ROW

    problem = "weights for preset 'sdxl-turbo' are missing. Put the files...\nmore lines"
    row = replace(ROW, name="sdxl-turbo", weights_sha256="", warm=False, problem=problem)
    # its first sentence, not 80 characters cut mid-word (QA s11); the rest is in the log
    assert _model_state(row) == "sdxl-turbo (not offered: weights for preset 'sdxl-turbo' are missing)"
    assert _model_state(replace(row, problem="")) == "sdxl-turbo (cold)"
