"""A worker written in JavaScript from docs/protocol.md alone (tests/e2e/js_peer/worker.mjs) serving a real requester.

``worker.mjs`` is the worker side of the independent implementation whose requester side
test_js_peer_e2e.py drives: js-libp2p 2.x (TCP + Noise + Yamux + gossipsub), its own canonical msgpack,
envelopes and job ids. It dials a requester-only ``lpnode run``, publishes signed adverts on
``lpnode/adverts/1`` offering ``lpnode/tiny-sdxl``, and answers ``/lpnode/job/1``: a signed Quote, Progress,
a Result with a signed Receipt, the output in chunks. Its "model" draws a PNG from the seed, deterministically.

The honest tests check that lpnode takes its answer as any other worker's: the image bytes, the receipt
(verified by ``lpnode receipt verify``), the record naming the JS worker. The bad-worker tests run it in a
mode that breaks one promise of the document at one step, and check that lpnode's requester rejects the
try, as the document says, records it, and keeps nothing of it.

Needs Node.js (20+) and the packages: ``cd tests/e2e/js_peer && npm ci``. Skipped without them, so the
default test run (and CI) does not depend on npm.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from lpnode.reputation.scoring import Evidence, ScoringConfig, score

from .cluster import LPNODE, cluster_in_thread

JS_DIR = Path(__file__).parent / "js_peer"
MODEL = "lpnode/tiny-sdxl"  # what `lpnode run --serve tiny-sdxl` advertises; the JS worker claims it
READY_S = 30.0  # the JS worker's start: node, libp2p, the dial
SEEN_S = 30.0  # its advert reaching the requester's directory
GONE_S = 15.0  # a stopped worker leaving the directory (0.5 s grace after the disconnect, FAST_GOSSIP)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("node") is None or not (JS_DIR / "node_modules").is_dir(),
        reason="needs node and `npm ci` in tests/e2e/js_peer",
    ),
]


@dataclass(frozen=True)
class Requester:
    peer_id: str
    addr: str
    url: str
    token: str

    def http(self, *, timeout_s: float = 150.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, trust_env=False)


@pytest.fixture(scope="module")
def requester(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Requester]:
    with cluster_in_thread(tmp_path_factory.mktemp("js_worker")) as portal:
        node = portal.call(lambda c: c.launch("requester"))  # serve="none": a requester only
        yield Requester(node.peer_id, node.addr, node.url, node.token)


class JsWorker:
    """A running ``worker.mjs``: its events, read from its stdout as they come (``--events-stdout``)."""

    def __init__(self, peer_id: str, mode: str, process: subprocess.Popen[str]) -> None:
        self.peer_id, self.mode, self.process = peer_id, mode, process
        self._events: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"worker.mjs {mode} events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # ends when the process closes its stdout
            if line.startswith("{"):
                with self._arrived:
                    self._events.append(json.loads(line))
                    self._arrived.notify_all()

    def join(self) -> None:
        """Once the process has exited: its last events read."""
        self._reader.join(timeout=10)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._arrived:
            return [e for e in self._events if kind is None or e["event"] == kind]

    def wait_event(self, kind: str, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """The worker logs a job's last event (its close) a moment after the requester has its answer."""
        with self._arrived:
            self._arrived.wait_for(lambda: any(e["event"] == kind for e in self._events), timeout=timeout_s)
        return self.events(kind)


def peers(req: Requester, changed_since: str = "", wait_s: float = 0) -> dict[str, Any]:
    params = {"changed_since": changed_since, "wait_s": wait_s} if changed_since else {}
    with req.http(timeout_s=wait_s + 10) as http:
        answer: dict[str, Any] = http.get("/v1/peers", params=params).json()
        return answer


def wait_peers(req: Requester, done: Any, timeout_s: float, what: str) -> list[dict[str, Any]]:
    """Long-poll the requester's directory (GET /v1/peers) until ``done(peers)``."""
    until = time.monotonic() + timeout_s
    answer = peers(req)
    while not done(answer["peers"]):
        left = until - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what} not within {timeout_s} s; peers: {answer['peers']}")
        answer = peers(req, answer["version"], min(2.0, left))
    return list(answer["peers"])


@contextmanager
def js_worker(req: Requester, tmp_path: Path, mode: str = "honest", *args: str) -> Iterator[JsWorker]:
    """``node worker.mjs`` dialing the requester, until the requester's directory lists its offer; stopped after."""
    name = f"{mode}-{len(list(tmp_path.glob('*.log')))}"
    log = (tmp_path / f"{name}.log").open("w")
    process = subprocess.Popen(
        [
            "node",
            "worker.mjs",
            f"--bootstrap={req.addr}",
            f"--mode={mode}",
            "--events-stdout",
            f"--model={MODEL}",
            "--advert-interval-ms=500",
            "--advert-ttl-ms=5000",
            *args,
        ],
        cwd=JS_DIR,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    worker: JsWorker | None = None
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the ready line; then one line per event (JsWorker reads them)
        ready = json.loads(line) if line.startswith("{") else {"ready": False, "line": line}
        assert ready.get("ready"), f"worker.mjs did not start: {ready}; log:\n{(tmp_path / f'{name}.log').read_text()}"
        worker = JsWorker(ready["peer_id"], mode, process)
        wait_peers(
            req,
            lambda ps: any(p["peer_id"] == worker.peer_id and p["models"] for p in ps),
            SEEN_S,
            f"the JS worker {worker.peer_id}'s advert",
        )
        yield worker
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        if worker is not None:
            worker.join()  # the reader ends at the stdout's end; only then is it closed under it
        if process.stdout is not None:
            process.stdout.close()
    # the next test's worker must be the only candidate: wait for this one to leave the directory
    wait_peers(req, lambda ps: all(p["peer_id"] != worker.peer_id for p in ps), GONE_S, f"{worker.peer_id} gone")


def text_to_image(req: Requester, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {
        "prompt": "a lighthouse at dusk",
        "model_id": MODEL,
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "seed": 42,
        "max_price": 100,
        "allow_local": False,
        **fields,
    }
    with req.http() as http:
        res = http.post("/text-to-image", json=body)
        return res.status_code, res.json()


def newest_record(req: Requester) -> dict[str, Any]:
    with req.http() as http:
        record: dict[str, Any] = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
        return record


def rendered_sha256(seed: int, width: int = 64, height: int = 64, prompt: str = "a lighthouse at dusk") -> str:
    """The sha256 of the PNG worker.mjs draws for this seed, computed apart from any job."""
    done = subprocess.run(
        [
            "node",
            "worker.mjs",
            "--render",
            f"--seed={seed}",
            f"--width={width}",
            f"--height={height}",
            f"--prompt={prompt}",
        ],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sha: str = json.loads(done.stdout)["sha256"]
    return sha


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# ------------------------------------------------------------------ an honest JS worker


@pytest.mark.parametrize(
    "args",
    [
        (),  # the classic flow (§8.1): its advert lists no job_features
        ("--accept-in-advance",),  # job_features: accept_in_advance, so the request is taken in advance (§8.2)
        ("--no-listen",),  # it only dials out: its adverts list no address, the job comes over its own connection
    ],
    ids=["classic", "accept-in-advance", "dial-out-only"],
)
def test_lpnode_runs_a_job_on_the_js_worker(requester: Requester, tmp_path: Path, args: tuple[str, ...]) -> None:
    in_advance = "--accept-in-advance" in args
    with js_worker(requester, tmp_path, "honest", *args) as worker:
        # the advert as the requester's directory holds it: what the JS worker signed and gossiped
        listed = next(p for p in peers(requester)["peers"] if p["peer_id"] == worker.peer_id)
        assert listed["connected"] and listed["software_version"] == "js-worker/0.1.0"
        assert (listed["listen_addrs"] == []) is ("--no-listen" in args)
        assert [(m["pipeline"], m["model_id"]) for m in listed["models"]] == [("text-to-image", MODEL)]

        status, answer = text_to_image(requester, seed=42)
        assert status == 200, answer
        [job] = answer["jobs"]
        assert job["worker_peer_id"] == worker.peer_id and job["model_id"] == MODEL
        assert [(a["peer_id"], a["outcome"]) for a in job["attempts"]] == [(worker.peer_id, "done")]

        # the JS worker's own account of the job: how it was asked, what it sent
        [asked] = worker.events("request")
        assert asked["requester"] == requester.peer_id and asked["job_id"] == job["job_id"]
        assert asked["accept"] is in_advance  # taken in advance only towards a worker advertising it (§8.2)
        assert asked["seed"] == 42 and asked["params"]["width"] == 64 and asked["params"]["num_inference_steps"] == 2
        [sent] = worker.events("result")
        assert sent["job_id"] == job["job_id"] and sent["price"] == job["price"]

        # the image bytes: what the worker sent, and what its "model" draws for seed 42
        with requester.http() as http:
            image = http.get(answer["images"][0]["url"]).content
            receipt = http.get(f"/v1/jobs/{answer['request_id']}/receipt").content
        digest = hashlib.sha256(image).hexdigest()
        assert digest == sent["output_sha256"] == sent["sent_sha256"] == rendered_sha256(42)
        assert answer["images"][0]["url"] == f"/v1/outputs/{digest}"
        assert png_size(image) == (64, 64)

        # the receipt: the bytes the JS worker signed, kept as sent, verified by lpnode's offline checker
        assert receipt == base64.b64decode(job["receipt"])
        assert hashlib.sha256(receipt).hexdigest() == sent["receipt_sha256"]
        (tmp_path / "out.png").write_bytes(image)
        (tmp_path / "out.png.receipt").write_bytes(receipt)
        checked = subprocess.run(
            [*LPNODE, "receipt", "verify", str(tmp_path / "out.png.receipt"), "--output", str(tmp_path / "out.png")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == 0 and "VALID" in checked.stdout, checked.stdout + checked.stderr
        assert worker.peer_id in checked.stdout and job["job_id"] in checked.stdout

        # the record names the JS worker
        record = newest_record(requester)
        assert record["id"] == answer["request_id"] and record["state"] == "succeeded"
        assert [(a["peer_id"], a["outcome"]) for a in record["attempts"]] == [(worker.peer_id, "done")]
        assert record["result"]["jobs"][0]["worker_peer_id"] == worker.peer_id

        # §8.6: the requester closed the stream after the outputs; the worker closed after it
        closed = [e for e in worker.wait_event("closed") if e["job_id"] == job["job_id"]]
        assert closed and closed[0]["how"] == "closed_by_requester", worker.events()

        # the same seed again: a new job (new nonce, new job id), the same bytes
        status, again = text_to_image(requester, seed=42)
        assert status == 200, again
        assert again["jobs"][0]["job_id"] != job["job_id"]
        assert again["images"][0]["url"] == answer["images"][0]["url"]


# ------------------------------------------------------------------ bad JS workers

# mode -> (the attempt's outcome, words of its detail, how the requester ended the stream). `cancel:R`: it sent
# Cancel(job_id, R) and closed (§8.3 requester rules 2, 4, 5); `close`: it closed without a word (the job had
# ended: the outputs were read, §8.6); `reset`: it reset the stream (§6: it cannot keep it framed).
PV = "cancel:protocol_violation"
BAD = {
    "quote-bad-signature": ("garbage", "does not verify", PV),
    "quote-over-price": ("violation:over_price", "101 > max 100", PV),
    # §8.2 says the reference requester cancels such a quote when taken in advance; it does so in the classic
    # flow too, with a reason of its own (free text, §12)
    "quote-above-advert": (
        "violation:quote_above_advert",
        "quoted 2 micro-credits; its advert prices this job at 1",
        "cancel:quote above the advertised price",
    ),
    "receipt-bad-signature": ("violation:bad_receipt", "does not verify", PV),
    "receipt-wrong-seed": ("violation:receipt_mismatch", "job", PV),
    "receipt-wrong-requester": ("violation:receipt_mismatch", "job", PV),
    "result-wrong-job": ("violation:wrong_job", "names another job", PV),
    "garbage-message": ("garbage", "msgpack", PV),
    "garbage-frame": ("garbage", "kind byte 0x07", "reset"),
    "vanish-after-accept": ("disconnected", "after its quote was accepted", None),
    "output-hash-mismatch": ("output_mismatch", "does not match the receipt", "close"),
    "not-a-png": ("violation:bad_output", "not a readable PNG", "close"),
    "wrong-size": ("violation:bad_output", "is 32x64, not the 64x64", "close"),
}


def how_it_ended(worker: JsWorker, job_id: str) -> str:
    """What the requester did to the stream, as the JS worker saw it."""
    cancels = [e["reason"] for e in worker.events("cancelled") if e["job_id"] == job_id]
    closed = [e for e in worker.wait_event("closed") if e["job_id"] == job_id]
    assert closed, worker.events()
    cancels += [s.split(":", 1)[1] for s in closed[0]["seen"] if s.startswith("job_cancel:")]
    if cancels:
        assert len(cancels) == 1, cancels
        return f"cancel:{cancels[0]}"
    return {"closed_by_requester": "close", "reset_by_requester": "reset"}.get(closed[0]["how"], closed[0]["how"])


@pytest.mark.parametrize("mode", list(BAD))
def test_lpnode_rejects_a_bad_js_worker(requester: Requester, tmp_path: Path, mode: str) -> None:
    outcome, words, ended = BAD[mode]
    with js_worker(requester, tmp_path, mode) as worker:
        status, answer = text_to_image(requester, seed=7)
        # the only candidate failed: the job fails with a clear error naming the worker and why (§12)
        assert status == 503 and answer["error"] == "job_failed", answer
        assert f"{worker.peer_id[-12:]}: {outcome} (" in answer["message"] and words in answer["message"], answer
        record = newest_record(requester)
        assert record["state"] == "failed", record
        [attempt] = record["attempts"]
        assert (attempt["peer_id"], attempt["outcome"]) == (worker.peer_id, outcome), attempt
        assert words in attempt["detail"], attempt

        [asked] = worker.events("request")
        if ended is not None:
            assert how_it_ended(worker, asked["job_id"]) == ended, worker.events()
        # whatever the worker sent is not kept as an output (and not under the hash it signed)
        for sent in worker.events("result"):
            with requester.http() as http:
                for sha in {sent["output_sha256"], sent["sent_sha256"]}:
                    assert http.get(f"/v1/outputs/{sha}").status_code == 404, sent


def test_a_silent_js_worker_fails_the_job_at_its_deadline(requester: Requester, tmp_path: Path) -> None:
    with js_worker(requester, tmp_path, "silent-after-accept") as worker:
        status, answer = text_to_image(requester, seed=8, deadline=6)
        assert status == 503 and answer["error"] == "job_failed", answer
        [attempt] = newest_record(requester)["attempts"]
        assert (attempt["peer_id"], attempt["outcome"]) == (worker.peer_id, "deadline"), attempt
        # the requester told the worker it gave up (§8.5 says with the reason "deadline")
        [asked] = worker.events("request")
        closed = [e for e in worker.wait_event("closed") if e["job_id"] == asked["job_id"]]
        assert closed and any(s.startswith("job_cancel:") for s in closed[0]["seen"]), worker.events()


def test_lpnode_moves_a_job_from_a_bad_js_worker_to_an_honest_one(requester: Requester, tmp_path: Path) -> None:
    """The bad worker is asked first (``prefer``); its try is recorded and the job goes on to the honest one."""
    with (
        js_worker(requester, tmp_path, "output-hash-mismatch") as bad,
        js_worker(requester, tmp_path, "honest") as good,
    ):
        status, answer = text_to_image(requester, seed=9, prefer=[bad.peer_id])
        assert status == 200, answer
        [job] = answer["jobs"]
        assert job["worker_peer_id"] == good.peer_id
        assert [(a["peer_id"], a["outcome"]) for a in job["attempts"]] == [
            (bad.peer_id, "output_mismatch"),
            (good.peer_id, "done"),
        ]
        [bad_job] = bad.events("request")
        assert job["job_id"] in {e["job_id"] for e in good.events("request")}
        assert bad_job["job_id"] != job["job_id"]  # the next try is a new job: a fresh nonce (§12)
        assert answer["images"][0]["url"] == f"/v1/outputs/{rendered_sha256(9)}"


# ------------------------------------------------------------------ failed tries count against the worker


def reputation_of(req: Requester, peer_id: str) -> dict[str, Any]:
    with req.http() as http:
        answer: dict[str, Any] = http.get(f"/v1/reputation/{peer_id}").json()
        return answer


def test_a_js_worker_that_signs_wrong_results_loses_its_place_and_is_banned(
    requester: Requester, tmp_path: Path
) -> None:
    """A worker that signs wrong-size PNGs is asked first while nobody has a record (it advertises a little more
    speed); its failed try is recorded as a signed wrong result (a cheat), so from the next job on the honest worker
    ranks first, and its second one (a job of its own only through exploration, else a spot check's copy) bans it."""
    jobs = 6
    with (
        js_worker(requester, tmp_path, "wrong-size", "--speed=6.0") as bad,
        js_worker(requester, tmp_path, "honest", "--speed=5.0") as good,
    ):
        firsts: list[str] = []
        tries_on_bad = 0
        for n in range(jobs):
            status, answer = text_to_image(requester, seed=100 + n)
            assert status == 200, answer
            [job] = answer["jobs"]
            assert job["worker_peer_id"] == good.peer_id, job
            tried = [(a["peer_id"], a["outcome"]) for a in job["attempts"]]
            if n == 0:  # nobody has a record: the faster one first
                assert tried == [(bad.peer_id, "violation:bad_output"), (good.peer_id, "done")], tried
                known = reputation_of(requester, bad.peer_id)
                [family] = known["families"]
                assert (family["failed_tries"], family["cheats"], known["failure_count"]) == (1, 1, 1), known
                [failure] = known["recent_failures"]
                assert failure["fault"] == "cheat" and failure["receipt"], failure  # its signed receipt, kept
                newcomer = score(Evidence(), 0.0, ScoringConfig())  # the honest worker's: it has no check yet
                assert family["score"] < newcomer, (family, newcomer)
            firsts.append(tried[0][0])
            tries_on_bad += sum(peer == bad.peer_id for peer, _ in tried)
        # after the first failure it is asked first only by exploration (5 % of jobs), and once more bans it
        assert firsts[0] == bad.peer_id and firsts[1:].count(bad.peer_id) <= 1, firsts
        assert tries_on_bad <= 2, tries_on_bad

        # the honest worker's jobs are spot-checked on the only other peer: the bad one's copy fails the same way,
        # a second signed wrong result, and two ban (the SPRT, as two check blames do)
        until = time.monotonic() + 30
        while not (known := reputation_of(requester, bad.peer_id))["banned"] and (left := until - time.monotonic()) > 0:
            with requester.http() as http:  # long-poll: the next settled check (a ban follows a check's blame)
                checks = http.get("/v1/reputation", params={"limit": 1}).json()["counters"]["checks"]
                http.get("/v1/reputation", params={"limit": 1, "checks_above": checks, "wait_s": min(left, 10.0)})
        assert known["banned"] and known["ban"]["reason"] == "signed wrong results", known
        assert known["ban"]["failure_id"] is not None and known["failure_count"] >= 2, known
        assert reputation_of(requester, good.peer_id)["banned"] is False
        with requester.http() as http:
            rows = http.get("/v1/reputation/failures", params={"peer_id": bad.peer_id}).json()["failures"]
        assert rows and all(r["fault"] == "cheat" and r["outcome"] == "violation:bad_output" for r in rows), rows
        # the kept receipt is the worker's own, and it verifies offline
        (tmp_path / "bad.receipt").write_bytes(base64.b64decode(rows[0]["receipt"]))
        checked = subprocess.run(
            [*LPNODE, "receipt", "verify", str(tmp_path / "bad.receipt")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == 0 and bad.peer_id in checked.stdout, checked.stdout + checked.stderr
