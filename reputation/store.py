"""The reputation store: evidence, per-peer scores and bans in the node's SQLite database, mirrored in memory.

    async with open_store(data_dir / "lpnode.db", [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as db:
        reputation = await open_reputation(db)
        reputation.score(peer_id, model_family)        # sync, from memory: the ranking calls it per candidate
        await reputation.record_check(check)           # one transaction: evidence + receipts + scores + bans

Tables (component ``reputation``, :data:`REPUTATION_MIGRATIONS`):

* ``rep_evidence``: one row per settled check (or equivocation proof): the job
  spec's id, pipeline, model family, overall verdict, who was blamed and who
  credited, and the pairwise verdicts with their metrics (JSON); a row whose
  blame a later-banned peer helped decide is marked voided (kept for audit,
  its blame no longer counted: see ``_withdraw``);
* ``rep_receipts``: every signed receipt a row rests on, as received, so the
  evidence can be checked offline by anyone (``lpnode reputation export``);
* ``rep_peers``: per (peer, model family) the scoring state (decayed good/bad
  counts as of ``at``, and the ban test's ban_good/ban_bad) and the policy's history (jobs, consecutive agreements,
  jobs since the last blame);
* ``rep_bans``: a peer's current or last ban, its expiry, reason and how many
  bans it has had (each doubles the next one's length, except those lifted
  because the blames they rested on were voided);
* ``rep_counters``: compute given to users' jobs and to checks (the overhead figure).

Every write is one transaction, and the in-memory view changes only after it
committed, so :meth:`ReputationStore.score` / :meth:`ReputationStore.is_banned`
(what :class:`~lpnode.node.peer_choice.ReputationView` asks, synchronously,
per candidate) never touch the disk and never show an uncommitted state.

Model family: adverts carry model ids, not architecture families, so the
family of a model is its model id (:func:`model_family`): evidence about one
model says nothing about another, which is the cautious reading.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio
from lpnode.node.store import Migration, Store, Transaction
from lpnode.protocol.codec import canonical_bytes
from lpnode.protocol.errors import ReceiptRejected
from lpnode.protocol.jobspec import JobSpec
from lpnode.protocol.receipts import Receipt, verify_receipt

from .compare import Verdict
from .errors import ReputationError
from .policy import PeerHistory, blame_stands
from .scoring import (
    Evidence,
    ScoringConfig,
    after_check,
    as_of,
    ban_until,
    equivocation,
    expected_trust,
    log_likelihood_ratio,
    record,
    score,
    should_ban,
    withdraw_blame,
)

__all__ = [
    "MAX_EVIDENCE_PAGE",
    "REPUTATION_MIGRATIONS",
    "Ban",
    "CheckEvidence",
    "NotEquivocation",
    "PeerState",
    "ReputationStore",
    "model_family",
    "open_reputation",
    "spec_id",
]

MAX_EVIDENCE_PAGE = 500  # evidence rows per page of an export or a peer's listing
MAX_DETAIL_BYTES = 64 * 1024  # the JSON of one evidence row's pairwise verdicts
MAX_PEERS_LOADED = 1_000_000  # rows of rep_peers read into memory at start; a sanity bound
# Disagreements a newly banned peer took part in that are looked at for voiding, newest first. Its bans come after a
# few blames, so its recent checks are the ones that count; older blames it decided have mostly faded anyway.
MAX_VOID_ROWS = 10_000

REPUTATION_MIGRATIONS = (
    Migration(
        "reputation",
        1,
        (
            """CREATE TABLE rep_evidence (
                id INTEGER PRIMARY KEY,
                at REAL NOT NULL,                                  -- unix seconds, requester's clock
                kind TEXT NOT NULL CHECK (kind IN ('check', 'equivocation')),
                spec_id TEXT NOT NULL,                             -- hex sha256 of the canonical job spec
                pipeline TEXT NOT NULL,
                model_family TEXT NOT NULL,
                verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'inconclusive', 'disagree')),
                blamed TEXT NOT NULL,                              -- JSON list of peer ids
                credited TEXT NOT NULL,                            -- JSON list of peer ids
                detail TEXT NOT NULL                               -- JSON: pairwise verdicts and metrics
            )""",
            "CREATE INDEX rep_evidence_at ON rep_evidence (at)",
            """CREATE TABLE rep_receipts (
                evidence_id INTEGER NOT NULL REFERENCES rep_evidence (id) ON DELETE CASCADE,
                n INTEGER NOT NULL,
                worker_peer_id TEXT NOT NULL,
                job_id TEXT NOT NULL,
                receipt BLOB NOT NULL,                             -- the signed bytes, as received
                PRIMARY KEY (evidence_id, n)
            ) WITHOUT ROWID""",
            "CREATE INDEX rep_receipts_worker ON rep_receipts (worker_peer_id, job_id)",
            """CREATE TABLE rep_peers (
                peer_id TEXT NOT NULL,
                model_family TEXT NOT NULL,
                good REAL NOT NULL,                                -- decayed counts as of `at`
                bad REAL NOT NULL,
                at REAL NOT NULL,
                jobs INTEGER NOT NULL,                             -- jobs given to it (first worker)
                consecutive INTEGER NOT NULL,                      -- checks passed since the last blame
                since_blame INTEGER,                               -- jobs since the last blame; NULL: never blamed
                checks INTEGER NOT NULL,                           -- settled checks it took part in
                blames INTEGER NOT NULL,
                PRIMARY KEY (peer_id, model_family)
            ) WITHOUT ROWID""",
            """CREATE TABLE rep_bans (
                peer_id TEXT PRIMARY KEY,
                until REAL NOT NULL,                               -- unix seconds
                reason TEXT NOT NULL,
                at REAL NOT NULL,
                bans INTEGER NOT NULL,                             -- bans so far, this one included
                evidence_id INTEGER
            ) WITHOUT ROWID""",
            """CREATE TABLE rep_counters (
                name TEXT PRIMARY KEY,
                value REAL NOT NULL
            ) WITHOUT ROWID""",
        ),
    ),
    # The ban test's own counts, faded with one half-life (scoring.Evidence). A row from before starts from the
    # counts the test read until then, so no ban decision changes at the upgrade; from then on both fade alike.
    Migration(
        "reputation",
        2,
        (
            "ALTER TABLE rep_peers ADD COLUMN ban_good REAL NOT NULL DEFAULT 0",
            "ALTER TABLE rep_peers ADD COLUMN ban_bad REAL NOT NULL DEFAULT 0",
            "UPDATE rep_peers SET ban_good = good, ban_bad = bad",
        ),
    ),
    # Withdrawn evidence: a blame decided by a peer that is later banned is voided (the row is kept, marked, for
    # audit), the blamed peer's counts lose it, and a ban that rested on it is lifted. The sides of each check are
    # in the rows already (credited: the majority; blamed: the rest), so only the marks are new.
    Migration(
        "reputation",
        3,
        (
            "ALTER TABLE rep_evidence ADD COLUMN voided_at REAL",  # NULL: stands
            "ALTER TABLE rep_evidence ADD COLUMN void_reason TEXT",
            "ALTER TABLE rep_peers ADD COLUMN voided INTEGER NOT NULL DEFAULT 0",  # blames withdrawn
            "ALTER TABLE rep_bans ADD COLUMN lifted INTEGER NOT NULL DEFAULT 0",  # of `bans`, how many were lifted
            "ALTER TABLE rep_bans ADD COLUMN lifted_at REAL",  # the current/last ban's lifting; NULL: not lifted
        ),
    ),
)

COUNTERS = ("jobs", "job_mpx_steps", "checks", "check_runs", "check_mpx_steps", "checks_skipped")


def model_family(model_id: str) -> str:
    """The reputation family of a model: its id (adverts name no architecture family; see the module doc)."""
    return model_id


def spec_id(spec: JobSpec) -> str:
    """Hex sha256 of the canonical spec: the same job asked of several peers shares it (job ids do not)."""
    return hashlib.sha256(canonical_bytes(["lpnode/spec-id/1", spec])).hexdigest()


class NotEquivocation(ReputationError):
    """Two receipts offered as equivocation proof are not one worker's conflicting receipts for one job id."""


@dataclass(frozen=True)
class PeerState:
    """What the store knows of one peer for one model family."""

    evidence: Evidence = field(default_factory=Evidence)
    history: PeerHistory = field(default_factory=PeerHistory)
    checks: int = 0
    blames: int = 0  # standing blames (voided ones no longer counted)
    voided: int = 0  # blames withdrawn because a peer that decided them was banned


@dataclass(frozen=True)
class Ban:
    until: float  # unix seconds
    reason: str
    at: float
    bans: int  # this one included
    evidence_id: int | None
    lifted: int = 0  # of those bans, how many were lifted (they do not lengthen the next one)
    lifted_at: float | None = None  # this ban was lifted then (``until`` is set to it); None: not lifted


@dataclass(frozen=True)
class CheckEvidence:
    """A settled check, as :mod:`~lpnode.reputation.spot_check` hands it over."""

    spec: JobSpec
    model_family: str
    verdict: Verdict  # agree: nobody blamed; disagree: someone blamed; inconclusive: no majority
    receipts: Sequence[bytes]  # every run's signed receipt, first worker first
    blamed: Sequence[str]
    credited: Sequence[str]
    detail: Sequence[dict[str, Any]]  # pairwise: {"peers": [a, b], "verdict", "reason", "metrics"}


class ReputationStore:
    """Implements :class:`~lpnode.node.peer_choice.ReputationView` over the database; from :func:`open_reputation`."""

    def __init__(self, store: Store, config: ScoringConfig, clock: Callable[[], float]) -> None:
        self.db = store
        self.config = config
        self.clock = clock
        self._peers: dict[tuple[str, str], PeerState] = {}
        self._bans: dict[str, Ban] = {}
        self._counters: dict[str, float] = dict.fromkeys(COUNTERS, 0.0)
        self._lock = trio.Lock()  # read-modify-write of the mirror and the rows, one at a time
        self.changed = trio.Event()  # set (and replaced) after every committed change

    # ------------------------------------------------------------ ReputationView (sync, memory only)

    def score(self, peer_id: str, model_family: str) -> float:
        state = self._peers.get((peer_id, model_family))
        evidence = state.evidence if state is not None else Evidence(at=self.clock())
        return score(evidence, self.clock(), self.config)

    def is_banned(self, peer_id: str) -> bool:
        ban = self._bans.get(peer_id)
        return ban is not None and ban.until > self.clock()

    # ------------------------------------------------------------ reads (memory)

    def state(self, peer_id: str, model_family: str) -> PeerState:
        return self._peers.get((peer_id, model_family), PeerState())

    def history(self, peer_id: str, model_family: str) -> PeerHistory:
        return self.state(peer_id, model_family).history

    def ban(self, peer_id: str) -> Ban | None:
        """The peer's current or last ban (check ``until`` against the clock), or None."""
        return self._bans.get(peer_id)

    def peers(self) -> list[str]:
        return sorted({peer for peer, _ in self._peers} | set(self._bans))

    def families(self, peer_id: str) -> dict[str, PeerState]:
        return {family: state for (peer, family), state in sorted(self._peers.items()) if peer == peer_id}

    def counters(self) -> dict[str, float]:
        return dict(self._counters)

    def overhead(self) -> float:
        """Compute spent on checks over compute of users' jobs (megapixel-steps); 0 before any job."""
        jobs = self._counters["job_mpx_steps"]
        return self._counters["check_mpx_steps"] / jobs if jobs else 0.0

    def describe(self, peer_id: str) -> dict[str, Any]:
        """The JSON the RPC shows for one peer (scores per family, counts, ban state)."""
        now = self.clock()
        ban = self._bans.get(peer_id)
        return {
            "peer_id": peer_id,
            "banned": ban is not None and ban.until > now,
            "ban": None
            if ban is None
            else {
                "until": ban.until,
                "reason": ban.reason,
                "at": ban.at,
                "bans": ban.bans,
                "evidence_id": ban.evidence_id,
                "lifted": ban.lifted,
                "lifted_at": ban.lifted_at,
            },
            "families": [
                {
                    "model_family": family,
                    "score": score(state.evidence, now, self.config),
                    "expected_trust": expected_trust(state.evidence, now, self.config),
                    "good": state.evidence.good,
                    "bad": state.evidence.bad,
                    "ban_log_ratio": log_likelihood_ratio(state.evidence, now, self.config),
                    "jobs": state.history.jobs,
                    "checks": state.checks,
                    "blames": state.blames,
                    "voided_blames": state.voided,
                    "consecutive_agreements": state.history.consecutive_agreements,
                }
                for family, state in self.families(peer_id).items()
            ],
        }

    # ------------------------------------------------------------ reads (database)

    async def evidence(
        self, *, peer_id: str | None = None, after_id: int = 0, limit: int = 50, newest_first: bool = False
    ) -> list[dict[str, Any]]:
        """Evidence rows with their receipts (base64 is the caller's business: bytes here)."""
        limit = max(1, min(limit, MAX_EVIDENCE_PAGE))
        order = "DESC" if newest_first else "ASC"
        where, params = ["e.id > ?"], [after_id]
        if peer_id is not None:
            where.append("e.id IN (SELECT evidence_id FROM rep_receipts WHERE worker_peer_id = ?)")
            params.append(peer_id)  # type: ignore[arg-type]
        rows = await self.db.fetch_all(
            f"SELECT e.* FROM rep_evidence e WHERE {' AND '.join(where)} ORDER BY e.id {order} LIMIT ?",
            (*params, limit),
            max_rows=MAX_EVIDENCE_PAGE,
        )
        out = [_evidence_json(row) for row in rows]
        if out:
            ids = [item["id"] for item in out]
            marks = ",".join("?" * len(ids))
            receipts = await self.db.fetch_all(
                f"SELECT evidence_id, n, worker_peer_id, job_id, receipt FROM rep_receipts"
                f" WHERE evidence_id IN ({marks}) ORDER BY evidence_id, n",
                ids,
                max_rows=MAX_EVIDENCE_PAGE * 8,
            )
            by_id = {item["id"]: item for item in out}
            for row in receipts:
                by_id[row["evidence_id"]]["receipts"].append(
                    {"worker_peer_id": row["worker_peer_id"], "job_id": row["job_id"], "receipt": bytes(row["receipt"])}
                )
        return out

    async def evidence_count(self, peer_id: str) -> int:
        row = await self.db.fetch_one(
            "SELECT count(DISTINCT evidence_id) AS n FROM rep_receipts WHERE worker_peer_id = ?", (peer_id,)
        )
        return 0 if row is None else int(row["n"])

    # ------------------------------------------------------------ writes (one transaction each)

    async def note_job(self, peer_id: str, family: str, work_mpx_steps: float) -> PeerHistory:
        """A user's job ran on ``peer_id`` (the first worker); its history counts it. The new history."""
        async with self._lock:
            state = self.state(peer_id, family)
            new = replace(state, history=state.history.after_job())
            counters = self._bump({"jobs": 1, "job_mpx_steps": work_mpx_steps})
            async with self.db.transaction() as tx:
                await _save_peer(tx, peer_id, family, new)
                await _save_counters(tx, counters)
            self._peers[(peer_id, family)] = new
            self._counters = counters
            self._notify()
            return new.history

    async def note_jobs(self, jobs: Sequence[tuple[str, str, float]], *, skipped: int = 0) -> None:
        """Several :meth:`note_job` at once, ``(peer_id, family, work_mpx_steps)`` each, plus checks skipped
        for want of a checker or capacity: one transaction for the batch."""
        if not jobs and not skipped:
            return
        async with self._lock:
            peers: dict[tuple[str, str], PeerState] = {}
            for peer_id, family, _ in jobs:
                state = peers.get((peer_id, family)) or self.state(peer_id, family)
                peers[(peer_id, family)] = replace(state, history=state.history.after_job())
            work = sum(w for _, _, w in jobs)
            counters = self._bump({"jobs": len(jobs), "job_mpx_steps": work, "checks_skipped": skipped})
            async with self.db.transaction() as tx:
                for (peer_id, family), state in peers.items():
                    await _save_peer(tx, peer_id, family, state)
                await _save_counters(tx, counters)
            self._peers.update(peers)
            self._counters = counters
            self._notify()

    async def note_check_compute(self, runs: int, work_mpx_steps: float, *, skipped: int = 0) -> None:
        """Extra runs made for checks (and checks skipped for want of a checker or capacity)."""
        async with self._lock:
            counters = self._bump({"check_runs": runs, "check_mpx_steps": work_mpx_steps, "checks_skipped": skipped})
            async with self.db.transaction() as tx:
                await _save_counters(tx, counters)
            self._counters = counters

    async def record_check(self, check: CheckEvidence) -> int:
        """Store a settled check and its consequences (scores, bans); the evidence row id.

        Receipts are verified here again: the store keeps only what a third party could check.
        """
        receipts = [_verified(data) for data in check.receipts]
        if len(receipts) < 2 or any(r.spec != receipts[0].spec for r in receipts):
            raise ReputationError("a check needs at least two verified receipts of one job spec")
        async with self._lock:
            now = self.clock()
            peers = dict(self._peers)
            bans = dict(self._bans)
            counters = self._bump({"checks": 1})
            # A check that settles after one of its majority was banned (it was in flight): the banned peer's word
            # no longer counts, so the blame is void from the start, as it would be had it settled before the ban.
            banned = {peer for peer, ban in bans.items() if _active(ban, now)}
            void_now = bool(check.blamed) and not blame_stands(check.credited, check.blamed, banned)
            newly_banned: list[str] = []
            async with self.db.transaction() as tx:
                evidence_id = await _insert_evidence(tx, "check", check, now)
                await _insert_receipts(tx, evidence_id, check.receipts, receipts)
                touched: set[tuple[str, str]] = set()
                outcomes = [(peer, False) for peer in check.credited] + [(peer, True) for peer in check.blamed]
                for peer, blamed in outcomes:
                    key = (peer, check.model_family)
                    state = peers.get(key, PeerState())
                    if blamed and void_now:  # neutral, as a withdrawn blame is (see _withdraw)
                        peers[key] = replace(state, checks=state.checks + 1, voided=state.voided + 1)
                        touched.add(key)
                        continue
                    # the same step as policy_sim's, so the simulated ban figures are this store's
                    evidence, ban = after_check(state.evidence, now, self.config, blamed=blamed)
                    peers[key] = replace(
                        state,
                        evidence=evidence,
                        history=state.history.after_check(blamed=blamed),
                        checks=state.checks + 1,
                        blames=state.blames + blamed,
                    )
                    touched.add(key)
                    if ban and not _active(bans.get(peer), now):
                        bans[peer] = await _ban(
                            tx, peer, bans.get(peer), now, self.config, "failed checks", evidence_id
                        )
                        newly_banned.append(peer)
                # another receipt of the same worker for the same job id, seen earlier: proof
                for receipt in receipts:
                    for earlier in await _receipts_for(tx, receipt.worker_peer_id, receipt.job_id, evidence_id):
                        if equivocation(receipt, earlier) and not _active(bans.get(receipt.worker_peer_id), now):
                            worker = receipt.worker_peer_id
                            bans[worker] = await _ban(
                                tx, worker, bans.get(worker), now, self.config, "equivocation", evidence_id
                            )
                            newly_banned.append(worker)
                if void_now:
                    reason = f"decided by banned {', '.join(sorted(set(check.credited) & banned))}"
                    await _mark_void(tx, evidence_id, now, reason)
                if newly_banned:
                    await _withdraw(tx, newly_banned, peers, bans, touched, now, self.config)
                for peer, family in touched:
                    await _save_peer(tx, peer, family, peers[(peer, family)])
                await _save_counters(tx, counters)
            self._peers, self._bans, self._counters = peers, bans, counters
            self._notify()
            return evidence_id

    async def record_equivocation(self, a: bytes, b: bytes) -> int:
        """Two receipts one worker signed for one job id with different outputs: store them and ban at once."""
        ra, rb = _verified(a), _verified(b)
        if not equivocation(ra, rb):
            raise NotEquivocation("the receipts are not one worker's conflicting receipts for one job id")
        worker = ra.worker_peer_id
        family = model_family(ra.model_id)
        check = CheckEvidence(
            spec=ra.spec,
            model_family=family,
            verdict=Verdict.DISAGREE,
            receipts=(a, b),
            blamed=(worker,),
            credited=(),
            detail=({"peers": [worker, worker], "verdict": "disagree", "reason": "equivocation"},),
        )
        async with self._lock:
            now = self.clock()
            key = (worker, family)
            peers = dict(self._peers)
            state = peers.get(key, PeerState())
            peers[key] = replace(
                state,
                evidence=record(state.evidence, now, self.config, bad=1.0),
                history=state.history.after_blame(),
                blames=state.blames + 1,
            )
            touched = {key}
            bans = dict(self._bans)
            async with self.db.transaction() as tx:
                evidence_id = await _insert_evidence(tx, "equivocation", check, now)
                await _insert_receipts(tx, evidence_id, (a, b), (ra, rb))
                if not _active(bans.get(worker), now):
                    bans[worker] = await _ban(
                        tx, worker, bans.get(worker), now, self.config, "equivocation", evidence_id
                    )
                    await _withdraw(tx, [worker], peers, bans, touched, now, self.config)
                for peer, fam in touched:
                    await _save_peer(tx, peer, fam, peers[(peer, fam)])
            self._peers = peers
            self._bans = bans
            self._notify()
            return evidence_id

    # ------------------------------------------------------------ internals

    def _bump(self, deltas: dict[str, float]) -> dict[str, float]:
        counters = dict(self._counters)
        for name, delta in deltas.items():
            counters[name] += delta
        return counters

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def _load(self) -> None:
        rows = await self.db.fetch_all("SELECT * FROM rep_peers", max_rows=MAX_PEERS_LOADED)
        for row in rows:
            self._peers[(row["peer_id"], row["model_family"])] = PeerState(
                evidence=Evidence(
                    float(row["good"]),
                    float(row["bad"]),
                    float(row["at"]),
                    float(row["ban_good"]),
                    float(row["ban_bad"]),
                ),
                history=PeerHistory(int(row["jobs"]), int(row["consecutive"]), row["since_blame"]),
                checks=int(row["checks"]),
                blames=int(row["blames"]),
                voided=int(row["voided"]),
            )
        for row in await self.db.fetch_all("SELECT * FROM rep_bans", max_rows=MAX_PEERS_LOADED):
            lifted_at = row["lifted_at"]
            self._bans[row["peer_id"]] = Ban(
                float(row["until"]),
                str(row["reason"]),
                float(row["at"]),
                int(row["bans"]),
                row["evidence_id"],
                int(row["lifted"]),
                None if lifted_at is None else float(lifted_at),
            )
        for row in await self.db.fetch_all("SELECT name, value FROM rep_counters", max_rows=100):
            if row["name"] in self._counters:
                self._counters[row["name"]] = float(row["value"])


async def open_reputation(
    store: Store, *, config: ScoringConfig | None = None, clock: Callable[[], float] = time.time
) -> ReputationStore:
    """The reputation view over an open store (opened with :data:`REPUTATION_MIGRATIONS`), loaded into memory."""
    reputation = ReputationStore(store, config or ScoringConfig(), clock)
    await reputation._load()
    return reputation


# ---------------------------------------------------------------- row helpers


def _verified(data: bytes) -> Receipt:
    try:
        return verify_receipt(data)
    except ReceiptRejected as exc:
        raise ReputationError(f"evidence rests on a receipt that does not verify: {exc}") from exc


def _active(ban: Ban | None, now: float) -> bool:
    return ban is not None and ban.until > now


async def _insert_evidence(tx: Transaction, kind: str, check: CheckEvidence, now: float) -> int:
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


async def _insert_receipts(
    tx: Transaction, evidence_id: int, raw: Sequence[bytes], receipts: Sequence[Receipt]
) -> None:
    await tx.executemany(
        "INSERT INTO rep_receipts (evidence_id, n, worker_peer_id, job_id, receipt) VALUES (?, ?, ?, ?, ?)",
        [
            (evidence_id, n, r.worker_peer_id, r.job_id, data)
            for n, (data, r) in enumerate(zip(raw, receipts, strict=True))
        ],
    )


async def _receipts_for(tx: Transaction, worker: str, job_id: str, not_evidence: int) -> list[Receipt]:
    rows = await tx.fetch_all(
        "SELECT receipt FROM rep_receipts WHERE worker_peer_id = ? AND job_id = ? AND evidence_id != ? LIMIT 16",
        (worker, job_id, not_evidence),
    )
    return [verify_receipt(bytes(row["receipt"])) for row in rows]


async def _save_peer(tx: Transaction, peer_id: str, family: str, state: PeerState) -> None:
    await tx.execute(
        "INSERT INTO rep_peers (peer_id, model_family, good, bad, at, ban_good, ban_bad, jobs, consecutive,"
        " since_blame, checks, blames, voided) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (peer_id, model_family) DO UPDATE SET good = excluded.good, bad = excluded.bad,"
        " at = excluded.at, ban_good = excluded.ban_good, ban_bad = excluded.ban_bad, jobs = excluded.jobs,"
        " consecutive = excluded.consecutive, since_blame = excluded.since_blame, checks = excluded.checks,"
        " blames = excluded.blames, voided = excluded.voided",
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
        ),
    )


async def _save_counters(tx: Transaction, counters: dict[str, float]) -> None:
    await tx.executemany(
        "INSERT INTO rep_counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        list(counters.items()),
    )


async def _ban(
    tx: Transaction, peer: str, earlier: Ban | None, now: float, config: ScoringConfig, reason: str, evidence_id: int
) -> Ban:
    count = 0 if earlier is None else earlier.bans
    lifted = 0 if earlier is None else earlier.lifted
    # a lifted ban was a mistake of others' making: it does not lengthen this one
    ban = Ban(ban_until(now, count - lifted, config), reason, now, count + 1, evidence_id, lifted, None)
    await tx.execute(
        "INSERT INTO rep_bans (peer_id, until, reason, at, bans, evidence_id, lifted, lifted_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, NULL)"
        " ON CONFLICT (peer_id) DO UPDATE SET until = excluded.until, reason = excluded.reason, at = excluded.at,"
        " bans = excluded.bans, evidence_id = excluded.evidence_id, lifted = excluded.lifted, lifted_at = NULL",
        (peer, ban.until, ban.reason, ban.at, ban.bans, ban.evidence_id, ban.lifted),
    )
    return ban


async def _mark_void(tx: Transaction, evidence_id: int, now: float, reason: str) -> None:
    await tx.execute("UPDATE rep_evidence SET voided_at = ?, void_reason = ? WHERE id = ?", (now, reason, evidence_id))


async def _withdraw(
    tx: Transaction,
    newly_banned: Sequence[str],
    peers: dict[tuple[str, str], PeerState],
    bans: dict[str, Ban],
    touched: set[tuple[str, str]],
    now: float,
    config: ScoringConfig,
) -> None:
    """Void the blames the newly banned peers' word decided, and lift the bans that rested on them.

    In the caller's transaction, on its copies of the mirror (``peers``, ``bans``; ``touched`` gains every key it
    changes). A blame is void when its majority, without the banned peers (all of them, not only the new ones),
    no longer outvotes the blamed (:func:`~lpnode.reputation.policy.blame_stands`). This is what colluders who
    return the same wrong output do: one checks an honest peer, the other breaks the tie, and the honest peer is
    the odd one out. Bounded: voiding bans nobody (it only removes blames) and lifting a ban voids nothing, so one
    ban costs one pass over the banned peers' recent disagreements.

    The blamed peer gets the check back as neutral, not as passed: its output was outvoted by a cheater, not
    confirmed by anyone, so it is evidence neither way (a pass would let a cheater earn credit from a colluder's
    ban). ``checks`` keeps counting it; the policy's history (consecutive agreements, jobs since the blame) is
    left as it is, which only means the peer is checked a little more for a while.
    """
    marks = ",".join("?" * len(newly_banned))
    rows = await tx.fetch_all(
        "SELECT id, at, model_family, blamed, credited FROM rep_evidence"
        " WHERE kind = 'check' AND voided_at IS NULL AND blamed != '[]'"
        f" AND id IN (SELECT evidence_id FROM rep_receipts WHERE worker_peer_id IN ({marks}))"
        " ORDER BY id DESC LIMIT ?",
        (*newly_banned, MAX_VOID_ROWS),
        max_rows=MAX_VOID_ROWS,
    )
    banned = {peer for peer, ban in bans.items() if _active(ban, now)}
    unblamed: set[str] = set()
    for row in rows:
        credited, blamed = json.loads(row["credited"]), json.loads(row["blamed"])
        deciders = sorted(set(credited) & set(newly_banned))
        if not deciders or blame_stands(credited, blamed, banned):
            continue
        await _mark_void(tx, int(row["id"]), now, f"decided by banned {', '.join(deciders)}")
        for peer in blamed:
            key = (peer, str(row["model_family"]))
            state = peers.get(key, PeerState())
            peers[key] = replace(
                state,
                evidence=withdraw_blame(state.evidence, float(row["at"]), now, config),
                blames=max(0, state.blames - 1),
                voided=state.voided + 1,
            )
            touched.add(key)
            unblamed.add(peer)
    for peer in sorted(unblamed):
        ban = bans.get(peer)
        # equivocation is proof on its own; a ban from checks stands if, without the voided blames, the test
        # would still have banned at the ban's time in any family
        if ban is None or not _active(ban, now) or ban.reason == "equivocation":
            continue
        families = [state for (p, _), state in peers.items() if p == peer]
        if any(should_ban(as_of(state.evidence, ban.at, config), ban.at, config) for state in families):
            continue
        bans[peer] = replace(ban, until=now, lifted=ban.lifted + 1, lifted_at=now)
        await tx.execute(
            "UPDATE rep_bans SET until = ?, lifted = ?, lifted_at = ? WHERE peer_id = ?",
            (now, ban.lifted + 1, now, peer),
        )


def _evidence_json(row: sqlite3.Row) -> dict[str, Any]:
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
