"""Rows of the reputation tables (:mod:`~lpnode.reputation.store_schema`) to and from the store's values.

The SQL the reputation store writes inside its transactions (evidence, receipts, per-peer state, counters,
bans, void marks), what it reads back into memory at start, and an evidence row as JSON.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from lpnode.node.store import Store, Transaction
from lpnode.protocol.codec import canonical_bytes
from lpnode.protocol.jobspec import JobSpec
from lpnode.protocol.receipts import Receipt, verify_receipt

from .compare import Verdict
from .errors import ReputationError
from .policy import PeerHistory
from .scoring import Evidence, ScoringConfig, ban_until
from .store_types import Ban, CheckEvidence, PeerState, TryFailure

__all__ = [
    "MAX_DETAIL_BYTES",
    "MAX_FAILURE_TEXT",
    "MAX_PEERS_LOADED",
    "evidence_json",
    "failure_json",
    "impose_ban",
    "insert_evidence",
    "insert_failure",
    "insert_receipts",
    "load_bans",
    "load_counters",
    "load_peers",
    "mark_void",
    "receipts_for",
    "save_counters",
    "save_peer",
    "spec_id",
]

MAX_DETAIL_BYTES = 64 * 1024  # the JSON of one evidence row's pairwise verdicts
MAX_PEERS_LOADED = 1_000_000  # rows of rep_peers read into memory at start; a sanity bound
MAX_FAILURE_TEXT = 1024  # characters of a failed try's outcome and detail kept


def spec_id(spec: JobSpec) -> str:
    """Hex sha256 of the canonical spec: the same job asked of several peers shares it (job ids do not)."""
    return hashlib.sha256(canonical_bytes(["lpnode/spec-id/1", spec])).hexdigest()


async def insert_evidence(tx: Transaction, kind: str, check: CheckEvidence, now: float) -> int:
    detail = json.dumps(list(check.detail), sort_keys=True)
    if len(detail) > MAX_DETAIL_BYTES:
        raise ReputationError(f"check detail of {len(detail)} bytes, limit {MAX_DETAIL_BYTES}")
    written = await tx.execute(
        "INSERT INTO rep_evidence (at, kind, spec_id, pipeline, model_family, verdict, blamed, credited, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now,
            kind,
            spec_id(check.spec),
            check.spec.pipeline.value,
            check.model_family,
            Verdict(check.verdict).value,
            json.dumps(list(check.blamed)),
            json.dumps(list(check.credited)),
            detail,
        ),
    )
    assert written.lastrowid is not None
    return written.lastrowid


async def insert_receipts(tx: Transaction, evidence_id: int, raw: Sequence[bytes], receipts: Sequence[Receipt]) -> None:
    await tx.executemany(
        "INSERT INTO rep_receipts (evidence_id, n, worker_peer_id, job_id, receipt) VALUES (?, ?, ?, ?, ?)",
        [
            (evidence_id, n, r.worker_peer_id, r.job_id, data)
            for n, (data, r) in enumerate(zip(raw, receipts, strict=True))
        ],
    )


async def receipts_for(tx: Transaction, worker: str, job_id: str, not_evidence: int) -> list[Receipt]:
    rows = await tx.fetch_all(
        "SELECT receipt FROM rep_receipts WHERE worker_peer_id = ? AND job_id = ? AND evidence_id != ? LIMIT 16",
        (worker, job_id, not_evidence),
    )
    return [verify_receipt(bytes(row["receipt"])) for row in rows]


async def save_peer(tx: Transaction, peer_id: str, family: str, state: PeerState) -> None:
    await tx.execute(
        "INSERT INTO rep_peers (peer_id, model_family, good, bad, at, ban_good, ban_bad, jobs, consecutive,"
        " since_blame, checks, blames, voided, failed, failed_tries, cheats)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (peer_id, model_family) DO UPDATE SET good = excluded.good, bad = excluded.bad,"
        " at = excluded.at, ban_good = excluded.ban_good, ban_bad = excluded.ban_bad, jobs = excluded.jobs,"
        " consecutive = excluded.consecutive, since_blame = excluded.since_blame, checks = excluded.checks,"
        " blames = excluded.blames, voided = excluded.voided, failed = excluded.failed,"
        " failed_tries = excluded.failed_tries, cheats = excluded.cheats",
        (
            peer_id,
            family,
            state.evidence.good,
            state.evidence.bad,
            state.evidence.at,
            state.evidence.ban_good,
            state.evidence.ban_bad,
            state.history.jobs,
            state.history.consecutive_agreements,
            state.history.jobs_since_blame,
            state.checks,
            state.blames,
            state.voided,
            state.evidence.failed,
            state.failed_tries,
            state.cheats,
        ),
    )


async def save_counters(tx: Transaction, counters: dict[str, float]) -> None:
    await tx.executemany(
        "INSERT INTO rep_counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        list(counters.items()),
    )


async def impose_ban(
    tx: Transaction,
    peer: str,
    earlier: Ban | None,
    now: float,
    config: ScoringConfig,
    reason: str,
    evidence_id: int | None,
    failure_id: int | None = None,
) -> Ban:
    """Ban ``peer`` from ``now`` (``earlier``: its last ban, whose count sets the length) and write it; the new ban.

    ``evidence_id``: the check (rep_evidence) that banned it, or ``failure_id``: the failed try (rep_failures)."""
    count = 0 if earlier is None else earlier.bans
    lifted = 0 if earlier is None else earlier.lifted
    # a lifted ban was a mistake of others' making: it does not lengthen this one
    ban = Ban(ban_until(now, count - lifted, config), reason, now, count + 1, evidence_id, lifted, None, failure_id)
    await tx.execute(
        "INSERT INTO rep_bans (peer_id, until, reason, at, bans, evidence_id, lifted, lifted_at, failure_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)"
        " ON CONFLICT (peer_id) DO UPDATE SET until = excluded.until, reason = excluded.reason, at = excluded.at,"
        " bans = excluded.bans, evidence_id = excluded.evidence_id, lifted = excluded.lifted, lifted_at = NULL,"
        " failure_id = excluded.failure_id",
        (peer, ban.until, ban.reason, ban.at, ban.bans, ban.evidence_id, ban.lifted, ban.failure_id),
    )
    return ban


async def insert_failure(tx: Transaction, failure: TryFailure, receipt: bytes | None, now: float) -> int:
    """A failed try's row (``receipt``: its signed receipt where it verified as the peer's own, else None); the id."""
    written = await tx.execute(
        "INSERT INTO rep_failures (at, peer_id, model_family, job_id, outcome, fault, detail, receipt)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now,
            failure.peer_id,
            failure.model_family,
            failure.job_id,
            failure.outcome[:MAX_FAILURE_TEXT],
            failure.fault,
            failure.detail[:MAX_FAILURE_TEXT],
            receipt,
        ),
    )
    assert written.lastrowid is not None
    return written.lastrowid


def failure_json(row: sqlite3.Row) -> dict[str, Any]:
    """A rep_failures row as JSON (the receipt as bytes, or None: base64 is the caller's business)."""
    receipt = row["receipt"]
    return {
        "id": int(row["id"]),
        "at": float(row["at"]),
        "peer_id": str(row["peer_id"]),
        "model_family": str(row["model_family"]),
        "job_id": str(row["job_id"]),
        "outcome": str(row["outcome"]),
        "fault": str(row["fault"]),
        "detail": str(row["detail"]),
        "receipt": None if receipt is None else bytes(receipt),
    }


async def mark_void(tx: Transaction, evidence_id: int, now: float, reason: str) -> None:
    await tx.execute("UPDATE rep_evidence SET voided_at = ?, void_reason = ? WHERE id = ?", (now, reason, evidence_id))


def evidence_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": int(row["id"]),
        "at": float(row["at"]),
        "kind": str(row["kind"]),
        "spec_id": str(row["spec_id"]),
        "pipeline": str(row["pipeline"]),
        "model_family": str(row["model_family"]),
        "verdict": str(row["verdict"]),
        "blamed": json.loads(row["blamed"]),
        "credited": json.loads(row["credited"]),
        "detail": json.loads(row["detail"]),
        # a voided row stays for audit: its blames no longer count (a peer that decided them was banned)
        "voided": None if row["voided_at"] is None else {"at": float(row["voided_at"]), "reason": row["void_reason"]},
        "receipts": [],
    }


async def load_peers(db: Store) -> dict[tuple[str, str], PeerState]:
    """Every (peer, model family)'s state, as :func:`save_peer` wrote it."""
    peers: dict[tuple[str, str], PeerState] = {}
    rows = await db.fetch_all("SELECT * FROM rep_peers", max_rows=MAX_PEERS_LOADED)
    for row in rows:
        peers[(row["peer_id"], row["model_family"])] = PeerState(
            evidence=Evidence(
                float(row["good"]),
                float(row["bad"]),
                float(row["at"]),
                float(row["ban_good"]),
                float(row["ban_bad"]),
                float(row["failed"]),
            ),
            history=PeerHistory(int(row["jobs"]), int(row["consecutive"]), row["since_blame"]),
            checks=int(row["checks"]),
            blames=int(row["blames"]),
            voided=int(row["voided"]),
            failed_tries=int(row["failed_tries"]),
            cheats=int(row["cheats"]),
        )
    return peers


async def load_bans(db: Store) -> dict[str, Ban]:
    """Every peer's current or last ban, as :func:`impose_ban` wrote it."""
    bans: dict[str, Ban] = {}
    for row in await db.fetch_all("SELECT * FROM rep_bans", max_rows=MAX_PEERS_LOADED):
        lifted_at = row["lifted_at"]
        bans[row["peer_id"]] = Ban(
            float(row["until"]),
            str(row["reason"]),
            float(row["at"]),
            int(row["bans"]),
            row["evidence_id"],
            int(row["lifted"]),
            None if lifted_at is None else float(lifted_at),
            row["failure_id"],
        )
    return bans


async def load_counters(db: Store, names: Sequence[str]) -> dict[str, float]:
    """The stored values of the counters named (a row of another name is ignored)."""
    counters: dict[str, float] = {}
    for row in await db.fetch_all("SELECT name, value FROM rep_counters", max_rows=100):
        if row["name"] in names:
            counters[row["name"]] = float(row["value"])
    return counters
