"""``GET /v1/jobs/{id}/checks``: what became of a job's spot check, asked after the answer.

On the spot-check flow's network (in-memory, real tiny-sdxl runs, a real reputation store file):
the requester's RPC app with a job manager whose runner is the :class:`SpotChecker`. A cheater
undercuts two honest workers, so a ``cost`` request goes to it and its check blames it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from lpnode.node.job_manager import MemoryRecordBook, open_job_manager
from lpnode.node.rpc import create_app, status_for
from lpnode.node.rpc_jobs import OutputStore
from lpnode.reputation.check_log import CheckLog, CheckNote, CheckState, check_entry

from tests.node.test_rpc_jobs import AUTH
from tests.node.test_rpc_jobs import BODY as RPC_BODY

from .test_spot_check_flow import BOUND_S, network, settled

# one image, and the cheapest worker: the cheater, until it is banned
BODY = RPC_BODY | {"num_images_per_prompt": 1, "max_price": 10_000, "deadline": 60, "priority": "cost"}


async def test_a_cheaters_job_reads_blamed_and_an_unchecked_one_says_why(tmp_path: Path) -> None:
    async with (
        network(tmp_path) as net,
        open_job_manager(MemoryRecordBook(), OutputStore(), net.checker, status_for=status_for) as jobs,
    ):
        app = create_app(net.requester, "t", jobs=jobs, reputation=net.reputation, checks=net.checker)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node", timeout=BOUND_S) as client:

            async def checks_of(body: dict[str, Any]) -> dict[str, Any]:
                answer = await client.post("/text-to-image", json=body, headers=AUTH)
                assert answer.status_code == 200, answer.text
                # the check settles after the answer: a long-poll waits for it
                path = f"/v1/jobs/{answer.json()['request_id']}/checks"
                response = await client.get(path, params={"wait_s": 50}, headers=AUTH)
                assert response.status_code == 200, response.text
                return dict(response.json())

            with trio.fail_after(BOUND_S):
                cheated = await checks_of(BODY | {"seed": 1})
                unchecked = await checks_of(BODY | {"seed": 2, "verification": "none"})
                unknown = await client.get("/v1/jobs/job_0123456789abcdef0123456789abcdef/checks", headers=AUTH)
                unauthorized = await client.get(f"/v1/jobs/{cheated['id']}/checks")
                too_long = await client.get(f"/v1/jobs/{cheated['id']}/checks?wait_s=61", headers=AUTH)

    (check,) = cheated["checks"]
    assert cheated["state"] == "succeeded" and check["worker_peer_id"] == net.cheater
    assert check["state"] == "settled" and check["worker"] == "blamed"
    (row,) = check["evidence"]
    assert row["kind"] == "check" and row["verdict"] == "disagree" and row["blamed"] == [net.cheater]
    assert sorted(row["peers"]) == sorted([net.cheater, *net.honest]) and not row["voided"]
    (skipped,) = unchecked["checks"]
    assert skipped["state"] == "not_checked" and "verification none" in skipped["reason"]
    assert unknown.status_code == 404 and unknown.json()["error"] == "job_not_found"
    assert too_long.status_code == 422
    assert unauthorized.status_code == 401


async def test_a_check_is_pending_until_it_settles_and_honest_workers_are_credited(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        outcome = await net.run(1, avoid=[net.cheater])
        # noted before the answer came back, with no checkpoint since: the copy has not run yet
        assert net.checker.check_log.get(outcome.job_id).state is CheckState.PENDING
        with trio.fail_after(BOUND_S):
            # the long-poll answers once the check is no longer pending
            (check,) = await net.checker.check_status([(outcome.worker_peer_id, outcome.job_id)], wait_s=BOUND_S)
            await net.checker.wait_idle()
            (forgotten,) = await net.checker.check_status([(outcome.worker_peer_id, "not-a-try-of-ours")])
            local = await settled(net, 2, verification="none")
            (none,) = await net.checker.check_status([(local.worker_peer_id, local.job_id)])
    assert check["state"] == "settled" and check["worker"] == "credited"
    assert [row["verdict"] for row in check["evidence"]] == ["agree"]
    assert forgotten == {
        "job_id": "not-a-try-of-ours",
        "worker_peer_id": outcome.worker_peer_id,
        "state": "unknown",
        "reason": "",
    }
    assert none["state"] == "not_checked"


def row(evidence_id: int, verdict: str, blamed: list[str], credited: list[str], voided: bool = False) -> dict[str, Any]:
    return {
        "id": evidence_id,
        "at": 1.0,
        "kind": "check",
        "verdict": verdict,
        "blamed": blamed,
        "credited": credited,
        "peers": ["w", "a", "b"],
        "voided": {"at": 2.0, "reason": "decided by a banned peer"} if voided else None,
    }


def test_the_workers_role_comes_from_standing_evidence_only() -> None:
    unknown = CheckNote(CheckState.UNKNOWN)
    assert check_entry("w", "j", [row(1, "disagree", ["w"], ["a", "b"])], unknown)["worker"] == "blamed"
    assert check_entry("w", "j", [row(1, "agree", [], ["w", "a"])], unknown)["worker"] == "credited"
    assert check_entry("w", "j", [row(1, "inconclusive", [], [])], unknown)["worker"] == "undecided"
    # a blame withdrawn (its decider was banned since) is listed, and decides nothing
    withdrawn = check_entry("w", "j", [row(1, "disagree", ["w"], ["a", "b"], voided=True)], unknown)
    assert withdrawn["worker"] == "undecided" and withdrawn["evidence"][0]["voided"] is True
    # the log's word stands only while the store has nothing
    pending = check_entry("w", "j", [], CheckNote(CheckState.PENDING))
    assert pending["state"] == "pending" and "evidence" not in pending


def test_the_log_keeps_the_latest_note_of_the_most_recent_tries() -> None:
    log = CheckLog(max_tries=2)
    log.note("a", CheckState.PENDING)
    log.note("b", CheckState.NOT_CHECKED, "not picked")
    log.note("a", CheckState.LOST, "no checker returned a run of it")  # a's note is now the newest
    log.note("c", CheckState.PENDING)
    assert len(log) == 2
    assert log.get("b").state is CheckState.UNKNOWN  # the oldest went first
    assert log.get("a") == CheckNote(CheckState.LOST, "no checker returned a run of it")
    assert log.get("c").state is CheckState.PENDING
