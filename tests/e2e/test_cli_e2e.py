"""The job CLI against two real ``lpnode run`` processes on 127.0.0.1: one requester, one worker with tiny presets.

The two processes live for the whole module (starting them costs most of the
time); each test drives the requester through ``lpnode`` commands, called in
this process (``cli.main``, output captured) or, where a signal is needed, as a
child process. Waits are on events (the banner, peer long-polls, progress lines
on stderr), each bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from lpnode.node.cli import main
from lpnode.node.client import LpnodeClient
from lpnode.protocol.receipts import verify_receipt
from PIL import Image

from .cluster import LPNODE, Pair, cluster_in_thread, launch_pair

pytestmark = pytest.mark.slow

WORKER_MODELS = "tiny-sdxl,tiny-svd,tiny-realesrgan,tiny-rife"
PIPELINES = {"text-to-image", "image-to-image", "image-to-video", "upscale", "frame-interpolation"}
TINY = ["--max-price", "1000", "--deadline", "90"]
T2I = ["--width", "64", "--height", "64", "--steps", "2", "--guidance", "0", *TINY]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    # the processes live in a trio loop of their own: the tests call the CLI, which runs trio.run itself
    with cluster_in_thread(tmp_path_factory.mktemp("cli-e2e")) as cluster:
        yield cluster.call(partial(launch_pair, serve=WORKER_MODELS, pipelines=sorted(PIPELINES)))


def lpnode(capsys: pytest.CaptureFixture[str], nodes: Pair, *args: str | Path) -> tuple[int, str, str]:
    offline = args[0] == "receipt"  # needs no node, takes no --data-dir
    code = main([*(str(a) for a in args), *([] if offline else [f"--data-dir={nodes.requester.data_dir}"])])
    out, err = capsys.readouterr()
    return code, out, err


def ask(nodes: Pair, call: Any, *, worker: bool = False) -> Any:
    """``call(client)`` against the requester (or the worker), in a trio loop of its own."""
    data_dir = (nodes.worker if worker else nodes.requester).data_dir

    async def run() -> Any:
        async with LpnodeClient.from_data_dir(data_dir) as client:
            with trio.fail_after(60):
                return await call(client)

    return trio.run(run)


def test_txt2img_saves_the_image_and_a_receipt_that_verifies(
    nodes: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    code, stdout, stderr = lpnode(capsys, nodes, "txt2img", "a lighthouse at dusk", "-o", out, "--seed", "11", *T2I)
    assert code == 0, stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    assert f"saved {out}" in stdout and f"worker   {nodes.worker.peer_id}" in stdout
    assert "model    lpnode/tiny-sdxl" in stdout and "seed     11" in stdout
    assert f"receipt  {out}.receipt (signature verified" in stdout
    assert "txt2img" in stderr and "succeeded" in stderr  # progress lines (stderr is not a terminal here)
    receipt = verify_receipt((tmp_path / "out.png.receipt").read_bytes())
    assert receipt.worker_peer_id == nodes.worker.peer_id and receipt.spec.seed == 11

    code, stdout, stderr = lpnode(capsys, nodes, "receipt", "verify", f"{out}.receipt", "--output", out)
    assert code == 0, stderr
    assert stdout.startswith("VALID receipt") and f"worker     {nodes.worker.peer_id}" in stdout
    code, _, stderr = lpnode(capsys, nodes, "receipt", "verify", f"{out}.receipt", "--output", f"{out}.receipt")
    assert code == 1 and "output_mismatch" in stderr


def test_the_worker_keeps_what_it_served_with_its_receipt(
    nodes: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sold.png"
    seen = ask(nodes, lambda c: c.served(limit=1), worker=True)
    last = seen["jobs"][0]["seq"] if seen["jobs"] else 0
    code, _, stderr = lpnode(capsys, nodes, "txt2img", "a lighthouse", "-o", out, *T2I)
    assert code == 0, stderr
    # the worker notes the job as it ends, off the job's path: wait for its row
    answer = ask(nodes, lambda c: c.served(seq_above=last, wait_s=30), worker=True)
    row = answer["jobs"][0]
    assert row["seq"] > last and row["outcome"] == "delivered" and row["earned"] == row["price"] > 0
    assert row["requester_peer_id"] == nodes.requester.peer_id and row["pipeline"] == "text-to-image"
    assert answer["totals"]["earned"] >= row["earned"]
    worker = [f"--data-dir={nodes.worker.data_dir}"]
    code = main(["served", *worker])
    stdout, stderr = capsys.readouterr()
    assert code == 0 and "delivered" in stdout and "micro-credits earned" in stdout, stderr
    kept = tmp_path / "kept.receipt"
    assert main(["served", "--receipt", str(row["seq"]), "-o", str(kept), *worker]) == 0
    capsys.readouterr()
    # the seller's copy is the buyer's: the same signed bytes
    assert kept.read_bytes() == (tmp_path / "sold.png.receipt").read_bytes()
    assert lpnode(capsys, nodes, "receipt", "verify", kept, "--output", out)[0] == 0
    # a requester-only node says so, not "no endpoint" with the list of them (QA)
    code, _, stderr = lpnode(capsys, nodes, "served")
    assert code == 1 and "this node serves no models" in stderr


def test_txt2img_without_a_size_asks_for_one_the_network_takes(
    nodes: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The brief's own example: no size given. Livepeer's 1024×576 default is beyond every tiny model, so the
    CLI asks for the largest size of that shape the offers take (tiny-sdxl: 256-pixel sides)."""
    out = tmp_path / "default.png"
    code, _, stderr = lpnode(capsys, nodes, "txt2img", "a lighthouse at dusk", "-o", out, "--steps", "2")
    assert code == 0, stderr
    assert "size 256×144" in stderr
    with Image.open(out) as image:
        assert image.size == (256, 144)


def test_txt2img_on_a_node_that_may_run_it_itself_fits_the_size_to_its_own_models(
    nodes: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lone node (`make run`, then `lpnode txt2img --allow-local`) has no peers offering models: its own count
    (it asked for Livepeer's 1024×576 and was refused). The worker's only peer here offers nothing."""
    out = tmp_path / "local.png"
    args = ["txt2img", "a lighthouse at dusk", "-o", str(out), "--steps", "2", "--allow-local", *TINY]
    code, _, stderr = main([*args, f"--data-dir={nodes.worker.data_dir}"]), *capsys.readouterr()
    assert code == 0, stderr
    assert "size 256×144" in stderr
    with Image.open(out) as image:
        assert image.size == (256, 144)


def test_several_images_are_numbered(nodes: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "many.png"
    code, stdout, stderr = lpnode(
        capsys, nodes, "txt2img", "two lighthouses", "-o", out, "--num-images", "2", "--seed", "5", "--json", *T2I
    )
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["state"] == "succeeded" and [i["seed"] for i in record["result"]["images"]] == [5, 6]
    for i in range(2):
        image = tmp_path / f"many-{i}.png"
        assert image.read_bytes().startswith(b"\x89PNG")
        assert verify_receipt((tmp_path / f"many-{i}.png.receipt").read_bytes()).spec.seed == 5 + i


def test_readable_errors(nodes: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.png"
    code, stdout, stderr = lpnode(capsys, nodes, "txt2img", "x", "-o", out, "--model", "nobody/has-this", *T2I)
    assert (code, stdout) == (1, "")
    assert "Traceback" not in stderr
    stderr = stderr.splitlines()[-1]  # after the progress lines: the one line of error
    assert (
        stderr.startswith("lpnode: job ")
        and "no peer offers text-to-image nobody/has-this" in stderr
        and "lpnode/tiny-sdxl" in stderr
    )
    assert "(HTTP 404" in stderr

    code, _, stderr = lpnode(capsys, nodes, "txt2img", "x", "-o", out, "--width", "4", *T2I[2:])
    assert code == 1 and "(HTTP 422" in stderr and stderr.count("\n") == 1  # refused before any job ran

    code, _, stderr = main(["txt2img", "x", "-o", str(out), f"--data-dir={tmp_path}"]), *capsys.readouterr()
    assert code == 1 and "no node running with data dir" in stderr
    code, _, stderr = lpnode(capsys, nodes, "upscale", tmp_path / "missing.png", "-o", out)
    assert code == 1 and "cannot read" in stderr
    assert not out.exists()


def test_img2img_img2vid_interpolate(nodes: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "in.png"
    assert lpnode(capsys, nodes, "txt2img", "a lighthouse", "-o", image, "--seed", "1", *T2I)[0] == 0
    runs = [
        ("img2img", image, "make it night", "-o", tmp_path / "night.png", "--strength", "0.5", "--steps", "2"),
        ("img2vid", image, "-o", tmp_path / "clip.mp4", "--width", "64", "--height", "64", "--frames", "4"),
    ]
    for run in runs:
        extra = ("--steps", "2") if run[0] == "img2vid" else ()
        code, _, stderr = lpnode(capsys, nodes, *run, *extra, "--seed", "2", *TINY)
        assert code == 0, f"{run[0]}: {stderr}"
    assert (tmp_path / "night.png").read_bytes().startswith(b"\x89PNG")
    assert b"ftyp" in (tmp_path / "clip.mp4").read_bytes()[:16]
    code, _, stderr = lpnode(
        capsys, nodes, "interpolate", tmp_path / "clip.mp4", "-o", tmp_path / "smooth.mp4", "--multiplier", "2", *TINY
    )
    assert code == 0, stderr
    for name in ("night.png", "clip.mp4", "smooth.mp4"):
        code, _, stderr = lpnode(
            capsys, nodes, "receipt", "verify", tmp_path / f"{name}.receipt", "--output", tmp_path / name
        )
        assert code == 0, f"{name}: {stderr}"
    pipeline = verify_receipt((tmp_path / "smooth.mp4.receipt").read_bytes()).spec.pipeline
    assert pipeline == "frame-interpolation"


def test_workflow_run_saves_the_output_and_every_step_receipt(
    nodes: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "chain.toml"
    spec.write_text(
        "max_price = 1000\ndeadline = 90\n"
        '[[steps]]\npipeline = "text-to-image"\n'
        'params = { prompt = "a lighthouse", width = 64, height = 64, num_inference_steps = 2, guidance_scale = 0.0 }\n'
        '[[steps]]\npipeline = "image-to-video"\n'
        "params = { width = 64, height = 64, num_frames = 4, num_inference_steps = 2 }\n"
    )
    code, stdout, stderr = lpnode(capsys, nodes, "workflow", "run", spec)
    assert code == 0, stderr
    out = tmp_path / "chain.mp4"  # named after the file, typed after the last step
    assert b"ftyp" in out.read_bytes()[:16] and f"saved {out}" in stdout
    first = verify_receipt((tmp_path / "chain.mp4.step-1.receipt").read_bytes())
    last = verify_receipt((tmp_path / "chain.mp4.step-2.receipt").read_bytes())
    assert (first.spec.pipeline, last.spec.pipeline) == ("text-to-image", "image-to-video")
    assert lpnode(capsys, nodes, "receipt", "verify", tmp_path / "chain.mp4.step-2.receipt", "--output", out)[0] == 0
    assert "2 step(s)" in stdout and "step 1/2 text-to-image" in stderr  # progress per step


async def _start_slow_job(client: LpnodeClient) -> str:
    """A job that runs for tens of seconds here (the preset's most steps; a deadline its ETA fits), once it runs."""
    record = await client.text_to_image(
        "a slow lighthouse", width=128, height=128, num_inference_steps=50, max_price=10**9, deadline=3600, wait=False
    )
    async with contextlib.aclosing(client.job_events(record["id"])) as events:
        async for event in events:
            assert event.name != "done", event.data.get("error")
            if event.name == "progress":
                break  # the worker is running it
    return str(record["id"])


def test_jobs_job_and_cancel(nodes: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = ask(nodes, _start_slow_job)
    code, stdout, stderr = lpnode(capsys, nodes, "cancel", job_id)
    assert (code, stdout.strip()) == (0, f"job {job_id} cancelled"), stderr
    code, stdout, _ = lpnode(capsys, nodes, "job", job_id)
    assert code == 0 and f"id        {job_id}" in stdout and "state     cancelled" in stdout
    code, stdout, _ = lpnode(capsys, nodes, "jobs", "--state", "cancelled")
    assert code == 0 and job_id in stdout and stdout.startswith("ID")
    code, _, stderr = lpnode(capsys, nodes, "cancel", job_id)
    assert code == 1 and "(HTTP 409" in stderr
    code, _, stderr = lpnode(capsys, nodes, "job", "0000000000000000")
    assert code == 1 and "(HTTP 404" in stderr
    # a full page says how to see the next one (it read as the total: "50 job(s)"; QA)
    code, stdout, _ = lpnode(capsys, nodes, "jobs", "--limit", "1")
    assert code == 0 and f"(1 shown; older ones: lpnode jobs --before {job_id} --limit 1)" in stdout
    # the hint keeps the page's filters (review: it dropped them)
    code, stdout, _ = lpnode(capsys, nodes, "jobs", "--limit", "1", "--state", "cancelled")
    assert code == 0 and f"(1 shown; older ones: lpnode jobs --before {job_id} --state cancelled --limit 1)" in stdout
    code, stdout, _ = lpnode(capsys, nodes, "jobs", "--limit", "1", "--before", job_id)
    assert code == 0 and job_id not in stdout and ("1 job(s)" in stdout or f"no jobs before {job_id}" in stdout)
    code, _, stderr = lpnode(capsys, nodes, "jobs", "--before", "job_00000000")
    assert code == 1 and "no job job_00000000" in stderr and "(HTTP 404" in stderr


def test_ctrl_c_cancels_the_job_and_exits_130(nodes: Pair, tmp_path: Path) -> None:
    args = [*LPNODE, "txt2img", "a slow lighthouse", "-o", str(tmp_path / "never.png")]
    args += ["--width", "128", "--height", "128", "--steps", "50", "--max-price", "1000000000", "--deadline", "3600"]
    args += [f"--data-dir={nodes.requester.data_dir}"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        seen = b""
        while b"%" not in seen:  # the first progress line: the job runs on the worker
            line = process.stderr.readline()
            assert line, f"exited early: {seen.decode()}"
            seen += line
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err.decode()
    assert "interrupted: job" in err.decode() and "cancelled" in err.decode()
    assert not (tmp_path / "never.png").exists()
    latest = ask(nodes, lambda c: c.jobs(limit=1))[0]
    assert latest["state"] == "cancelled"


def test_ctrl_c_in_a_workflow_saves_the_receipts_of_the_steps_it_paid_for(nodes: Pair, tmp_path: Path) -> None:
    # QA: an interrupted workflow saved no receipt, though its finished steps were paid for
    spec = tmp_path / "slow.toml"
    spec.write_text(
        "max_price = 1000000000\ndeadline = 3600\n"
        '[[steps]]\npipeline = "text-to-image"\n'
        'params = { prompt = "a lighthouse", width = 64, height = 64, num_inference_steps = 2, guidance_scale = 0.0 }\n'
        '[[steps]]\npipeline = "image-to-video"\n'
        "params = { width = 128, height = 72, num_frames = 16, num_inference_steps = 50 }\n"
    )
    out = tmp_path / "slow.mp4"
    args = [*LPNODE, "workflow", "run", str(spec), "-o", str(out), f"--data-dir={nodes.requester.data_dir}"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        seen = b""
        while b"step 2/2 image-to-video" not in seen:  # step 1 is done (and paid for); step 2 runs
            chunk = process.stderr.read1(4096)  # progress redraws with \r: not line by line
            assert chunk, f"exited early: {seen.decode()}"
            seen += chunk
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err.decode()
    assert (tmp_path / "slow.mp4.step-1.receipt").exists(), (seen + b"////" + err).decode()
    receipt = verify_receipt((tmp_path / "slow.mp4.step-1.receipt").read_bytes())
    assert receipt.spec.pipeline == "text-to-image"
    assert "paid for step 1 (text-to-image)" in err.decode()
    assert not out.exists() and not (tmp_path / "slow.mp4.step-2.receipt").exists()


def test_upscale(nodes: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "in.png"
    assert lpnode(capsys, nodes, "txt2img", "a lighthouse", "-o", image, "--seed", "1", *T2I)[0] == 0
    big = tmp_path / "big.png"
    code, stdout, stderr = lpnode(capsys, nodes, "upscale", image, "-o", big, *TINY)
    assert code == 0, stderr
    assert big.read_bytes().startswith(b"\x89PNG") and f"saved {big}" in stdout
    assert lpnode(capsys, nodes, "receipt", "verify", f"{big}.receipt", "--output", big)[0] == 0
