"""A requester written in JavaScript from docs/protocol.md alone (tests/e2e/js_peer) against a real worker.

`requester.mjs` is an independent implementation of the wire protocol (js-libp2p 2.x for TCP + Noise +
Yamux; its own canonical msgpack, envelopes, job ids and frames): it checks its encoder against every
§14 vector of the document, runs a text-to-image job on an ``lpnode run --serve tiny-sdxl`` worker
(quote and receipt signatures verified, the output's sha256 against the receipt, the receipt bound to
its job id, requester, seed and parameters), and plays a bad peer, checking each answer lpnode gives
against the one the document promises.

Needs Node.js (20+) and the packages: ``cd tests/e2e/js_peer && npm ci``. Skipped without them, so the
default test run (and CI) does not depend on npm.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .cluster import LPNODE, cluster_in_thread

JS_DIR = Path(__file__).parent / "js_peer"
RUN_S = 120  # one requester run; a job on the tiny preset takes well under a second

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("node") is None or not (JS_DIR / "node_modules").is_dir(),
        reason="needs node and `npm ci` in tests/e2e/js_peer",
    ),
]


@dataclass(frozen=True)
class Worker:
    peer_id: str
    addr: str
    rpc_url: str
    token: str
    model_id: str  # what the worker calls the text-to-image model of its tiny-sdxl preset


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with cluster_in_thread(tmp_path_factory.mktemp("js_peer")) as portal:
        node = portal.call(lambda c: c.launch("worker", serve="tiny-sdxl"))
        models = httpx.get(
            f"{node.url}/v1/node", headers={"Authorization": f"Bearer {node.token}"}, trust_env=False, timeout=30
        ).json()["models"]
        model_id = next(m["model_id"] for m in models if m["pipeline"] == "text-to-image")
        yield Worker(node.peer_id, node.addr, node.url, node.token, model_id)


def requester(*args: str) -> dict[str, Any]:
    """``node requester.mjs ARGS``: its one JSON line (and its exit status under ``_rc``)."""
    done = subprocess.run(
        ["node", "requester.mjs", *args], cwd=JS_DIR, capture_output=True, text=True, timeout=RUN_S, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"requester.mjs printed no JSON line (exit {done.returncode}); stderr:\n{done.stderr}"
    answer: dict[str, Any] = json.loads(lines[-1])
    answer["_rc"] = done.returncode
    return answer


def test_js_encoder_reproduces_every_documented_vector() -> None:
    answer = requester("--self-test")
    assert answer["ok"], answer
    assert answer["untested_vectors"] == []
    assert len(answer["vectors"]) >= 13 and all(v["ok"] for v in answer["vectors"])


def test_js_requester_runs_a_text_to_image_job_end_to_end(worker: Worker, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    answer = requester(
        f"--addr={worker.addr}",
        "--prompt=a lighthouse at dusk",
        "--width=64",
        "--height=64",
        "--steps=2",
        "--seed=42",
        "--max-price=1000",
        f"--model={worker.model_id}",
        f"--out={out}",
    )
    assert answer["ok"] and answer["_rc"] == 0, answer
    assert answer["worker"] == worker.peer_id
    receipt = answer["receipt"]
    assert receipt["signature_valid"]
    assert receipt["worker_peer_id"] == worker.peer_id
    assert receipt["requester_peer_id"] == answer["requester"]
    assert receipt["job_id"] == answer["job_id"]
    assert receipt["seed"] == 42
    assert receipt["params"] == {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "guidance_scale": 1.5,
    }
    assert receipt["model_id"] == worker.model_id
    assert 0 <= answer["price"] <= 1000 and receipt["price"] == answer["price"]
    output = answer["output"]
    assert output["sha256_matches_receipt"]
    assert output["sha256"] == receipt["outputs"][0]["sha256"]
    assert output["png"] == {"ok": True, "width": 64, "height": 64, "chunks": output["png"]["chunks"]}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "out.png.receipt").stat().st_size > 0
    # the receipt the JS peer verified also verifies with lpnode's own offline checker
    checked = subprocess.run(
        [*LPNODE, "receipt", "verify", str(tmp_path / "out.png.receipt"), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0 and "VALID" in checked.stdout, checked.stdout + checked.stderr


def test_js_requester_taking_the_quote_in_advance(worker: Worker, tmp_path: Path) -> None:
    answer = requester(f"--addr={worker.addr}", "--accept-in-advance", f"--out={tmp_path / 'a.png'}", "--seed=7")
    assert answer["ok"], answer
    assert answer["receipt"]["seed"] == 7 and answer["output"]["sha256_matches_receipt"]


def test_a_js_peer_that_serves_no_ping_keeps_its_connection(worker: Worker, tmp_path: Path) -> None:
    """Health pings to a peer without /ipfs/ping get "na": alive. py-libp2p 0.8.1 read that as a failed
    ping and closed the connection at the first health check, resetting the job (network/_libp2p_health)."""
    answer = requester(
        f"--addr={worker.addr}", "--no-ping", "--accept-delay-ms=4000", f"--out={tmp_path / 'p.png'}", "--seed=3"
    )
    assert answer["ok"], answer


@pytest.mark.parametrize(
    "mode",
    [
        "forged-signature",  # JobError("", protocol_violation)
        "garbage",  # JobError("", protocol_violation), stream still framed
        "garbage-kind",  # stream reset
        "oversized-frame",  # stream reset before the body is read
        "oversized-message",  # JobError("", protocol_violation)
        "unknown-model",  # Refusal(unknown_model)
        "absurd-params",  # JobError("", protocol_violation): width 100000 is outside the field's bounds
        "too-large",  # Refusal(unsupported_params): 4096x4096 is beyond the tiny model
    ],
)
def test_lpnode_answers_a_bad_js_peer_as_documented(worker: Worker, mode: str) -> None:
    answer = requester(f"--addr={worker.addr}", f"--mode={mode}", f"--model={worker.model_id}")
    assert answer["ok"], answer
    if answer["answer"]["answer"] in ("job_error", "job_refusal"):
        # §8.6: after its last message the worker waits for the requester's close (up to 10 s)
        assert answer["answer"]["then"] == "waits_for_our_close", answer


def test_a_js_peer_that_leaves_after_accept_frees_the_reservation(worker: Worker) -> None:
    answer = requester(
        f"--addr={worker.addr}",
        "--mode=disconnect-after-accept",
        f"--model={worker.model_id}",
        f"--rpc={worker.rpc_url}",
        f"--token={worker.token}",
        "--rounds=5",  # one more than the worker's 4 reservations
    )
    assert answer["ok"], answer
    assert all(a["ok"] for a in answer["answer"]["abandoned"])
    assert answer["answer"]["rpc_until_idle"]["queue_depth"] == 0
    assert answer["answer"]["next_job"]["ok"]


def test_a_js_peer_cancelling_mid_run_gets_no_answer_and_the_slot_back(worker: Worker) -> None:
    answer = requester(
        f"--addr={worker.addr}",
        "--mode=cancel-mid-run",
        f"--model={worker.model_id}",
        f"--rpc={worker.rpc_url}",
        f"--token={worker.token}",
    )
    assert answer["ok"], answer
    assert answer["answer"]["rpc"]["queue_depth"] == 0


def test_a_silent_js_stream_ends_after_the_documented_10_s(worker: Worker) -> None:
    answer = requester(f"--addr={worker.addr}", "--mode=silent-stream")
    assert answer["ok"], answer
