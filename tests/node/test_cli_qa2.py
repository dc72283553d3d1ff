"""Regressions from the second outside-user pass (QA2): what the CLI shows of seeds and of a job moving peers.

Found by hand against three running nodes: upscale and frame interpolation results, workflow steps and
receipts showed a seed that plays no role in their output; a worker killed mid-job (`kill -9`) left no
trace in the progress lines (the bar went on from another peer, its counter starting over), only the
final summary named the lost try.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from lpnode.node.cli import main
from lpnode.node.cli_follow import follow
from lpnode.node.cli_format import job_summary, job_text, uses_seed
from lpnode.node.cli_jobs import fitted_steps
from lpnode.node.cli_progress import ProgressDisplay, WorkflowProgress
from lpnode.node.cli_workflow import load_spec
from lpnode.node.client import LpnodeClient
from lpnode.node.rpc_job_bodies import JobOptions
from lpnode.protocol import sign_receipt
from lpnode.protocol.errors import ConfigError, LpnodeError
from pydantic import ValidationError

from ..protocol.job_factory import WORKER, make_quote, make_receipt, quote_request, upscale_spec

OLD = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
NEW = "12D3KooWDxHc5CyN4s4SDzAHu8Bd4iikF8yfqBfrfCmxUo6H2S8d"


def test_only_pipelines_that_draw_noise_show_a_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [uses_seed(p) for p in ("text-to-image", "image-to-image", "image-to-video")] == [True] * 3
    assert [uses_seed(p) for p in ("upscale", "frame-interpolation")] == [False] * 2

    request = quote_request(upscale_spec())
    receipt = make_receipt(request, make_quote(request))
    saved = SimpleNamespace(
        path=Path("big.png"), size_bytes=10, seed=99, job={"price": 1}, receipt_path=Path("r"), receipt=receipt
    )
    assert "seed" not in job_summary([saved])
    path = tmp_path / "big.png.receipt"
    path.write_bytes(sign_receipt(WORKER, receipt))
    assert main(["receipt", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VALID") and "seed" not in out

    record = {"id": "j", "kind": "upscale", "result": {"images": [{"url": "/v1/outputs/ab", "seed": 5}], "jobs": []}}
    assert "output    /v1/outputs/ab\n" in job_text(record) + "\n"
    assert "(seed 5)" in job_text(record | {"kind": "text-to-image"})
    workflow = record | {
        "kind": "workflow",
        "request": {"steps": [{"pipeline": "text-to-image"}, {"pipeline": "upscale"}]},
    }
    assert "seed" not in job_text(workflow)


def test_a_job_moving_to_another_peer_says_so_on_its_own_line() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, "img2vid", tty=False)
    display.state("running")
    for step in (1, 5, 10):
        display.progress({"fraction": step / 20, "step": step, "total": 20, "peer_id": OLD})
    display.progress({"fraction": 1 / 20, "step": 1, "total": 20, "peer_id": NEW})
    display.progress({"fraction": 2 / 20, "step": 2, "total": 20, "peer_id": NEW})
    lines = out.getvalue().splitlines()
    assert lines[4] == "img2vid: 12D3KooW…CVe2Xo stopped at step 10/20; the job moved to 12D3KooW…6H2S8d"
    # the new try's progress is shown from its start (its first quarter), not hidden behind the old one's
    assert lines[5].startswith("img2vid [#") and "step 1/20  running on 12D3KooW…6H2S8d" in lines[5]

    tty = io.StringIO()
    display = ProgressDisplay(tty, "t", tty=True)
    display.progress({"fraction": 0.5, "step": 1, "total": 2, "peer_id": OLD})
    display.progress({"fraction": 0.5, "step": 1, "total": 2, "peer_id": NEW})
    assert "\nt: 12D3KooW…CVe2Xo stopped at step 1/2; the job moved to 12D3KooW…6H2S8d\n\r" in tty.getvalue()


def test_images_side_by_side_on_two_peers_are_no_move_but_a_count_going_back_is() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, "txt2img", tty=False, images=2)
    display.progress({"fraction": 0.25, "step": 1, "total": 4, "peer_id": OLD})
    display.progress({"fraction": 0.5, "step": 2, "total": 4, "peer_id": NEW})
    display.progress({"fraction": 0.75, "step": 3, "total": 4, "peer_id": OLD})
    assert "moved" not in out.getvalue()
    display.progress({"fraction": 0.5, "step": 2, "total": 4, "peer_id": NEW})
    assert out.getvalue().splitlines()[-2] == "txt2img: an image's worker stopped; it moved to 12D3KooW…6H2S8d"


def test_a_workflow_s_next_step_on_another_peer_is_no_move() -> None:
    out = io.StringIO()
    display = WorkflowProgress(out, ["text-to-image", "upscale"], tty=False)
    display.progress({"fraction": 0.25, "step": 1, "total": 2, "peer_id": OLD})
    display.progress({"fraction": 0.5, "step": 2, "total": 2, "peer_id": OLD})
    display.progress({"fraction": 0.75, "step": 1, "total": 2, "peer_id": NEW})
    assert "moved" not in out.getvalue()
    display.progress({"fraction": 0.55, "step": 0, "total": 2, "peer_id": OLD})
    assert "step 2/2 upscale: 12D3KooW…6H2S8d stopped at step 1/2; the job moved to 12D3KooW…CVe2Xo" in out.getvalue()


def test_a_data_dir_that_cannot_be_made_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # found with a read-only mount (`OSError: [Errno 30] Read-only file system` traceback from `lpnode run`/`id`);
    # a path under a file fails the same way in mkdir and needs no mount here
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["id", "--data-dir", str(blocker)]) == 2
    assert capsys.readouterr().err == f"lpnode: data dir {blocker} is a file, not a directory\n"
    assert main(["run", "--data-dir", str(blocker / "node"), "--no-mdns"]) == 2
    assert capsys.readouterr().err == f"lpnode: data dir {blocker / 'node'} cannot be created: Not a directory\n"


def test_an_output_that_cannot_be_written_is_refused_before_the_job_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by hand: `-o missing-dir/out.png` ran the job, paid for it, then failed to save; here no node runs
    # in tmp_path, so an answer about the output (not "no node running") shows the check comes first
    target = tmp_path / "missing" / "a.png"
    assert main(["txt2img", "x", "-o", str(target), "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"lpnode: cannot write {target}: no directory {target.parent}\n"
    assert main(["upscale", str(tmp_path), "-o", str(tmp_path), "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"lpnode: cannot write {tmp_path}: it is a directory\n"
    chain = tmp_path / "chain.toml"
    chain.write_text('[[steps]]\npipeline = "text-to-image"\nparams = { prompt = "x" }\n')
    assert main(["workflow", "run", str(chain), "-o", str(target), "--data-dir", str(tmp_path)]) == 1
    assert "no directory" in capsys.readouterr().err


def test_an_output_named_for_another_format_is_saved_as_is_and_said_so() -> None:
    request = quote_request()
    receipt = make_receipt(request, make_quote(request))

    def saved(name: str, media_type: str) -> SimpleNamespace:
        return SimpleNamespace(
            path=Path(name), size_bytes=2048, seed=1, job={}, receipt_path=Path(name + ".r"), receipt=receipt,
            media_type=media_type,
        )  # fmt: skip

    assert "saved pic.jpg (2.0 KiB, a PNG image whatever its name says)" in job_summary([saved("pic.jpg", "image/png")])
    assert "saved pic.PNG (2.0 KiB)\n" in job_summary([saved("pic.PNG", "image/png")])
    assert "(2.0 KiB, an H.264 MP4 video whatever its name says)" in job_summary([saved("v.gif", "video/mp4")])


def test_a_bad_verification_is_refused_in_words_not_as_a_pattern() -> None:
    with pytest.raises(ValidationError) as caught:
        JobOptions.model_validate({"verification": "all"})
    assert caught.value.errors()[0]["msg"] == "'all' is not none, spot or redundant:K with K from 2 to 5"
    assert JobOptions.model_validate({"verification": "redundant:3"}).verification == "redundant:3"


def test_a_workflow_whose_first_step_takes_a_file_asks_for_input_in_cli_terms(tmp_path: Path) -> None:
    # the node's 422 says "give it as base64 in `input`": the API's words, not a CLI user's
    chain = tmp_path / "up.toml"
    chain.write_text('[[steps]]\npipeline = "upscale"\nparams = { scale = 2 }\n')
    with pytest.raises(ConfigError, match=r"step 1 \(upscale\) needs an input file: give it with --input FILE"):
        load_spec(chain)
    image = tmp_path / "in.png"
    image.write_bytes(b"\x89PNG")
    assert load_spec(chain, image)["input"] == "iVBORw=="


def test_reputation_export_to_a_path_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # was a FileNotFoundError traceback, after the node had sent every evidence row
    target = tmp_path / "missing" / "evidence.json"
    assert main(["reputation", "export", "-o", str(target), "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"lpnode: cannot write {target}: no directory {target.parent}\n"


class _BrokenEvents(httpx.AsyncByteStream):
    """An event stream that sends one progress event, then breaks as a killed node's does."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'event: progress\ndata: {"fraction": 0.25, "step": 5, "total": 20, "peer_id": "P"}\n\n'
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def _node(record: dict[str, object] | None) -> httpx.MockTransport:
    """A node whose event stream breaks; after that it is gone (``record`` None) or answers ``record``."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, stream=_BrokenEvents())
        if record is None:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json=record)

    return httpx.MockTransport(answer)


async def test_a_node_killed_mid_job_is_told_in_words_and_a_broken_stream_alone_is_recovered() -> None:
    # found with kill -9 of the requester's node under `lpnode img2vid`: the CLI said "event stream ... failed:
    # RemoteProtocolError('peer closed connection without sending complete message body (incomplete chunked read)')"
    record = {"id": "j1", "state": "running"}
    out = io.StringIO()
    async with LpnodeClient("http://node", "t", data_dir=Path("/d"), transport=_node(None)) as client:
        with pytest.raises(LpnodeError) as caught:
            await follow(client, record, ProgressDisplay(out, "img2vid", tty=False))
    assert str(caught.value) == (
        "the node stopped while job j1 ran; once it runs again, `lpnode job j1` shows what became of it"
    )
    assert "step 5/20" in out.getvalue()
    done = {"id": "j1", "state": "succeeded", "result": {}}
    async with LpnodeClient("http://node", "t", data_dir=Path("/d"), transport=_node(done)) as client:
        assert await follow(client, record, ProgressDisplay(io.StringIO(), "x", tty=False)) == done


def test_a_workflow_record_shows_its_share_of_its_steps_not_the_last_step_s_counter() -> None:
    # `lpnode job <workflow>` of the README's 4-step chain said "progress  100% (step 3/3)": frame interpolation's
    # own counter, read as "step 3 of 3" of a chain of four
    steps = [{"pipeline": p} for p in ("text-to-image", "image-to-video", "upscale", "frame-interpolation")]
    record = {"kind": "workflow", "progress": {"fraction": 1.0, "step": 3, "total": 3}, "request": {"steps": steps}}
    assert "progress  100% of 4 step(s)" in job_text(record)
    assert "progress  50% (step 1/2)" in job_text(
        {"kind": "upscale", "progress": {"fraction": 0.5, "step": 1, "total": 2}}
    )


def test_a_listen_port_another_process_holds_is_refused_before_the_node_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by hand: py-libp2p listens with SO_REUSEPORT, so a second node on lp1's port started silently and the
    # kernel split incoming connections between the two; the holder here listens the same way
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        addr = f"/ip4/127.0.0.1/tcp/{holder.getsockname()[1]}"
        assert main(["run", "--data-dir", str(tmp_path), "--listen", addr, "--no-mdns"]) == 2
        assert capsys.readouterr().err == f"lpnode: listen: {addr} is in use by another process (another node?)\n"
        rpc = f"127.0.0.1:{holder.getsockname()[1]}"  # an RPC port in use was found only after the models loaded
        assert main(["run", "--data-dir", str(tmp_path), "--rpc", rpc, "--listen", "/ip4/127.0.0.1/tcp/0"]) == 2
        assert capsys.readouterr().err == f"lpnode: rpc: {rpc} is in use by another process (another node?)\n"


def test_a_default_step_count_beyond_every_offer_comes_down_to_the_most_one_takes() -> None:
    # `lpnode img2img out.png "winter" -o w.png` (no --steps) was a 422: Livepeer's default of 100 steps, where
    # the tiny presets take 50; the size was already fitted this way, the steps were not
    tiny, big = {"max_steps": 50}, {"max_steps": 200}
    assert fitted_steps(100, [tiny]) == 50
    assert fitted_steps(100, [tiny, big]) == 100  # some peer takes the default: it stays
    assert fitted_steps(100, []) == 100  # nobody says: the node answers
    assert fitted_steps(25, [tiny]) == 25


def test_lpnode_alone_is_usage_and_version_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # a bare `lpnode` was a ValueError traceback (zip(strict=True) over an empty command line); --version unknown
    with pytest.raises(SystemExit) as usage:
        main([])
    assert usage.value.code == 2 and "the following arguments are required: COMMAND" in capsys.readouterr().err
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out == "lpnode 0.1.0\n"


def test_a_cancel_the_node_did_not_carry_out_is_not_reported_as_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # seen: `lpnode cancel <a workflow's running step>` waited for the step to end, then printed
    # "job ... succeeded" with exit 0; here a stand-in node answers the DELETE the same way
    class Node(http.server.BaseHTTPRequestHandler):
        def do_DELETE(self) -> None:
            body = json.dumps({"id": "job_a", "state": "succeeded"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Node) as server:
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        (tmp_path / "rpc.json").write_text(
            json.dumps({"url": f"http://127.0.0.1:{server.server_port}", "pid": os.getpid()})
        )
        (tmp_path / "rpc.token").write_text("t0ken")
        assert main(["cancel", "job_a", "--data-dir", str(tmp_path)]) == 1
        thread.join(timeout=10)
    assert capsys.readouterr().err == "lpnode: job job_a was not cancelled: it ended succeeded\n"
