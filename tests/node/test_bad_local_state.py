"""Bad local state at node start: one clean line (or a WARNING), never a traceback or silence (QA s11).

Each case was reproduced first on a real data dir (`lpnode run`, stopped with SIGINT, damaged, restarted):
a non-UTF-8 ``rpc.token``; ``--device cuda`` on a torch without CUDA; a file where ``outputs/`` belongs;
``lpnode.db`` a directory (stray aiosqlite thread tracebacks after the clean line); a damaged output, a
damaged ``model-speeds.json`` and a damaged ``receipt-seq`` (left damaged, warned about at every start).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiosqlite.core
import pytest
import torch
from lpnode.models.speed import RunMemo
from lpnode.node.cli import EXIT_CONFIG, main
from lpnode.node.config import NodeConfig, device_problem, load_config
from lpnode.node.job_proof import ReceiptSequence
from lpnode.node.output_files import OutputDirError, OutputFiles
from lpnode.node.rpc_token import TOKEN_FILE, RpcTokenError, load_or_create_token, read_token
from lpnode.node.store import Migration, open_store
from lpnode.node.store_errors import StoreError
from lpnode.protocol.errors import ConfigError

# ---------------------------------------------------------------- rpc.token


@pytest.mark.parametrize("raw", [b"\x00\xff\xfe", b"\xff" * 40, "tökén".encode("latin-1")])
def test_an_undecodable_token_is_malformed_not_a_traceback(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / TOKEN_FILE).write_bytes(raw)
    for read in (read_token, load_or_create_token):
        with pytest.raises(RpcTokenError, match="is empty or malformed; delete it and restart the node"):
            read(tmp_path)


def test_a_good_token_still_reads(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    assert read_token(tmp_path) == token


# ---------------------------------------------------------------- device


@pytest.fixture
def no_cuda_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch as a CPU-only build reports itself (this box's is one; a CUDA box's test must see the same)."""
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def one_gpu_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_cuda_on_a_torch_without_cuda_is_named(no_cuda_torch: None) -> None:
    assert device_problem("cuda") == f"torch {torch.__version__} has no CUDA"
    assert device_problem("cuda:7") == f"torch {torch.__version__} has no CUDA"
    assert device_problem("cpu") is None and device_problem("auto") is None


def test_a_cuda_index_past_the_machines_gpus_is_named(one_gpu_torch: None) -> None:
    assert device_problem("cuda") is None and device_problem("cuda:0") is None
    assert device_problem("cuda:7") == "this machine has 1 CUDA device(s): cuda:0 to cuda:0"


def test_cuda_built_torch_without_a_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    problem = device_problem("cuda")
    assert problem is not None and problem.startswith("no CUDA device is visible")


def test_the_device_is_refused_with_its_source_when_a_node_starts(no_cuda_torch: None, tmp_path: Path) -> None:
    flags = {"data_dir": tmp_path, "device": "cuda"}
    with pytest.raises(ConfigError) as refused:
        load_config(flags=flags, for_run=True)
    assert str(refused.value) == (
        f"device: 'cuda' is not available (torch {torch.__version__} has no CUDA) (from command line)"
    )
    with pytest.raises(ConfigError, match=r"'cuda:1' is not available .*\(from \$LPNODE_DEVICE\)"):
        load_config(env={"LPNODE_DEVICE": "cuda:1"}, flags={"data_dir": tmp_path}, for_run=True)
    # client commands read the same config: they neither check the device nor need torch for it
    assert load_config(flags=flags).device == "cuda"
    # a requester-only node runs no models: its device setting is moot
    assert load_config(flags={**flags, "serve": ("none",)}, for_run=True).requester_only


def test_a_malformed_device_is_refused_without_torch() -> None:
    for bad in ("cudax", "cuda:", "cuda:a", "mpsx", "gpu"):
        with pytest.raises(ConfigError, match="is not 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"):
            NodeConfig(device=bad).validate()
    for good in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        NodeConfig(device=good).validate()


def test_lpnode_run_with_an_unusable_device_exits_2_at_once(
    no_cuda_torch: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--data-dir", str(tmp_path / "node"), "--device", "cuda", "--no-mdns"]
    assert main([*args, "--rpc", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert (
        err == f"lpnode: device: 'cuda' is not available (torch {torch.__version__} has no CUDA) (from command line)\n"
    )


# ---------------------------------------------------------------- outputs/ and lpnode.db


def test_a_file_where_the_outputs_folder_belongs_is_one_line(tmp_path: Path) -> None:
    where = tmp_path / "outputs"
    where.write_text("x")
    with pytest.raises(OutputDirError) as refused:
        OutputFiles(where, max_bytes=1024 * 1024)
    assert str(refused.value) == (
        f"cannot keep job outputs in {where}: it is a file, not a folder; move it away (or delete it) and restart the node"
    )


NOTES = Migration("notes", 1, ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",))


async def test_a_database_that_is_a_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "lpnode.db"
    path.mkdir()
    with pytest.raises(StoreError) as refused:
        async with open_store(path, [NOTES]):
            pass
    assert str(refused.value) == f"cannot open the database {path}: it is a directory, not a file; move it away"


async def test_a_database_that_cannot_open_leaves_no_thread_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiosqlite stopped the failed connection's thread without waiting; the thread then reported to the
    # asyncio loop open_store had closed: "Exception in thread ... Event loop is closed" (twice) on stderr
    failures: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)

    def refuse(*args: object, **kwargs: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(aiosqlite.core.sqlite3, "connect", refuse)  # as a path SQLite cannot open does
    stop = aiosqlite.core.Connection.stop

    def slow_stop(self: aiosqlite.core.Connection) -> object:
        # the thread reaches the stop a moment late, as on a busy machine: without the wait for it,
        # the loop is closed by then every time, not only when the race goes that way
        self._tx.put_nowait((None, lambda: time.sleep(0.3)))
        return stop(self)

    monkeypatch.setattr(aiosqlite.core.Connection, "stop", slow_stop)
    path = tmp_path / "lpnode.db"
    with pytest.raises(StoreError, match=f"^cannot open the database {path}: unable to open database file$"):
        async with open_store(path, [NOTES]):
            pass
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            thread.join(5)
    assert failures == []


@pytest.mark.parametrize("damage", ["outputs-file", "database-dir", "token-bytes"])
def test_a_node_start_on_damaged_state_prints_one_line(tmp_path: Path, damage: str) -> None:
    """The whole start (a requester-only node: no models to load): one line, no traceback of any thread."""
    data = tmp_path / "node"
    data.mkdir()
    if damage == "outputs-file":
        (data / "outputs").write_text("x")
        expected = f"lpnode: cannot keep job outputs in {data / 'outputs'}: it is a file"
    elif damage == "database-dir":
        (data / "lpnode.db").mkdir()
        expected = f"lpnode: cannot open the database {data / 'lpnode.db'}"
    else:
        (data / TOKEN_FILE).write_bytes(b"\x00\xff\xfe")
        expected = f"lpnode: RPC token {data / TOKEN_FILE} is empty or malformed"
    args = ["run", "--data-dir", str(data), "--serve", "none", "--no-mdns", "--rpc", "127.0.0.1:0"]
    code = "import sys; from lpnode.node.cli import main; sys.exit(main(sys.argv[1:]))"
    child = subprocess.run(
        [sys.executable, "-c", code, *args, "--listen", "/ip4/127.0.0.1/tcp/0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 1, child.stderr
    assert "Traceback" not in child.stderr and "Exception in thread" not in child.stderr, child.stderr
    assert child.stderr.splitlines()[-1].startswith(expected), child.stderr


# ---------------------------------------------------------------- damaged outputs and small state files


def test_a_damaged_output_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = OutputFiles(tmp_path / "outputs", max_bytes=1024 * 1024)
    data = b"\x89PNG" + bytes(200)
    sha = hashlib.sha256(data).hexdigest()
    entry = files.put(sha, "image/png", data)
    with caplog.at_level(logging.WARNING, logger="lpnode.node.output_files"):
        assert files.get(sha) == ("image/png", data)
        assert caplog.records == []
        entry.path.write_bytes(data[:100] + b"X" + data[101:])
        assert files.get(sha) is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"output {sha} failed its hash check" in record.getMessage()
    assert not entry.path.exists()


def test_a_damaged_speeds_file_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "model-speeds.json"
    memo = RunMemo(path)
    with caplog.at_level(logging.WARNING, logger="lpnode.models.speed"):
        assert memo.load() == {}  # missing: a first start, nothing to say
        assert caplog.records == []
        for damaged in (b'{"a": [', b"\xff\xfe", b"[1, 2]"):
            path.write_bytes(damaged)
            assert memo.load() == {}
        assert len(caplog.records) == 3
        assert all("model-speeds.json are damaged" in r.getMessage() for r in caplog.records)
        caplog.clear()
        assert memo.load(warn=False) == {}  # the pool's save at stop: said once already
        assert caplog.records == []
        path.write_text('{"ok": [[1.0, 2.0]], "bad": "x"}')
        assert memo.load() == {"ok": [(1.0, 2.0)]}
        assert "1 of its 2 entries unreadable" in caplog.records[-1].getMessage()
        caplog.clear()
        memo.save({"ok": [(1.0, 2.0)]})
        assert memo.load() == {"ok": [(1.0, 2.0)]}
        assert caplog.records == []


@pytest.mark.parametrize("damaged", [b"garbage", b"\xff\xfe", b"", b"-5"])
def test_a_damaged_receipt_sequence_is_rewritten_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damaged: bytes
) -> None:
    path = tmp_path / "receipt-seq"
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="lpnode.node.job_proof"):
        first = ReceiptSequence(lambda: 1000.0, path)  # a clean stop follows: no receipt issued
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert int(path.read_text()) == 1000 * 1_000_000  # the recovered value, on file at once
        caplog.clear()
        again = ReceiptSequence(lambda: 1.0, path)  # the next start: no warning, numbers still increase
        assert caplog.records == []
    assert again.next() > first._last
