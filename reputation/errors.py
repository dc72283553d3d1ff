"""Errors of the reputation package, under the project's :class:`~lpnode.protocol.errors.LpnodeError` root.

    LpnodeError
    └── ReputationError
        ├── OutputUndecodable     an output to compare is not a bounded, decodable PNG/MP4
        └── BadVerification       a ``verification`` choice that no method understands

Invalid thresholds or policy settings raise :class:`~lpnode.protocol.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Literal

from lpnode.protocol.errors import LpnodeError

Side = Literal["a", "b"]


class ReputationError(LpnodeError):
    """Root of the reputation package's errors."""


class OutputUndecodable(ReputationError):
    """One side of a comparison could not be decoded within the bounds; ``side`` says which.

    The caller knows who sent each side: an undecodable output that matched its
    signed receipt is evidence against that worker, not an inconclusive check.
    """

    def __init__(self, side: Side, detail: str) -> None:
        super().__init__(f"output {side}: {detail}")
        self.side: Side = side
        self.detail = detail


class BadVerification(ReputationError, ValueError):
    """A ``verification`` string that is not ``none``, ``spot`` or ``redundant:K`` with K in range."""
