"""What the reputation store holds and is handed: per-peer state, bans, and a settled check's evidence.

Frozen values: the store's in-memory mirror swaps whole objects, so a reader never sees half a change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lpnode.protocol.jobspec import JobSpec

from .compare import Verdict
from .policy import PeerHistory
from .scoring import Evidence

__all__ = ["Ban", "CheckEvidence", "PeerState", "TryFailure", "in_force"]


@dataclass(frozen=True)
class PeerState:
    """What the store knows of one peer for one model family."""

    evidence: Evidence = field(default_factory=Evidence)
    history: PeerHistory = field(default_factory=PeerHistory)
    checks: int = 0
    blames: int = 0  # standing blames (voided ones no longer counted)
    voided: int = 0  # blames withdrawn because a peer that decided them was banned
    failed_tries: int = 0  # tries of ours that failed by its doing (every fault class, cheats included)
    cheats: int = 0  # of those, the ones it signed a wrong result for (each counted as a blame in the ban test)


@dataclass(frozen=True)
class Ban:
    until: float  # unix seconds
    reason: str
    at: float
    bans: int  # this one included
    evidence_id: int | None
    lifted: int = 0  # of those bans, how many were lifted (they do not lengthen the next one)
    lifted_at: float | None = None  # this ban was lifted then (``until`` is set to it); None: not lifted
    failure_id: int | None = None  # the failed try (rep_failures) that tipped the ban test; None: a check did


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


@dataclass(frozen=True)
class TryFailure:
    """A try of ours that failed by the worker's doing (``node.job_try.Attempt`` with a ``fault``)."""

    peer_id: str
    model_family: str
    job_id: str  # the try's job id (each try has its own nonce)
    outcome: str  # the Attempt's outcome: "violation:bad_output", "output_mismatch", "timeout", ...
    fault: str  # "cheat", "violation" or "unproven" (scoring.FAILURE_CLASSES)
    detail: str  # for people
    receipt: bytes = b""  # the signed receipt it sent, where it had one (kept only if it verifies as its own)


def in_force(ban: Ban | None, now: float) -> bool:
    """Whether ``ban`` (a peer's current or last one, or None) still bans at ``now``."""
    return ban is not None and ban.until > now
