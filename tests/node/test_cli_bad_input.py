"""What a client reads back when it sends bad input: one plain sentence per fault, naming the field.

Found by hand against three running nodes: decoder messages carried Python object reprs and FFmpeg
errnos, the field was named twice, and faults of the whole body were blamed on a field called "request".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio
from lpnode.node.network.memory import open_memory_hub

from .job_fixtures import BOUND_S, Peer, peers, png
from .test_rpc_jobs import AUTH, rpc

MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
NOISE = ("<_io.", " object at 0x", "[Errno", "'<none>'", "field request", "400:")


async def test_bad_input_is_answered_in_plain_words() -> None:
    async with lone_client() as client:
        with trio.fail_after(BOUND_S):

            async def upload(path: str, files: dict[str, tuple[str, bytes]]) -> httpx.Response:
                fields = {} if path == "/frame-interpolation" else {"prompt": "x"}  # it takes no prompt: refused
                return await client.post(path, files=files, data=fields, headers=AUTH)

            answers = {
                "garbage image": await upload("/image-to-image", {"image": ("a.png", bytes(range(256)) * 8)}),
                "text as image": await upload("/image-to-image", {"image": ("a.txt", b"hello\n")}),
                "garbage video": await upload("/frame-interpolation", {"video": ("a.mp4", MP4_HEAD + bytes(64))}),
                "two files": await upload(
                    "/image-to-image", {"image": ("a.png", png(8, 8)), "video": ("b.png", png(8, 8))}
                ),
                "no file": await client.post("/image-to-image", files={"prompt": (None, b"x")}, headers=AUTH),
                "not JSON": await client.post(
                    "/text-to-image", content=b'{"prompt": "x",', headers={**AUTH, "Content-Type": "application/json"}
                ),
                # QA s11: a form posted to the JSON endpoint read "Expecting value: line 1 column 1" alone
                "form as JSON": await client.post("/text-to-image", data={"prompt": "x"}, headers=AUTH),
                # QA2: a 500 (RecursionError in the JSON decoder), and past the decoder in pydantic's serializer
                "deep JSON": await client.post(
                    "/text-to-image", content=b"[" * 100_000, headers={**AUTH, "Content-Type": "application/json"}
                ),
                "deep params": await client.post(
                    "/v1/workflows",
                    content=b'{"steps": [{"pipeline": "text-to-image", "params": {"prompt": "x", "extra": '
                    + b'{"a": ' * 900
                    + b"1"
                    + b"}" * 902
                    + b"]}",
                    headers={**AUTH, "Content-Type": "application/json"},
                ),
            }
    messages = {what: answer.json()["message"] for what, answer in answers.items()}
    assert {what: answer.status_code for what, answer in answers.items()} == dict.fromkeys(answers, 422), messages
    for what, message in messages.items():
        assert not [noise for noise in NOISE if noise in message], (what, message)
    assert messages["garbage image"] == "body field image: not a readable image (cannot identify image file)"
    assert messages["text as image"] == messages["garbage image"]
    assert messages["garbage video"].startswith("body field video: not a readable video (")
    assert messages["two files"] == "body: malformed multipart body: Too many files. Maximum number of files is 1."
    assert messages["no file"] == "body: missing file field 'image'"
    assert messages["not JSON"].startswith("body: not JSON: ") and "application/json" not in messages["not JSON"]
    assert messages["form as JSON"].endswith(
        "(this endpoint takes application/json, the request is application/x-www-form-urlencoded)"
    )
    assert messages["deep JSON"] == messages["deep params"] == "body: JSON nested deeper than 16 levels"


async def test_form_fields_as_forms_send_them() -> None:
    # QA2: `curl -F "image=<in.png"` (a part without a filename: a text field to the parser) was answered
    # "missing file field 'image'" though the field was there; an empty field (HTML forms and generated
    # clients send every field) was refused as "not a valid integer" instead of meaning "not given"
    async with lone_client() as client:
        with trio.fail_after(BOUND_S):
            as_text = await client.post("/upscale", files={"image": (None, png(8, 8)[:100])}, headers=AUTH)
            blanks = await client.post(
                "/image-to-image",
                files={"image": ("a.png", png(8, 8))},
                data={"prompt": "", "seed": "", "num_inference_steps": "", "strength": ""},
                headers=AUTH,
            )
    assert as_text.status_code == 422
    assert as_text.json()["message"] == (
        "body: field 'image' came as text, not as a file: send it as a file part with a filename (curl -F image=@FILE)"
    )
    # past validation: the lone node has no peer to ask, so "no candidates" is the next answer
    assert (blanks.status_code, blanks.json()["error"]) == (404, "no_candidates"), blanks.json()


@asynccontextmanager
async def lone_client() -> AsyncIterator[httpx.AsyncClient]:
    """An RPC client of one node alone on an in-memory network (bad input never reaches a peer)."""
    async with open_memory_hub() as hub, peers(hub) as start:
        lone: Peer = await start(0)  # type: ignore[misc]
        async with rpc(lone.node) as (client, _):
            yield client
