"""The reputation store: evidence, per-peer scores and bans in the node's SQLite database, mirrored in memory.

    async with open_store(data_dir / "lpnode.db", [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as db:
        reputation = await open_reputation(db)
        reputation.score(peer_id, model_family)        # sync, from memory: the ranking calls it per candidate
        await reputation.record_check(check)           # one transaction: evidence + receipts + scores + bans
        await reputation.record_failures(failures)     # tries that failed by the worker's doing: rows + scores + bans

Tables: :data:`REPUTATION_MIGRATIONS` (component ``reputation``), described in :mod:`~lpnode.reputation.store_schema`.
The store is split by job: this module holds :class:`ReputationStore` (the in-memory mirror and the order of each
transaction) and :func:`open_reputation`; its values are in :mod:`~lpnode.reputation.store_types`, its SQL in
:mod:`~lpnode.reputation.store_rows`, and the voiding of a banned peer's blames in
:mod:`~lpnode.reputation.store_withdraw`. Every public name is importable from here.

Every write is one transaction, and the in-memory view changes only after it
committed, so :meth:`ReputationStore.score` / :meth:`ReputationStore.is_banned`
(what :class:`~lpnode.node.peer_choice.ReputationView` asks, synchronously,
per candidate) never touch the disk and never show an uncommitted state.

Model family: adverts carry model ids, not architecture families, so the
family of a model is its model id (:func:`model_family`): evidence about one
model says nothing about another, which is the cautious reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

import trio
from lpnode.node.store import Store
from lpnode.protocol.errors import ReceiptRejected
from lpnode.protocol.receipts import Receipt, verify_receipt

from .compare import Verdict
from .errors import ReputationError
from .policy import PeerHistory, blame_stands
from .scoring import (
    FAILURE_CLASSES,
    Evidence,
    ScoringConfig,
    after_check,
    after_failure,
    equivocation,
    expected_trust,
    log_likelihood_ratio,
    record,
    score,
)
from .store_rows import (
    evidence_json,
    failure_json,
    impose_ban,
    insert_evidence,
    insert_failure,
    insert_receipts,
    load_bans,
    load_counters,
    load_peers,
    mark_void,
    receipts_for,
    save_counters,
    save_peer,
    spec_id,
)
from .store_schema import REPUTATION_MIGRATIONS
from .store_types import Ban, CheckEvidence, PeerState, TryFailure, in_force
from .store_withdraw import withdraw_blames

__all__ = [
    "MAX_CHECKED_TRIES",
    "MAX_EVIDENCE_PAGE",
    "MAX_PEER_PAGE",
    "REPUTATION_MIGRATIONS",
    "Ban",
    "CheckEvidence",
    "NotEquivocation",
    "PeerState",
    "ReputationStore",
    "TryFailure",
    "model_family",
    "open_reputation",
    "spec_id",
]

MAX_EVIDENCE_PAGE = 500  # evidence rows per page of an export or a peer's listing
MAX_PEER_PAGE = 500  # peers per page of the summary (GET /v1/reputation), and per evidence_counts query
MAX_CHECKED_TRIES = 64  # tries per checks_of_tries call: a record's jobs (a request makes at most 8 images)

COUNTERS = ("jobs", "job_mpx_steps", "checks", "check_runs", "check_mpx_steps", "checks_skipped")


def model_family(model_id: str) -> str:
    """The reputation family of a model: its id (adverts name no architecture family; see the module doc)."""
    return model_id


class NotEquivocation(ReputationError):
    """Two receipts offered as equivocation proof are not one worker's conflicting receipts for one job id."""


class ReputationStore:
    """Implements :class:`~lpnode.node.peer_choice.ReputationView` over the database; from :func:`open_reputation`."""

    def __init__(self, store: Store, config: ScoringConfig, clock: Callable[[], float]) -> None:
        self.db = store
        self.config = config
        self.clock = clock
        self._peers: dict[tuple[str, str], PeerState] = {}
        # the same states by peer, then family: a peer's families without a pass over every peer's (the summary
        # describes every peer); changed only with _peers, in _commit_peers
        self._families: dict[str, dict[str, PeerState]] = {}
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
        """Every peer with a state or a ban, in id order."""
        return sorted(self._families.keys() | self._bans.keys())

    def families(self, peer_id: str) -> dict[str, PeerState]:
        """The peer's state per model family, in family order."""
        return dict(sorted(self._families.get(peer_id, {}).items()))

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
                "failure_id": ban.failure_id,
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
                    "failed_tries": state.failed_tries,  # tries that failed by its doing, cheats included
                    "cheats": state.cheats,  # tries it signed a wrong result for (blames without a checker)
                    "failed": state.evidence.failed,  # failed tries' weight in the score beyond blames, decayed
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
        out = [evidence_json(row) for row in rows]
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

    async def evidence_counts(self, peer_ids: Collection[str]) -> dict[str, int]:
        """:meth:`evidence_count` of several peers, one grouped query per :data:`MAX_PEER_PAGE` of them (a page of
        the summary is one); a peer with no evidence is left out."""
        ids = sorted(set(peer_ids))
        counts: dict[str, int] = {}
        for start in range(0, len(ids), MAX_PEER_PAGE):
            chunk = ids[start : start + MAX_PEER_PAGE]
            rows = await self.db.fetch_all(
                "SELECT worker_peer_id, count(DISTINCT evidence_id) AS n FROM rep_receipts"
                f" WHERE worker_peer_id IN ({','.join('?' * len(chunk))}) GROUP BY worker_peer_id",
                chunk,
                max_rows=len(chunk),
            )
            counts.update((str(row["worker_peer_id"]), int(row["n"])) for row in rows)
        return counts

    async def checks_of_tries(self, tries: Sequence[tuple[str, str]]) -> dict[str, list[dict[str, Any]]]:
        """The evidence rows whose receipts include each try ``(worker_peer_id, job_id)``, by job id, oldest first.

        Each row is :meth:`evidence`'s without the receipts, with ``peers`` (every worker whose receipt it
        holds, in order) instead. At most :data:`MAX_CHECKED_TRIES` tries a call (one record's jobs).
        """
        if len(tries) > MAX_CHECKED_TRIES:
            raise ValueError(f"at most {MAX_CHECKED_TRIES} tries a call, got {len(tries)}")
        found: dict[str, list[dict[str, Any]]] = {}
        for worker, job_id in tries:
            rows = await self.db.fetch_all(
                "SELECT e.* FROM rep_evidence e JOIN rep_receipts r ON r.evidence_id = e.id"
                " WHERE r.worker_peer_id = ? AND r.job_id = ? ORDER BY e.id",
                (worker, job_id),
                max_rows=MAX_EVIDENCE_PAGE,
            )
            items = []
            for row in rows:
                item = evidence_json(row)
                del item["receipts"]
                peers = await self.db.fetch_all(
                    "SELECT worker_peer_id FROM rep_receipts WHERE evidence_id = ? ORDER BY n",
                    (item["id"],),
                    max_rows=MAX_EVIDENCE_PAGE,
                )
                items.append(item | {"peers": [str(p["worker_peer_id"]) for p in peers]})
            found[job_id] = items
        return found

    async def failures(
        self, *, peer_id: str | None = None, after_id: int = 0, limit: int = 50, newest_first: bool = False
    ) -> list[dict[str, Any]]:
        """Failed-try rows (:meth:`record_failures`), a cheat's receipt as bytes (base64 is the caller's business)."""
        limit = max(1, min(limit, MAX_EVIDENCE_PAGE))
        order = "DESC" if newest_first else "ASC"
        where, params = ["id > ?"], [after_id]
        if peer_id is not None:
            where.append("peer_id = ?")
            params.append(peer_id)  # type: ignore[arg-type]
        rows = await self.db.fetch_all(
            f"SELECT * FROM rep_failures WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?",
            (*params, limit),
            max_rows=MAX_EVIDENCE_PAGE,
        )
        return [failure_json(row) for row in rows]

    async def failure_count(self, peer_id: str) -> int:
        row = await self.db.fetch_one("SELECT count(*) AS n FROM rep_failures WHERE peer_id = ?", (peer_id,))
        return 0 if row is None else int(row["n"])

    # ------------------------------------------------------------ writes (one transaction each)

    async def note_job(self, peer_id: str, family: str, work_mpx_steps: float) -> PeerHistory:
        """A user's job ran on ``peer_id`` (the first worker); its history counts it. The new history."""
        async with self._lock:
            state = self.state(peer_id, family)
            new = replace(state, history=state.history.after_job())
            counters = self._bump({"jobs": 1, "job_mpx_steps": work_mpx_steps})
            async with self.db.transaction() as tx:
                await save_peer(tx, peer_id, family, new)
                await save_counters(tx, counters)
            self._commit_peers({(peer_id, family): new})
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
                    await save_peer(tx, peer_id, family, state)
                await save_counters(tx, counters)
            self._commit_peers(peers)
            self._counters = counters
            self._notify()

    async def note_check_compute(self, runs: int, work_mpx_steps: float, *, skipped: int = 0) -> None:
        """Extra runs made for checks (and checks skipped for want of a checker or capacity)."""
        async with self._lock:
            counters = self._bump({"check_runs": runs, "check_mpx_steps": work_mpx_steps, "checks_skipped": skipped})
            async with self.db.transaction() as tx:
                await save_counters(tx, counters)
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
            banned = {peer for peer, ban in bans.items() if in_force(ban, now)}
            void_now = bool(check.blamed) and not blame_stands(check.credited, check.blamed, banned)
            newly_banned: list[str] = []
            async with self.db.transaction() as tx:
                evidence_id = await insert_evidence(tx, "check", check, now)
                await insert_receipts(tx, evidence_id, check.receipts, receipts)
                touched: set[tuple[str, str]] = set()
                outcomes = [(peer, False) for peer in check.credited] + [(peer, True) for peer in check.blamed]
                for peer, blamed in outcomes:
                    key = (peer, check.model_family)
                    state = peers.get(key, PeerState())
                    if blamed and void_now:  # neutral, as a withdrawn blame is (see withdraw_blames)
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
                    if ban and not in_force(bans.get(peer), now):
                        bans[peer] = await impose_ban(
                            tx, peer, bans.get(peer), now, self.config, "failed checks", evidence_id
                        )
                        newly_banned.append(peer)
                # another receipt of the same worker for the same job id, seen earlier: proof
                for receipt in receipts:
                    for earlier in await receipts_for(tx, receipt.worker_peer_id, receipt.job_id, evidence_id):
                        if equivocation(receipt, earlier) and not in_force(bans.get(receipt.worker_peer_id), now):
                            worker = receipt.worker_peer_id
                            bans[worker] = await impose_ban(
                                tx, worker, bans.get(worker), now, self.config, "equivocation", evidence_id
                            )
                            newly_banned.append(worker)
                if void_now:
                    reason = f"decided by banned {', '.join(sorted(set(check.credited) & banned))}"
                    await mark_void(tx, evidence_id, now, reason)
                if newly_banned:
                    await withdraw_blames(tx, newly_banned, peers, bans, touched, now, self.config)
                for peer, family in touched:
                    await save_peer(tx, peer, family, peers[(peer, family)])
                await save_counters(tx, counters)
            self._commit_peers({key: peers[key] for key in touched})
            self._bans, self._counters = bans, counters
            self._notify()
            return evidence_id

    async def record_failures(self, failures: Sequence[TryFailure]) -> list[int]:
        """Store tries that failed by the worker's doing and their consequences (scores, bans); the row ids.

        One transaction for all. A cheat (it signed a result that is not the job's) counts as a blame: in the score,
        in the ban test (:func:`~lpnode.reputation.scoring.after_failure`) and in the policy's history (its next
        jobs are all checked, and it is probed as a suspect); its receipt is kept when it verifies as the peer's own,
        the evidence a third party can check. The other classes lower the score only.
        """
        for failure in failures:
            if failure.fault not in FAILURE_CLASSES:
                raise ReputationError(f"not a failure class: {failure.fault!r}")
        if not failures:
            return []
        async with self._lock:
            now = self.clock()
            peers = dict(self._peers)
            bans = dict(self._bans)
            touched: set[tuple[str, str]] = set()
            newly_banned: list[str] = []
            ids: list[int] = []
            async with self.db.transaction() as tx:
                for failure in failures:
                    failure_id = await insert_failure(tx, failure, _own_receipt(failure), now)
                    ids.append(failure_id)
                    peer, key = failure.peer_id, (failure.peer_id, failure.model_family)
                    state = peers.get(key, PeerState())
                    cheat = failure.fault == "cheat"
                    evidence, ban = after_failure(state.evidence, now, self.config, fault=failure.fault)
                    peers[key] = replace(
                        state,
                        evidence=evidence,
                        history=state.history.after_blame() if cheat else state.history,
                        failed_tries=state.failed_tries + 1,
                        cheats=state.cheats + cheat,
                    )
                    touched.add(key)
                    if ban and not in_force(bans.get(peer), now):
                        bans[peer] = await impose_ban(
                            tx, peer, bans.get(peer), now, self.config, "signed wrong results", None, failure_id
                        )
                        newly_banned.append(peer)
                if newly_banned:  # its word no longer decides others' blames, as after any ban
                    await withdraw_blames(tx, newly_banned, peers, bans, touched, now, self.config)
                for peer, family in touched:
                    await save_peer(tx, peer, family, peers[(peer, family)])
            self._commit_peers({key: peers[key] for key in touched})
            self._bans = bans
            self._notify()
            return ids

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
                evidence_id = await insert_evidence(tx, "equivocation", check, now)
                await insert_receipts(tx, evidence_id, (a, b), (ra, rb))
                if not in_force(bans.get(worker), now):
                    bans[worker] = await impose_ban(
                        tx, worker, bans.get(worker), now, self.config, "equivocation", evidence_id
                    )
                    await withdraw_blames(tx, [worker], peers, bans, touched, now, self.config)
                for peer, fam in touched:
                    await save_peer(tx, peer, fam, peers[(peer, fam)])
            self._commit_peers({key: peers[key] for key in touched})
            self._bans = bans
            self._notify()
            return evidence_id

    # ------------------------------------------------------------ internals

    def _bump(self, deltas: dict[str, float]) -> dict[str, float]:
        counters = dict(self._counters)
        for name, delta in deltas.items():
            counters[name] += delta
        return counters

    def _commit_peers(self, states: Mapping[tuple[str, str], PeerState]) -> None:
        """Committed states into the mirror: the one place ``_peers`` and its index by peer change."""
        for (peer_id, family), state in states.items():
            self._peers[(peer_id, family)] = state
            self._families.setdefault(peer_id, {})[family] = state

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def _load(self) -> None:
        self._commit_peers(await load_peers(self.db))
        self._bans.update(await load_bans(self.db))
        self._counters.update(await load_counters(self.db, COUNTERS))


async def open_reputation(
    store: Store, *, config: ScoringConfig | None = None, clock: Callable[[], float] = time.time
) -> ReputationStore:
    """The reputation view over an open store (opened with :data:`REPUTATION_MIGRATIONS`), loaded into memory."""
    reputation = ReputationStore(store, config or ScoringConfig(), clock)
    await reputation._load()
    return reputation


def _own_receipt(failure: TryFailure) -> bytes | None:
    """A failed try's receipt if it verifies and its signer is the peer the failure is filed under; else None."""
    if not failure.receipt:
        return None
    try:
        receipt = verify_receipt(failure.receipt)
    except ReceiptRejected:
        return None
    return failure.receipt if receipt.worker_peer_id == failure.peer_id else None


def _verified(data: bytes) -> Receipt:
    try:
        return verify_receipt(data)
    except ReceiptRejected as exc:
        raise ReputationError(f"evidence rests on a receipt that does not verify: {exc}") from exc
