"""CLI defects found in the third outside-user pass, each as the user met it."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

import pytest
from lpnode.node.cli import main


class _EvidenceNode(http.server.BaseHTTPRequestHandler):
    """A stand-in node that holds one evidence row."""

    def do_GET(self) -> None:
        body = json.dumps({"evidence": [{"id": 1, "kind": "check", "verdict": "agree"}], "next_after": None}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_reputation_export_to_dash_writes_standard_output_not_a_file_named_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # seen: `lpnode reputation export -o - | jq` wrote 86 kB into a file called "-" and printed nothing
    monkeypatch.chdir(tmp_path)
    with http.server.HTTPServer(("127.0.0.1", 0), _EvidenceNode) as server:
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        (tmp_path / "rpc.json").write_text(
            json.dumps({"url": f"http://127.0.0.1:{server.server_port}", "pid": os.getpid()})
        )
        (tmp_path / "rpc.token").write_text("t0ken")
        assert main(["reputation", "export", "-o", "-", "--data-dir", str(tmp_path)]) == 0
        thread.join(timeout=10)
    captured = capsys.readouterr()
    assert json.loads(captured.out)["evidence"][0]["verdict"] == "agree"
    assert captured.err == "1 evidence rows written to standard output\n"
    assert not (tmp_path / "-").exists()


def test_reputation_output_flags_out_of_place_are_refused_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reputation", "export", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "lpnode: reputation export needs -o FILE (or -o - for standard output)\n"
    # -o without export was silently ignored: the table went to the terminal and no file appeared
    assert main(["reputation", "-o", str(tmp_path / "x.json"), "--data-dir", str(tmp_path)]) == 2
    assert "-o is for `lpnode reputation export -o FILE`" in capsys.readouterr().err


def test_the_command_list_says_upscale_takes_a_video_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "upscale an image, or an MP4 frame by frame" in capsys.readouterr().out
