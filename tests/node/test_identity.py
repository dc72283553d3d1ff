"""The node key and the RPC token in the data directory: created once, private, reused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from lpnode.node.identity import KEY_FILE, load_or_create_key
from lpnode.node.rpc_info import NodeAlreadyRunning, NodeNotRunning, RpcInfo, check_not_running, read_info, write_info
from lpnode.node.rpc_token import TOKEN_FILE, RpcTokenError, load_or_create_token, read_token
from lpnode.protocol.errors import IdentityError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_created_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "dir"
    key = load_or_create_key(data_dir)
    path = data_dir / KEY_FILE
    assert mode(path) == 0o600
    content = path.read_bytes()
    again = load_or_create_key(data_dir)
    assert again.peer_id == key.peer_id
    assert path.read_bytes() == content
    assert [p.name for p in data_dir.iterdir()] == [KEY_FILE]  # no temporary files left behind


def test_peer_id_derives_from_the_key_file(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"\x07" * 32)
    other = tmp_path / "other"
    other.mkdir()
    (other / KEY_FILE).write_bytes(b"\x07" * 32)
    assert load_or_create_key(tmp_path).peer_id == load_or_create_key(other).peer_id


def test_corrupt_key_is_a_clear_error_and_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    path.write_bytes(b"not a key")
    with pytest.raises(IdentityError, match=r"holds 9 bytes, expected 32; move it away to create a new identity"):
        load_or_create_key(tmp_path)
    assert path.read_bytes() == b"not a key"


def test_unreadable_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).mkdir()  # a directory where the key should be: reading fails for any user
    with pytest.raises(IdentityError, match="cannot read node key"):
        load_or_create_key(tmp_path)


def test_token_created_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    assert mode(tmp_path / TOKEN_FILE) == 0o600
    assert len(token) >= 40
    assert load_or_create_token(tmp_path) == token == read_token(tmp_path)
    assert load_or_create_token(tmp_path / "elsewhere") != token


def test_missing_or_corrupt_token(tmp_path: Path) -> None:
    with pytest.raises(RpcTokenError, match=r"no RPC token in .*: start a node with `lpnode run --data-dir"):
        read_token(tmp_path)
    (tmp_path / TOKEN_FILE).write_text("two words\n")
    with pytest.raises(RpcTokenError, match="empty or malformed"):
        read_token(tmp_path)


def test_rpc_info_of_a_dead_process_means_no_node(tmp_path: Path) -> None:
    dead_pid = _exited_pid()
    write_info(tmp_path, RpcInfo(url="http://127.0.0.1:1", pid=dead_pid))
    with pytest.raises(NodeNotRunning, match=f"left from process {dead_pid}, which has exited"):
        read_info(tmp_path)
    check_not_running(tmp_path)  # a stale file does not block a new node


def test_a_live_node_blocks_a_second_one_on_the_same_data_dir(tmp_path: Path) -> None:
    write_info(tmp_path, RpcInfo(url="http://127.0.0.1:1", pid=os.getppid()))
    assert read_info(tmp_path).pid == os.getppid()
    with pytest.raises(NodeAlreadyRunning, match="give this one its own --data-dir"):
        check_not_running(tmp_path)


def _exited_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid
