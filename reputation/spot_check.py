"""Verification on the requester's side: spot checks in the background, redundant runs before answering.

:class:`SpotChecker` wraps the job manager's runner (one network job through
``run_job``) and has the same signature, so the manager never knows it is
there. After a job succeeds:

* ``verification: "none"``: nothing more (the job still counts in the peer's history);
* ``"spot"`` (the default): the policy (:class:`~.policy.SpotCheck`, seeded rng)
  decides whether to duplicate. A duplicate is the same spec (params, seed and
  the model that ran) sent as an ordinary job, with a fresh nonce like every
  try, to a checker in good standing other than the first worker. It runs in
  the checker's own nursery: the user's answer is not delayed;
* ``"redundant:K"``: K peers in all run the job *before* the answer; the
  majority's result is returned (:class:`NoMajority` when there is none).

Outputs are compared (:func:`~.compare.compare_receipts`, then pixels with
:func:`~.compare.compare_outputs` in a thread); two that do not agree bring
in a third peer and the odd one out is blamed (:func:`~.policy.resolve`).
Every settled check, with all its signed receipts, goes to the
:class:`~.store.ReputationStore`, which updates scores and bans; the compute
spent on copies is counted there too (the overhead figure). So does every try,
of a user's job or of a copy, that failed by its worker's doing
(``Attempt.fault``: a signed wrong result, a protocol violation, a job taken and
dropped), before the answer: the next job's ranking sees it.

Bounded: at most ``max_pending`` background checks at once (more are skipped
and counted), and at most three peers per spot check.

Off the answer's path: the store's bookkeeping of an ordinary job (its count in the
peer's history, a skipped check) is written in the background too, in batches a
moment after the answer, so a job's answer waits for no reputation write and its own
record's writes do not queue behind one; the plan reads the history with the jobs
not yet written counted in (``_unsaved_jobs``), so it decides exactly as if they were.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from lpnode.node.daemon import Node
from lpnode.node.job_requester import Attempt, JobFailed, JobOutcome, JobRequest, ProgressCallback
from lpnode.node.rpc_job_bodies import JobOptions
from lpnode.protocol.errors import LpnodeError
from lpnode.protocol.jobs import Progress

from .check_log import CheckLog, CheckState, check_entry
from .compare import Comparison, Thresholds, Verdict, compare_outputs, compare_receipts, worst_verdict
from .errors import OutputUndecodable
from .policy import (
    Candidate,
    NoVerification,
    PeerHistory,
    PlanContext,
    Redundant,
    Resolution,
    SpotCheckPolicy,
    choose_checker,
    choose_suspect,
    parse_verification,
    resolve,
)
from .store import CheckEvidence, ReputationStore, TryFailure, model_family

__all__ = ["DEFAULT_MAX_PENDING", "NoMajority", "Runner", "SpotChecker", "compare_pair", "open_spot_checker"]

log = logging.getLogger(__name__)

# The manager's JobRunner, spelled out here (job_runner imports this module's user, not the other way)
Runner = Callable[[JobRequest, Mapping[str, bytes], JobOptions, ProgressCallback], Awaitable[JobOutcome]]
DEFAULT_MAX_PENDING = 16  # background checks at once; each holds a job's inputs and outputs in memory
SPOT_PEERS = 3  # first worker, checker, tie-breaker
NOTE_DELAY_S = 0.05  # a job's bookkeeping waits this long after its answer (see _flush_notes)


class NoMajority(JobFailed):
    """``redundant:K``: the peers that ran the job do not agree in a majority, so no result is trusted."""


def _ignore_progress(peer_id: str, message: Progress) -> None:
    """Copies report no progress to the user: they are not the user's job."""


async def compare_pair(a: JobOutcome, b: JobOutcome, thresholds: Thresholds, *, in_thread: bool = True) -> Comparison:
    """The verdict on two runs of one spec: from the receipts when they settle it, else from decoded pixels.

    ``in_thread=False`` decodes and compares on the event loop: for tiny outputs under a virtual clock
    (simnet), where a worker thread would let time jump while it runs.
    """
    quick = compare_receipts(a.receipt, b.receipt)
    if quick is not None:
        return quick
    results: list[Comparison] = []
    for hashes, other, out_a, out_b in zip(a.receipt.outputs, b.receipt.outputs, a.outputs, b.outputs, strict=True):
        compare = functools.partial(
            compare_outputs,
            a.spec.pipeline,
            out_a,
            out_b,
            hashes.media_type,
            thresholds,
            claimed_pixels=(hashes.pixel_sha256, other.pixel_sha256),
        )
        try:
            # decoding and SSIM take milliseconds to seconds of CPU: off the event loop
            if in_thread:
                result = await trio.to_thread.run_sync(compare)
            else:
                await trio.lowlevel.checkpoint()
                result = compare()
        except OutputUndecodable as exc:
            # the bytes matched a signed receipt, so an undecodable output is its signer's doing
            result = Comparison(Verdict.DISAGREE, f"undecodable_{exc.side}")
        results.append(result)
    verdict = worst_verdict(r.verdict for r in results)
    return next(r for r in results if r.verdict is verdict)


def _detail(pair: frozenset[str], comparison: Comparison) -> dict[str, Any]:
    metrics = None
    if comparison.median is not None and comparison.worst is not None:
        metrics = {"median": dataclasses.asdict(comparison.median), "worst": dataclasses.asdict(comparison.worst)}
    return {
        "peers": sorted(pair),
        "verdict": comparison.verdict.value,
        "reason": comparison.reason,
        "frames": comparison.frames,
        "metrics": metrics,
    }


def _addr_prefix(addrs: Sequence[str]) -> str:
    """The /24 of the first IPv4 address (or the /48 of an IPv6 one): same prefix, maybe same owner."""
    for addr in addrs:
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] == "ip4":
            return ".".join(parts[2].split(".")[:3])
        if len(parts) > 2 and parts[1] == "ip6":
            return ":".join(parts[2].split(":")[:3])
    return ""


@dataclass
class _Run:
    """The runs of one job gathered for a verdict, and the pairwise verdicts so far."""

    outcomes: dict[str, JobOutcome]  # by worker peer id, first worker first
    verdicts: dict[frozenset[str], Comparison]


class SpotChecker:
    """A :data:`Runner` that verifies what the wrapped runner returns; from :func:`open_spot_checker`."""

    def __init__(
        self,
        node: Node,
        runner: Runner,
        reputation: ReputationStore,
        nursery: trio.Nursery,
        *,
        policy: SpotCheckPolicy,
        thresholds: Thresholds,
        rng: random.Random,
        max_pending: int,
        compare_in_thread: bool = True,
    ) -> None:
        self.node = node
        self.runner = runner
        self.reputation = reputation
        self.policy = policy
        self.thresholds = thresholds
        self.rng = rng
        self.max_pending = max_pending
        self.compare_in_thread = compare_in_thread
        self._nursery = nursery
        self._pending = 0  # background checks (bounded by max_pending)
        self._tasks = 0  # background work of any kind: checks and bookkeeping
        self._unsaved_jobs: dict[tuple[str, str], int] = {}  # noted jobs not yet in the store, by (peer, family)
        self._unsaved_notes: list[tuple[str, str, float]] = []  # (peer, family, mpx-steps) for the next flush
        self._unsaved_skips = 0
        self._flush_scheduled = False
        self._idle = trio.Event()
        self._idle.set()
        self.check_log = CheckLog()  # what became of each recent try's check, for check_status

    # ------------------------------------------------------------ the Runner

    async def __call__(
        self, job: JobRequest, inputs: Mapping[str, bytes], options: JobOptions, on_progress: ProgressCallback
    ) -> JobOutcome:
        method = parse_verification(options.verification, self.policy)
        outcome = await self._run(job, inputs, options, on_progress)
        first = outcome.worker_peer_id
        if first == self.node.peer_id:
            self.check_log.note(
                outcome.job_id, CheckState.NOT_CHECKED, "this node ran it: checking itself proves nothing"
            )
            return outcome
        family = model_family(outcome.model_id)
        history = self._history(first, family)  # before this job: the policy's "first jobs" count
        plan = None
        if not isinstance(method, NoVerification):
            candidates = self._candidates(outcome, {first, *_failed_peers(outcome)})
            job_context = PlanContext(first, history, outcome.spec.pipeline, candidates)
            plan = method.plan(job_context, self.rng)
        check = plan is not None and plan.copies > 0 and not isinstance(method, Redundant)
        skipped = check and (plan is None or not plan.peers or self._pending >= self.max_pending)
        self._note_soon(first, family, outcome.work_mpx_steps, skipped=skipped)
        if plan is None:
            self.check_log.note(outcome.job_id, CheckState.NOT_CHECKED, "the request asked for verification none")
            return outcome
        if isinstance(method, Redundant):  # settled before the answer: the store has it
            return await self._redundant(method.k, job, inputs, options, outcome, plan.peers)
        if not check:
            self.check_log.note(outcome.job_id, CheckState.NOT_CHECKED, "not picked: spot checks take a share of jobs")
            return outcome
        if skipped:
            why = (
                "no other peer in good standing serves the model" if not plan.peers else "too many checks were running"
            )
            self.check_log.note(outcome.job_id, CheckState.NOT_CHECKED, why)
            return outcome
        self.check_log.note(outcome.job_id, CheckState.PENDING)
        self._pending += 1
        self._spawn(self._background, job, inputs, options, outcome, [*plan.peers, *self._suspect(outcome, plan.peers)])
        return outcome

    async def _run(
        self, job: JobRequest, inputs: Mapping[str, bytes], options: JobOptions, on_progress: ProgressCallback
    ) -> JobOutcome:
        """The wrapped runner, with the tries that failed by their worker's doing recorded, succeeded or not."""
        try:
            outcome = await self.runner(job, inputs, options, on_progress)
        except JobFailed as exc:
            await self._record_failures(exc.attempts)
            raise
        await self._record_failures(outcome.attempts)
        return outcome

    async def _record_failures(self, attempts: Sequence[Attempt]) -> None:
        """Tries that failed by their worker's doing, into the store now (not in the background: they are rare, and
        the next job's ranking must see them). This node's own worker is never recorded, as it is never checked."""
        failures = [
            TryFailure(a.peer_id, model_family(a.model_id), a.job_id, a.outcome, a.fault, a.detail, a.receipt)
            for a in attempts
            if a.fault and a.peer_id != self.node.peer_id
        ]
        if not failures:
            return
        try:
            await self.reputation.record_failures(failures)
        except LpnodeError as exc:  # a lost record is a lost sample, never the user's problem
            log.warning("could not record %d failed tr(ies) in the reputation store: %s", len(failures), exc)
        except Exception:
            log.exception("recording %d failed tr(ies) in the reputation store crashed", len(failures))
        for failure in failures:
            log.info(
                "try %s on %s failed by its doing (%s): %s",
                failure.job_id[:12],
                failure.peer_id,
                failure.fault,
                failure.outcome,
            )

    async def check_status(self, tries: Sequence[tuple[str, str]], *, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """Each try's check, as ``GET /v1/jobs/{id}/checks`` shows it (:func:`~.check_log.check_entry`): the
        store's evidence once settled, else what this node remembers (``tries``: (worker peer id, job id)).

        ``wait_s``: while a check is ``pending``, wait up to this long for it to end (a long-poll); then
        the entries as they stand.
        """
        with trio.move_on_after(wait_s):
            while True:
                changed = self.check_log.changed  # before reading: a check ending meanwhile still wakes us
                entries = await self._check_entries(tries)
                if not any(entry["state"] == CheckState.PENDING for entry in entries):
                    return entries
                await changed.wait()
        return await self._check_entries(tries)

    async def _check_entries(self, tries: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        settled = await self.reputation.checks_of_tries(tries)
        return [
            check_entry(worker, job_id, settled.get(job_id, []), self.check_log.get(job_id)) for worker, job_id in tries
        ]

    async def wait_idle(self) -> None:
        """Until no background work is running: checks and bookkeeping (tests, and a clean shutdown)."""
        await self._idle.wait()

    def _history(self, peer_id: str, family: str) -> PeerHistory:
        """The store's history of ``peer_id`` with the jobs noted but not yet written counted in."""
        history = self.reputation.history(peer_id, family)
        for _ in range(self._unsaved_jobs.get((peer_id, family), 0)):
            history = history.after_job()
        return history

    def _spawn(self, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        self._tasks += 1
        self._idle = trio.Event()
        self._nursery.start_soon(self._tracked, work, *args)

    async def _tracked(self, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await work(*args)
        finally:
            self._tasks -= 1
            if self._tasks == 0:
                self._idle.set()

    def _note_soon(self, peer_id: str, family: str, work_mpx_steps: float, *, skipped: bool) -> None:
        """Count the job in ``peer_id``'s history (and a skipped check) in the store, soon, in a batch."""
        key = (peer_id, family)
        self._unsaved_jobs[key] = self._unsaved_jobs.get(key, 0) + 1
        self._unsaved_notes.append((peer_id, family, work_mpx_steps))
        self._unsaved_skips += int(skipped)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._spawn(self._flush_notes)

    async def _flush_notes(self) -> None:
        # A moment after the answer, so the job's own record and output writes (same database) never
        # queue behind this one; whatever was noted meanwhile goes in the same transaction.
        try:
            await trio.sleep(NOTE_DELAY_S)
        finally:
            # Shielded, also when the node stops: a few ms of SQLite, so no answered job goes uncounted
            # (an uncounted job would only mean one check more, but the count is the policy's input).
            with trio.CancelScope(shield=True):
                notes, skips = self._unsaved_notes, self._unsaved_skips
                self._unsaved_notes, self._unsaved_skips, self._flush_scheduled = [], 0, False
                try:
                    await self.reputation.note_jobs(notes, skipped=skips)
                except LpnodeError as exc:
                    log.warning("could not note %d job(s) in the reputation store: %s", len(notes), exc)
                except Exception:  # a bug here must not take the node down with the checker's nursery
                    log.exception("noting %d job(s) in the reputation store crashed", len(notes))
                finally:
                    for peer_id, family, _ in notes:
                        key = (peer_id, family)
                        if left := self._unsaved_jobs[key] - 1:
                            self._unsaved_jobs[key] = left
                        else:
                            del self._unsaved_jobs[key]

    async def _background(
        self,
        job: JobRequest,
        inputs: Mapping[str, bytes],
        options: JobOptions,
        outcome: JobOutcome,
        checkers: Sequence[str],
    ) -> None:
        try:
            run = await self._settle(job, inputs, options, outcome, checkers, SPOT_PEERS)
            if await self._record(run) is None:
                self.check_log.note(outcome.job_id, CheckState.LOST, "no checker returned a run of it")
            else:
                self.check_log.note(outcome.job_id, CheckState.SETTLED)
        except LpnodeError as exc:
            # a lost check is a lost sample, never the user's problem: log it and carry on
            log.warning("spot check of job %s on %s lost: %s", outcome.job_id[:12], outcome.worker_peer_id, exc)
            self.check_log.note(outcome.job_id, CheckState.LOST, str(exc))
        except Exception:
            log.exception("spot check of job %s crashed", outcome.job_id[:12])
            self.check_log.note(outcome.job_id, CheckState.LOST, "internal error; see the node's log")
        finally:
            self._pending -= 1

    async def _redundant(
        self,
        k: int,
        job: JobRequest,
        inputs: Mapping[str, bytes],
        options: JobOptions,
        outcome: JobOutcome,
        checkers: Sequence[str],
    ) -> JobOutcome:
        run = await self._settle(job, inputs, options, outcome, checkers, k + 1)
        resolution = await self._record(run)
        if resolution is None or not resolution.credited:
            attempts = [a for o in run.outcomes.values() for a in o.attempts]
            raise NoMajority(f"redundant:{k}: {len(run.outcomes)} peer(s) ran the job without a majority", attempts)
        winner = outcome.worker_peer_id if outcome.worker_peer_id in resolution.credited else resolution.credited[0]
        answer = run.outcomes[winner]
        # Every peer that ran it is in the answer's attempts (the job record shows them), the winner's last:
        # a user who asked for k copies sees how many ran, also when fewer peers than that could.
        others = [a for peer, o in run.outcomes.items() if peer != winner for a in o.attempts]
        return dataclasses.replace(answer, attempts=(*others, *answer.attempts))

    async def _settle(
        self,
        job: JobRequest,
        inputs: Mapping[str, bytes],
        options: JobOptions,
        first: JobOutcome,
        checkers: Sequence[str],
        max_peers: int,
    ) -> _Run:
        """Run copies on ``checkers`` side by side, then one more peer at a time while there is no majority."""
        run = _Run({first.worker_peer_id: first}, {})
        copies: list[JobOutcome | None] = [None] * len(checkers)
        # Peers that failed a copy of this job (refused, gone, bad result): never asked again for this check. A
        # checker whose copy just failed is often down; a second copy there costs another timeout and counts the
        # one lost check twice (review s10, item 6).
        refused: set[str] = set()

        async def one(index: int, peer: str) -> None:
            # nor to the other checkers of this round: a copy refused by its checker would fall back on
            # one of them, run there twice, and the second run be thrown away (one vote fewer)
            others = {other for other in checkers if other != peer}
            copies[index], failed_here = await self._copy(
                job, inputs, options, first, peer, exclude={*run.outcomes, *others}
            )
            refused.update(failed_here)

        async with trio.open_nursery() as nursery:
            for index, peer in enumerate(checkers):
                nursery.start_soon(one, index, peer)
        for copy in copies:
            if copy is not None and copy.worker_peer_id not in run.outcomes:
                run.outcomes[copy.worker_peer_id] = copy
        resolution = await self._resolve(run)
        while (resolution is None or resolution.need_more) and len(run.outcomes) < max_peers:
            failed = {*_failed_peers(first), *refused}
            candidates = self._candidates(first, {*run.outcomes, *failed})
            pick = choose_checker(
                candidates, first.worker_peer_id, self.rng, exclude=frozenset({*run.outcomes, *failed})
            )
            if pick is None:
                break
            copy, failed_here = await self._copy(
                job, inputs, options, first, pick.peer_id, exclude={*run.outcomes, *refused}
            )
            refused.update(failed_here)
            if copy is None or copy.worker_peer_id in run.outcomes:
                break
            run.outcomes[copy.worker_peer_id] = copy
            resolution = await self._resolve(run)
        return run

    async def _copy(
        self,
        job: JobRequest,
        inputs: Mapping[str, bytes],
        options: JobOptions,
        first: JobOutcome,
        peer: str,
        *,
        exclude: set[str],
    ) -> tuple[JobOutcome | None, set[str]]:
        """The same spec as ``first`` (its model bound), an ordinary job to ``peer`` (others if it refuses).

        The copy's outcome (None when it failed or ran another spec), and the peers whose attempts at it failed:
        ``peer`` itself when the copy failed without an attempt to show for it.
        """
        same = dataclasses.replace(job, model_id=first.model_id)
        # never back to a peer that already failed this job (it may be gone), nor to those that ran it
        avoid = sorted({*exclude, *_failed_peers(first), *options.avoid, self.node.peer_id} - {peer})
        copy_options = options.model_copy(update={"prefer": [peer], "avoid": avoid, "allow_local": False})
        try:
            outcome = await self._run(same, inputs, copy_options, _ignore_progress)
        except LpnodeError as exc:
            log.info("check copy of job %s on %s failed: %s", first.job_id[:12], peer, exc)
            await self.reputation.note_check_compute(0, 0.0, skipped=1)
            attempts = exc.attempts if isinstance(exc, JobFailed) else ()
            return None, {a.peer_id for a in attempts if a.outcome != "done"} or {peer}
        await self.reputation.note_check_compute(1, outcome.work_mpx_steps)
        if outcome.spec != first.spec:  # cannot happen through run_job; a guard for other runners
            log.warning("check copy of job %s ran another spec; dropped", first.job_id[:12])
            return None, {*_failed_peers(outcome), outcome.worker_peer_id}
        return outcome, _failed_peers(outcome)

    async def _resolve(self, run: _Run) -> Resolution | None:
        peers = list(run.outcomes)
        if len(peers) < 2:
            return None
        for i, a in enumerate(peers):
            for b in peers[i + 1 :]:
                pair = frozenset((a, b))
                if pair not in run.verdicts:
                    run.verdicts[pair] = await compare_pair(
                        run.outcomes[a], run.outcomes[b], self.thresholds, in_thread=self.compare_in_thread
                    )
        return resolve(peers, {pair: c.verdict for pair, c in run.verdicts.items()})

    async def _record(self, run: _Run) -> Resolution | None:
        """Store the check (when at least two peers ran it); the resolution, None with a single run."""
        resolution = await self._resolve(run)
        if resolution is None:
            return None
        if resolution.blamed:
            verdict = Verdict.DISAGREE
        elif resolution.credited:
            verdict = Verdict.AGREE
        else:
            verdict = Verdict.INCONCLUSIVE
        peers = list(run.outcomes)
        first = run.outcomes[peers[0]]
        await self.reputation.record_check(
            CheckEvidence(
                spec=first.spec,
                model_family=model_family(first.model_id),
                verdict=verdict,
                receipts=[o.receipt_bytes for o in run.outcomes.values()],
                blamed=resolution.blamed,
                credited=resolution.credited,
                detail=[_detail(pair, c) for pair, c in run.verdicts.items()],
            )
        )
        if resolution.blamed:
            log.info("check of job %s: blamed %s", first.job_id[:12], ", ".join(resolution.blamed))
        return resolution

    def _suspect(self, outcome: JobOutcome, checkers: Sequence[str]) -> list[str]:
        """A suspect to probe with this check (``SpotCheckConfig.suspect_probes``), as a list of 0 or 1."""
        if len(checkers) + 2 > SPOT_PEERS:
            return []  # the check is full already
        family = model_family(outcome.model_id)
        exclude = frozenset({outcome.worker_peer_id, *checkers, *_failed_peers(outcome)})
        candidates = [(c, self._history(c.peer_id, family)) for c in self._candidates(outcome, set(exclude))]
        pick = choose_suspect(candidates, self.rng, exclude=exclude, probes=self.policy.config.suspect_probes)
        return [] if pick is None else [pick.peer_id]

    def _candidates(self, outcome: JobOutcome, exclude: set[str]) -> list[Candidate]:
        """Peers that serve the job's pipeline and model, not banned, with their scores (the first one included,
        so :func:`choose_checker` can tell who is related to it)."""
        family = model_family(outcome.model_id)
        pipeline = outcome.spec.pipeline.value
        out: list[Candidate] = []
        for record in self.node.directory:
            advert = record.advert
            peer = advert.peer_id
            if peer == self.node.peer_id or self.reputation.is_banned(peer):
                continue
            if peer in exclude and peer != outcome.worker_peer_id:
                continue
            if not any(o.pipeline == pipeline and o.model_id == outcome.model_id for o in advert.models):
                continue
            gpu = advert.gpus[0].name if advert.gpus else ""
            out.append(Candidate(peer, self.reputation.score(peer, family), _addr_prefix(advert.listen_addrs), gpu))
        return out


def _failed_peers(outcome: JobOutcome) -> set[str]:
    """Peers whose attempts at this job failed (refused, gone, bad result): not asked to check it.

    A worker that just dropped the job is often down, and its advert outlives it for a while.
    """
    return {a.peer_id for a in outcome.attempts if a.outcome != "done"} - {outcome.worker_peer_id}


@asynccontextmanager
async def open_spot_checker(
    node: Node,
    runner: Runner,
    reputation: ReputationStore,
    *,
    policy: SpotCheckPolicy | None = None,
    thresholds: Thresholds | None = None,
    rng: random.Random | None = None,
    max_pending: int = DEFAULT_MAX_PENDING,
    compare_in_thread: bool = True,
) -> AsyncIterator[SpotChecker]:
    """A checker whose background checks live in its own nursery; leaving cancels those still running.

    ``rng`` defaults to one seeded from the OS: which jobs are checked must not be predictable to workers.
    ``compare_in_thread``: see :func:`compare_pair`.
    """
    async with trio.open_nursery() as nursery:
        checker = SpotChecker(
            node,
            runner,
            reputation,
            nursery,
            policy=policy or SpotCheckPolicy(),
            thresholds=thresholds or Thresholds(),
            rng=rng or random.Random(secrets.randbits(64)),
            max_pending=max_pending,
            compare_in_thread=compare_in_thread,
        )
        try:
            yield checker
        finally:
            nursery.cancel_scope.cancel()
