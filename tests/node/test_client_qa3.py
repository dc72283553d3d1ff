"""The RPC client as a user writes it from its docstring (third outside-user pass)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from lpnode.node.client import LpnodeClient, RpcError
from lpnode.node.job_manager import MemoryRecordBook, open_job_manager, requester_runner
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import create_app, status_for
from lpnode.node.rpc_info import RpcInfo, write_info
from lpnode.node.rpc_jobs import OutputStore
from lpnode.node.rpc_token import load_or_create_token

from .job_fixtures import Peer, peers
from .test_rpc import TOKEN


async def test_a_data_dir_given_as_a_string_or_with_a_tilde_finds_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    token = load_or_create_token(data_dir)
    write_info(data_dir, RpcInfo(url="http://127.0.0.1:9", pid=os.getpid()))
    for given in (str(data_dir), "~/node", data_dir):
        async with LpnodeClient.from_data_dir(given) as client:
            assert client.url == "http://127.0.0.1:9"
            assert client.data_dir == data_dir
            assert client._http.headers["Authorization"] == f"Bearer {token}"


async def test_a_network_job_id_where_a_record_id_belongs_is_named_as_such() -> None:
    async with (
        open_memory_hub() as hub,
        peers(hub) as start,
    ):
        requester: Peer = await start(0)  # type: ignore[assignment]
        book = open_job_manager(
            MemoryRecordBook(), OutputStore(), requester_runner(requester.node), status_for=status_for
        )
        async with book as jobs:
            app = create_app(requester.node, TOKEN, jobs=jobs)
            transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
            client = LpnodeClient("http://node", TOKEN, data_dir=Path("/data/a"), transport=transport)
            async with client:
                with pytest.raises(RpcError, match=r"that is a network job id .* request_id") as caught:
                    await client.receipt("ab" * 32)
                with pytest.raises(RpcError) as other:
                    await client.job("job_0123456789abcdef01234567")
    assert caught.value.status_code == 404
    assert other.value.status_code == 404 and "network job id" not in str(other.value)
