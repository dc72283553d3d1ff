"""``lpnode receipt verify``: a real receipt signed with a NodeKey, checked offline; tampered and wrong outputs fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lpnode.node.cli import main
from lpnode.protocol import sign_receipt

from ..protocol.job_factory import MALLORY, OUTPUT_BYTES, OUTPUT_SHA, WORKER, make_quote, make_receipt, quote_request


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path]:
    request = quote_request()
    receipt = make_receipt(request, make_quote(request))
    path = tmp_path / "out.png.receipt"
    path.write_bytes(sign_receipt(WORKER, receipt))
    output = tmp_path / "out.png"
    output.write_bytes(OUTPUT_BYTES)
    return path, output


def verify(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["receipt", "verify", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_valid_receipt_and_its_output(signed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, output = signed
    code, out, err = verify(capsys, path, "--output", output)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "VALID receipt: signature and job id check out"
    assert f"worker     {WORKER.peer_id}" in lines
    assert "model      sdxl-turbo" in lines and f"weights    sha256 {'ab' * 32}" in lines
    assert "pipeline   text-to-image" in lines and "  prompt = 'a lighthouse at dusk'" in lines
    assert "seed       7" in lines and f"  sha256        {OUTPUT_SHA}" in lines
    assert any(line.startswith("timings    queue ") for line in lines)
    assert any(line.startswith("sequence   ") for line in lines)
    assert f"checked    {output}: matches a signed output" in lines

    code, out, _ = verify(capsys, path, "--json")
    body = json.loads(out)
    assert code == 0 and body["valid"] is True and body["worker_peer_id"] == WORKER.peer_id
    assert body["spec"]["seed"] == 7 and body["outputs"][0]["sha256"] == OUTPUT_SHA


def test_a_tampered_receipt_is_invalid(signed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = signed
    data = bytearray(path.read_bytes())
    at = data.index(b"a lighthouse at dusk")
    data[at] = ord("A")  # the prompt, inside the signed payload
    path.write_bytes(bytes(data))
    code, out, err = verify(capsys, path)
    assert (code, out) == (1, "")
    assert err.startswith(f"lpnode: INVALID receipt {path}: bad_signature") and err.count("\n") == 1


def test_a_receipt_signed_by_someone_else_or_garbage_is_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = quote_request()
    forged = tmp_path / "forged.receipt"
    forged.write_bytes(
        sign_receipt(MALLORY, make_receipt(request, make_quote(request), worker_peer_id=MALLORY.peer_id))
    )
    assert verify(capsys, forged)[0] == 0  # Mallory may sign her own receipts ...
    data = forged.read_bytes().replace(MALLORY.peer_id.encode(), WORKER.peer_id.encode())
    forged.write_bytes(data)  # ... but not one in the worker's name
    code, _, err = verify(capsys, forged)
    assert code == 1 and "INVALID" in err
    garbage = tmp_path / "garbage.receipt"
    garbage.write_bytes(b"\x00" * 100)
    code, _, err = verify(capsys, garbage)
    assert code == 1 and "malformed" in err
    code, _, err = verify(capsys, tmp_path / "missing.receipt")
    assert code == 1 and "unreadable" in err
    huge = tmp_path / "huge.receipt"
    huge.write_bytes(b"\x00" * 5_000_000)  # QA2: was told as "oversized: 262145 bytes", the bytes read
    code, _, err = verify(capsys, huge)
    assert (code, err) == (
        1,
        f"lpnode: INVALID receipt {huge}: oversized: over the 262144-byte receipt limit\n",
    )


def test_the_wrong_output_file_is_invalid(signed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, output = signed
    other = output.with_name("other.png")
    other.write_bytes(OUTPUT_BYTES + b"!")
    code, out, err = verify(capsys, path, "--output", output, "--output", other)
    assert (code, out) == (1, "")
    assert f"output_mismatch: {other} hashes to" in err and OUTPUT_SHA in err
