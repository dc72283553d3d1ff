"""Bad requests against real ``lpnode run`` processes: each is refused with the right status and harms nothing.

One worker (tiny-sdxl) and one requester whose input limit is configured small
(``max_input_bytes = 4096``) so an oversized upload costs a few kilobytes, shared
by every test of the module (starting processes is the slow part). What the
in-process tests check of the RPC layer and the job protocol, checked here over
real HTTP and real libp2p:

- an unknown model, or a pipeline nobody serves: 404, and the message lists
  what the network offers;
- an input over the node's limit: 413, declared or streamed;
- invalid parameters: 422 before any peer is contacted (the worker's count of
  inbound job streams and the requester's outbound ones do not move, and no
  job record is made; a valid job afterwards moves both, so they do count);
- garbage on job streams, from a libp2p host in this process, while a real job
  runs on the same worker: the job succeeds and the worker's stream handler
  never crashes.

Every job here asks for ``verification: none``: a spot check running in the
background would open streams of its own and blur the stream counts.
"""

from __future__ import annotations

import io
import itertools
import random
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import pytest
import trio
from lpnode.node.network.libp2p import Libp2pConfig, Libp2pNetwork, open_libp2p_network
from lpnode.protocol import NodeKey
from lpnode.protocol.names import JOB_PROTOCOL
from PIL import Image

from .cluster import NodeProcess, Pair, cluster_in_thread, launch_pair

pytestmark = pytest.mark.slow

INPUT_LIMIT = 4096  # bytes: the requester's max_input_bytes (the config's minimum is 1024)
FORM_OVERHEAD = 1024 * 1024  # rpc_job_bodies.FORM_OVERHEAD_BYTES: what a multipart body may add to its file
JSON_LIMIT = 1024 * 1024  # rpc_jobs.MAX_JSON_BYTES: a text-to-image body
BOUND_S = 60  # any one test; a hang fails it instead of stalling the run
T2I: dict[str, Any] = {
    "prompt": "a lighthouse at dusk",
    "width": 64,
    "height": 64,
    "guidance_scale": 0.0,
    "num_inference_steps": 2,
    "seed": 7,
    "max_price": 1_000,
    "deadline": 60,
    "verification": "none",
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    # module-scoped: the processes live in a trio loop of their own, each test runs in its own
    limit = f"max_input_bytes = {INPUT_LIMIT}\n"
    with cluster_in_thread(tmp_path_factory.mktemp("bad-requests")) as cluster:
        yield cluster.call(partial(launch_pair, serve="tiny-sdxl", requester_config=limit))


def png(side: int, *, noise: bool = False) -> bytes:
    """A real PNG: flat grey compresses to a few hundred bytes, seeded noise to ~3 bytes a pixel."""
    image = Image.new("RGB", (side, side), (128, 128, 128))
    if noise:
        image.frombytes(random.Random(side).randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def counters(node: NodeProcess) -> dict[str, int]:
    """The node's libp2p counters: ``inbound_streams`` counts job streams served, ``outbound_streams`` opened."""
    async with node.http(timeout_s=10) as client:
        answer = await client.get("/v1/node")
    assert answer.status_code == 200, answer.text
    network: dict[str, int] = answer.json()["gossip"]["network"]
    return {name: network.get(name, 0) for name in ("inbound_streams", "outbound_streams", "inbound_handler_crashes")}


async def job_count(node: NodeProcess) -> int:
    async with node.http(timeout_s=10) as client:
        answer = await client.get("/v1/jobs", params={"limit": 500})
    assert answer.status_code == 200, answer.text
    return len(answer.json()["jobs"])


async def test_an_unknown_model_is_404_and_the_message_lists_what_the_network_offers(pair: Pair) -> None:
    with trio.fail_after(BOUND_S):
        async with pair.requester.http(timeout_s=BOUND_S) as client:
            unknown = await client.post("/text-to-image", json=T2I | {"model_id": "nobody/has-this"})
            # a pipeline the only worker does not serve, with a valid image under the input limit
            image = png(32)
            assert len(image) < INPUT_LIMIT
            upscale = await client.post(
                "/upscale", files={"image": ("in.png", image, "image/png")}, data={"verification": "none"}
            )
    assert unknown.status_code == 404, unknown.text
    body = unknown.json()
    assert set(body) == {"error", "message", "detail"} and body["detail"] == {"msg": body["message"]}
    assert "no peer offers text-to-image nobody/has-this" in body["message"]
    assert "lpnode/tiny-sdxl" in body["message"]  # what the network does offer
    assert upscale.status_code == 404, upscale.text
    assert "upscale" in upscale.json()["message"] and "lpnode/tiny-sdxl" in upscale.json()["message"]


async def test_an_input_over_the_limit_is_413(pair: Pair) -> None:
    big = png(64, noise=True)
    assert len(big) > INPUT_LIMIT
    before = await job_count(pair.requester)

    async def streamed(total: int) -> AsyncIterator[bytes]:
        """A multipart body with no declared length, larger than the limit plus the form's allowance."""
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        for _ in range(total // 65536 + 1):
            yield b"\x00" * 65536

    with trio.fail_after(BOUND_S):
        async with pair.requester.http(timeout_s=BOUND_S) as client:
            declared = await client.post(
                "/image-to-image",
                files={"image": ("big.png", big, "image/png")},
                data={"prompt": "night", "verification": "none"},
            )
            chunked = await client.post(
                "/image-to-image",
                content=streamed(INPUT_LIMIT + FORM_OVERHEAD),
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )
            json_body = await client.post("/text-to-image", json=T2I | {"negative_prompt": "x" * JSON_LIMIT})
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"] == "input_too_large" and str(INPUT_LIMIT) in declared.json()["message"]
    assert chunked.status_code == 413, chunked.text
    assert json_body.status_code == 413, json_body.text
    assert await job_count(pair.requester) == before  # refused before any job was made


BAD_JSON: list[tuple[dict[str, Any], str]] = [
    (T2I | {"width": 4}, "body field width"),
    (T2I | {"num_inference_steps": 0}, "body field num_inference_steps"),
    (T2I | {"num_images_per_prompt": 9}, "body field num_images_per_prompt"),
    (T2I | {"seed": -1}, "body field seed"),
    (T2I | {"priority": "cheapest"}, "body field priority"),
    (T2I | {"verification": "redundant:9"}, "body field verification"),
    (T2I | {"deadline": 0}, "body field deadline"),
    ({k: v for k, v in T2I.items() if k != "prompt"}, "body field prompt"),
]
JSON = {"Content-Type": "application/json"}


async def test_invalid_parameters_are_422_before_any_peer_is_contacted(pair: Pair) -> None:
    worker_before, requester_before = await counters(pair.worker), await counters(pair.requester)
    jobs_before = await job_count(pair.requester)
    refused: list[tuple[str, int, dict[str, Any]]] = []
    with trio.fail_after(BOUND_S):
        async with pair.requester.http(timeout_s=BOUND_S) as client:
            for body, expected in BAD_JSON:
                answer = await client.post("/text-to-image", json=body)
                refused.append((expected, answer.status_code, answer.json()))
            for expected, answer in [
                ("not JSON", await client.post("/text-to-image", content=b"{not json", headers=JSON)),
                ("must be a JSON object", await client.post("/text-to-image", content=b"[1, 2]", headers=JSON)),
                ("send multipart/form-data", await client.post("/image-to-image", json={"prompt": "x"})),
                ("missing file field", await client.post("/image-to-image", files={"prompt": (None, b"x")})),
                # the upscale input is probed for its size (workers price it at quote time) before any peer sees it
                ("not a readable image", await client.post("/upscale", files={"image": ("x.png", b"\x89PNG junk")})),
            ]:
                refused.append((expected, answer.status_code, answer.json()))
    for expected, status, body in refused:
        assert (status, body["error"]) == (422, "invalid_request"), (expected, body)
        assert expected in body["message"], (expected, body)
    assert await counters(pair.worker) == worker_before
    assert await counters(pair.requester) == requester_before
    assert await job_count(pair.requester) == jobs_before

    # the same counters do move for a valid job: the check above could have seen one
    with trio.fail_after(BOUND_S):
        async with pair.requester.http(timeout_s=BOUND_S) as client:
            done = await client.post("/text-to-image", json=T2I)
    assert done.status_code == 200, done.text
    assert (await counters(pair.worker))["inbound_streams"] > worker_before["inbound_streams"]
    assert (await counters(pair.requester))["outbound_streams"] > requester_before["outbound_streams"]


async def test_an_unreadable_image_is_422_before_any_peer_is_contacted(pair: Pair) -> None:
    worker_before = await counters(pair.worker)
    with trio.fail_after(BOUND_S):
        async with pair.requester.http(timeout_s=BOUND_S) as client:
            answer = await client.post(
                "/image-to-image",
                files={"image": ("x.png", b"\x89PNG\r\n\x1a\n junk, not an image")},
                data={"prompt": "night", "num_inference_steps": "2", "verification": "none", "deadline": "5"},
            )
    assert (answer.status_code, answer.json()["error"]) == (422, "invalid_request"), answer.text
    assert "image" in answer.json()["message"]  # names the field
    assert await counters(pair.worker) == worker_before


# what a confused or hostile peer might send on /lpnode/job/1 (frame header: kind byte, 4-byte length)
GARBAGE = [
    b"\x01\xff\xff\xff\xff",  # a message frame far over any limit
    b"\x07junk",  # no such frame kind
    b"\x01\x00\x00\x00\x03abc",  # a well-framed message that is not msgpack
    b"\x00" * 64,  # zero bytes: not a frame kind
    random.Random(0).randbytes(4096),
]
MAX_GARBAGE_STREAMS = 200  # a few ms each: enough to cover most of the job, and the spam stays bounded
# long enough (ten denoising steps) that garbage streams arrive while the worker runs it
SLOWER = T2I | {"num_inference_steps": 10, "seed": 8}


async def test_garbage_on_job_streams_harms_no_concurrent_job(pair: Pair) -> None:
    before = await counters(pair.worker)
    running, finished = trio.Event(), trio.Event()
    sent: list[bool] = []  # per garbage stream: was the job still running when it was sent?
    key = NodeKey(bytes([0x5A]) * 32)  # a stranger to the worker: no advert, never in its directory
    loopback = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)

    async def spam(network: Libp2pNetwork) -> None:
        """Garbage streams, one after another, from the job's first progress event until it ends (bounded).

        Each is sent and hung up on at once, as a hostile peer would: waiting for the worker's end of
        the stream would wait out its linger (it closes after the requester does).
        """
        await running.wait()
        for payload in itertools.islice(itertools.cycle(GARBAGE), MAX_GARBAGE_STREAMS):
            if finished.is_set():
                return
            stream = await network.open_stream(pair.worker.peer_id, JOB_PROTOCOL, [pair.worker.addr])
            await stream.send_all(payload)
            await stream.aclose()
            sent.append(not finished.is_set())

    with trio.fail_after(BOUND_S):
        async with (
            open_libp2p_network(key, loopback) as network,
            pair.requester.http(timeout_s=BOUND_S) as client,
            trio.open_nursery() as nursery,
        ):
            await network.connect(pair.worker.addr)
            nursery.start_soon(spam, network)
            accepted = await client.post("/text-to-image", json=SLOWER, headers={"Prefer": "respond-async"})
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["id"]
            async with client.stream("GET", f"/v1/jobs/{job_id}/events") as events:
                async for line in events.aiter_lines():
                    if line.startswith("event: progress"):
                        running.set()  # the worker runs it: now the garbage
                    elif line.startswith("event: done"):
                        break
            finished.set()
            running.set()  # a job that ended without progress still lets spam() return
            record = (await client.get(f"/v1/jobs/{job_id}")).json()
            again = await client.post("/text-to-image", json=T2I | {"seed": 9})  # and the worker serves on
    assert record["state"] == "succeeded", record["error"]
    assert [job["worker_peer_id"] for job in record["result"]["jobs"]] == [pair.worker.peer_id]
    assert again.status_code == 200, again.text
    assert any(sent), "no garbage stream was sent while the job ran"
    print(f"garbage streams: {len(sent)}, {sum(sent)} while the job ran", file=sys.stderr)
    after = await counters(pair.worker)
    assert after["inbound_handler_crashes"] == before["inbound_handler_crashes"] == 0
    assert after["inbound_streams"] >= before["inbound_streams"] + len(sent) + 2
