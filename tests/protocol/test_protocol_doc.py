"""docs/protocol.md cannot drift from the code: its test vectors, names and limits are checked here.

The doc's vectors are committed text (```json vector:NAME``` and ```hex vector:NAME``` blocks).
Each is checked three ways: the JSON values encode to the hex bytes and the bytes decode to
those values (msgpack alone, type for type); the real codec decodes every message in them
and re-encodes it to the same bytes; and the code, given the fixed keys and values of
``tests/protocol/vectors.py``, still produces exactly these vectors. Signatures, peer ids,
job ids and transfer hashes are verified as a third-party implementation would verify them.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing
import pytest
from lpnode.node.transfer import TransferHeader
from lpnode.protocol import (
    Accept,
    Cancel,
    CapabilityAdvert,
    ErrorCode,
    JobError,
    Progress,
    Quote,
    QuoteRequest,
    Receipt,
    Refusal,
    RefusalReason,
    Result,
    SignedEnvelope,
    decode,
    decode_job_message,
    encode,
    job_id,
    verify_advert,
    verify_receipt,
)
from lpnode.protocol.codec import PROTOCOL_VERSION, canonical_bytes, decode_any, max_frame_bytes, tag_of
from lpnode.protocol.envelope import signing_domain
from lpnode.protocol.jobs import MAX_JOB_FRAME_BYTES
from lpnode.protocol.names import ADVERT_TOPIC, JOB_PROTOCOL
from lpnode.protocol.peer_id import b58decode

from . import vectors

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
MESSAGE_TYPES: tuple[type[Any], ...] = (
    QuoteRequest,
    Quote,
    Refusal,
    Accept,
    Progress,
    Result,
    JobError,
    Cancel,
    SignedEnvelope,
    Receipt,
    CapabilityAdvert,
    TransferHeader,
)
_BLOCK = re.compile(r"^```(json|hex) vector:([\w-]+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass
class Vector:
    values: Any = None
    data: bytes | None = None


def _parse_doc() -> dict[str, Vector]:
    found: dict[str, Vector] = {}
    for kind, name, text in _BLOCK.findall(DOC.read_text(encoding="utf-8")):
        vector = found.setdefault(name, Vector())
        if kind == "json":
            assert vector.values is None, f"two json blocks for vector {name}"
            vector.values = json.loads(text)
        else:
            assert vector.data is None, f"two hex blocks for vector {name}"
            # hand annotations follow '#' on any line
            digits = "".join(line.split("#", 1)[0] for line in text.splitlines())
            vector.data = bytes.fromhex(digits)
    return found


DOC_VECTORS = _parse_doc()
GENERATED = vectors.build()


def _doc(name: str) -> tuple[Any, bytes]:
    vector = DOC_VECTORS[name]
    assert vector.values is not None and vector.data is not None, f"vector {name} needs a json and a hex block"
    return vector.values, vector.data


def realize(value: Any) -> Any:
    """JSON values (the doc's conventions, see vectors.py) as the msgpack structure they stand for."""
    if isinstance(value, dict):
        if value.keys() == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        if value.keys() == {"$msgpack"}:
            return canonical_bytes(realize(value["$msgpack"]))
        if value.keys() == {"$ref"}:
            return _doc(value["$ref"])[1]
        return {k: realize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [realize(v) for v in value]
    return value


def _assert_same(got: Any, want: Any, path: str = "") -> None:
    """Equal and of the same types all the way down (1, 1.0 and True are three different wire values)."""
    assert type(got) is type(want), (
        f"{path or 'top'}: {type(got).__name__} on the wire, {type(want).__name__} in the doc"
    )
    if isinstance(want, dict):
        assert list(got) == list(want), f"{path}: keys {list(got)} on the wire, {list(want)} in the doc (order matters)"
        for key in want:
            _assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: {len(got)} items on the wire, {len(want)} in the doc"
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same(a, b, f"{path}[{index}]")
    else:
        assert got == want, f"{path}: {got!r} on the wire, {want!r} in the doc"


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split job-stream bytes into (kind, body) frames: 1 byte kind, 4 bytes big-endian length, body."""
    frames, offset = [], 0
    while offset < len(data):
        kind, length = struct.unpack_from(">BI", data, offset)
        body = data[offset + 5 : offset + 5 + length]
        assert len(body) == length, "a frame runs past the vector's end"
        frames.append((kind, body))
        offset += 5 + length
    return frames


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)


def _vector_names(kind: str) -> list[str]:
    return [name for name, (values, _) in GENERATED.items() if isinstance(values, dict) and kind in values]


# ---------------------------------------------------------------- the vectors as text


def test_the_doc_holds_every_vector_once() -> None:
    assert sorted(DOC_VECTORS) == sorted(GENERATED)
    for name in DOC_VECTORS:
        _doc(name)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_the_code_still_makes_the_documented_vector(name: str) -> None:
    values, data = _doc(name)
    want_values, want_data = GENERATED[name]
    assert data.hex() == want_data.hex(), f"vector {name} drifted: run python -m tests.protocol.vectors"
    assert values == want_values, f"vector {name}'s values drifted: run python -m tests.protocol.vectors"


# ---------------------------------------------------------------- values <-> bytes, msgpack alone


@pytest.mark.parametrize("name", _vector_names("msgpack"))
def test_msgpack_values_and_bytes_agree(name: str) -> None:
    values, data = _doc(name)
    structure = realize(values["msgpack"])
    assert canonical_bytes(structure) == data
    _assert_same(_unpack(data), structure)


@pytest.mark.parametrize("name", _vector_names("frames"))
def test_framed_values_and_bytes_agree(name: str) -> None:
    values, data = _doc(name)
    frames = _frames(data)
    assert [kind for kind, _ in frames] == [frame["kind"] for frame in values["frames"]]
    for (kind, body), frame in zip(frames, values["frames"], strict=True):
        structure = realize(frame["body"])
        if kind == 1:  # MESSAGE: a codec frame
            assert canonical_bytes(structure) == body
            _assert_same(_unpack(body), structure)
        else:  # DATA: raw bytes
            assert kind == 2 and body == structure


# ---------------------------------------------------------------- the real codec


def _message_bodies(name: str) -> list[bytes]:
    values, data = _doc(name)
    if "frames" in values:
        return [body for kind, body in _frames(data) if kind == 1]
    return [data] if "msgpack" in values and isinstance(values["msgpack"][0], int) else []


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_the_codec_decodes_and_reencodes_every_message(name: str) -> None:
    for body in _message_bodies(name):
        msg = decode_any(body, len(body))
        assert encode(msg) == body
        assert _unpack(body)[:2] == [PROTOCOL_VERSION, tag_of(type(msg))]
        if isinstance(msg, SignedEnvelope):
            inner = decode_any(msg.payload, len(msg.payload))
            assert encode(inner) == msg.payload
        if name not in ("receipt", "advert") and tag_of(type(msg)) != "transfer_header":
            decode_job_message(body)  # every job-stream message is accepted where it travels


def test_identity_derives_the_peer_id() -> None:
    values, data = _doc("identity")
    public_key = bytes(nacl.signing.SigningKey(bytes.fromhex(values["seed"])).verify_key)
    assert public_key.hex() == values["public_key"]
    # identity multihash (0x00, length 36) of protobuf PublicKey{Type: Ed25519, Data: key}
    assert data == bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + public_key
    assert b58decode(values["peer_id"]) == data
    assert vectors.WORKER.peer_id == values["peer_id"]


def test_job_id_is_the_sha256_of_the_documented_preimage() -> None:
    values, data = _doc("job_id")
    assert hashlib.sha256(data).hexdigest() == values["sha256"]
    domain, spec_map, requester, nonce = realize(values["msgpack"])
    assert domain == "lpnode/job-id/1"
    request = decode(_frames(_doc("quote_request")[1])[0][1], QuoteRequest)
    assert _unpack(canonical_bytes(request.spec)) == spec_map
    assert job_id(request.spec, requester, nonce) == values["sha256"]
    # every message of that job names it
    quote = decode_job_message(_frames(_doc("signed_quote")[1])[0][1])
    assert isinstance(quote, Quote) and quote.job_id == values["sha256"]
    assert verify_receipt(_doc("receipt")[1]).job_id == values["sha256"]


def _check_signature(envelope_bytes: bytes, domain: str) -> bytes:
    """Verify as a third party would: key from the signer's peer id, Ed25519 over domain 0x00 payload."""
    _, _, body = _unpack(envelope_bytes)
    public_key = b58decode(body["signer"])[6:]
    signed = domain.encode() + b"\x00" + body["payload"]
    nacl.signing.VerifyKey(public_key).verify(signed, body["signature"])
    return bytes(body["payload"])


def test_signed_quote_verifies_under_its_domain() -> None:
    frame = _frames(_doc("signed_quote")[1])[0][1]
    payload = _check_signature(frame, "lpnode/job_quote/1")
    with pytest.raises(nacl.exceptions.BadSignatureError):
        _check_signature(frame, "lpnode/receipt/1")  # domains keep purposes apart
    quote = decode_job_message(frame)
    assert isinstance(quote, Quote) and encode(quote) == payload
    assert len(frame) <= MAX_JOB_FRAME_BYTES


def test_receipt_verifies_offline() -> None:
    data = _doc("receipt")[1]
    _check_signature(data, "lpnode/receipt/1")
    receipt = verify_receipt(data)
    assert receipt.worker_peer_id == _doc("identity")[0]["peer_id"]
    result = decode_job_message(_frames(_doc("result")[1])[0][1])
    assert isinstance(result, Result) and result.receipt == data
    assert [(o.name, o.media_type, o.size_bytes, o.sha256) for o in receipt.outputs] == [
        (o.name, o.media_type, o.size_bytes, o.sha256) for o in result.outputs
    ]


def test_advert_verifies_for_its_gossip_origin() -> None:
    data = _doc("advert")[1]
    _check_signature(data, "lpnode/advert/1")
    advert = verify_advert(data, origin=vectors.WORKER.peer_id, now_ms=vectors.NOW_MS)
    assert advert.peer_id == vectors.WORKER.peer_id and advert.protocol_version == PROTOCOL_VERSION


@pytest.mark.parametrize("name", ["result", "accept_and_input"])
def test_transfers_carry_what_their_header_announces(name: str) -> None:
    frames = _frames(_doc(name)[1])
    header = decode(frames[1][1], TransferHeader)
    chunks = [body for kind, body in frames[2:]]
    assert [kind for kind, _ in frames[2:]] == [2] * len(chunks) and chunks[-1] == b""
    payload = b"".join(chunks)
    assert len(payload) == header.total_bytes and hashlib.sha256(payload).digest() == header.sha256
    announced = decode_job_message(frames[0][1])
    blobs = announced.outputs if isinstance(announced, Result) else announced.inputs  # type: ignore[union-attr]
    assert (blobs[0].size_bytes, blobs[0].sha256, blobs[0].media_type) == (
        header.total_bytes,
        header.sha256.hex(),
        header.media_type,
    )


# ---------------------------------------------------------------- names and limits


def _doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_the_doc_names_every_tag_code_reason_and_protocol_id() -> None:
    text = _doc_text()
    names = [tag_of(cls) for cls in MESSAGE_TYPES]
    names += [code.value for code in ErrorCode] + [reason.value for reason in RefusalReason]
    names += [JOB_PROTOCOL, ADVERT_TOPIC, "lpnode/job-id/1"]
    names += [signing_domain(cls) for cls in (Quote, Receipt, CapabilityAdvert)]
    missing = [name for name in names if f"`{name}`" not in text]
    assert not missing, f"docs/protocol.md does not name {missing}"


def test_the_message_table_gives_every_frame_bound() -> None:
    """Rows of the form | `tag` | ... | <max bytes> | in the message registry table."""
    text = _doc_text()
    for cls in MESSAGE_TYPES:
        row = re.search(rf"^\| `{tag_of(cls)}` \|.*\| ([\d,]+) \|$", text, re.MULTILINE)
        assert row is not None, f"no registry row for {tag_of(cls)}"
        assert int(row.group(1).replace(",", "")) == max_frame_bytes(cls), tag_of(cls)


def _constant(dotted: str) -> Any:
    """The value of `lpnode.pkg.module.NAME` or `lpnode.pkg.module.Class.field` (its default).

    Read from the source where the value is a literal expression, so that naming a default of a
    module that imports torch costs no import; imported otherwise.
    """
    parts = dotted.split(".")[1:]
    for split in range(len(parts) - 1, 0, -1):
        source = ROOT.joinpath(*parts[:split]).with_suffix(".py")
        if source.exists():
            break
    else:
        raise AssertionError(f"no module for {dotted}")
    *owners, name = parts[split:]
    body: list[ast.stmt] = ast.parse(source.read_text(encoding="utf-8")).body
    for owner in owners:
        body = next(node.body for node in body if isinstance(node, ast.ClassDef) and node.name == owner)
    for node in body:
        target: ast.expr
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign):
            target, value = node.targets[0], node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id == name):
            continue
        try:
            return eval(compile(ast.Expression(value), str(source), "eval"), {})
        except NameError:  # an expression of other constants: let Python work it out
            obj: Any = importlib.import_module("lpnode." + ".".join(parts[:split]))
            for attribute in [*owners, name]:
                obj = getattr(obj, attribute)
            return obj
    raise AssertionError(f"{dotted} is not assigned in {source}")


def test_every_limit_in_the_limits_table_matches_its_constant() -> None:
    """Rows whose last cell names a constant (`lpnode.x.y.NAME` or `...Class.field`) give its value."""
    rows = re.findall(r"^\|[^|\n]+\| ([\d,.]+)[^|\n]*\| `(lpnode\.[\w.]+)` \|$", _doc_text(), re.MULTILINE)
    assert len(rows) >= 15, "the limits table went missing"
    for value, dotted in rows:
        assert float(value.replace(",", "")) == float(_constant(dotted)), dotted
