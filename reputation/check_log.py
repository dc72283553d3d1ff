"""What became of a job's spot check, by the try that answered it: ``GET /v1/jobs/{id}/checks``.

A check settles after the user has the answer, so the answer cannot say whether its output was
checked, or found wrong. The record can be asked afterwards. A settled check is evidence in the
reputation store, naming the try's signed receipt, and outlives a restart
(:meth:`~.store.ReputationStore.checks_of_tries`). What the store cannot say is kept here, in
memory, for the most recent tries (:data:`MAX_TRIES`):

* a check is still running (``pending``);
* no check was made, and why (``not_checked``: the policy did not pick this job, the request
  asked for none, no other peer serves the model, too many checks were running);
* a check was started and came to nothing (``lost``: no checker returned a run).

A try this log has forgotten, or never saw (the node restarted since), is ``unknown``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import trio

__all__ = ["MAX_TRIES", "CheckLog", "CheckNote", "CheckState", "check_entry"]

MAX_TRIES = 10_000  # tries remembered; ~100 bytes each


class CheckState(StrEnum):
    PENDING = "pending"
    NOT_CHECKED = "not_checked"
    LOST = "lost"
    SETTLED = "settled"  # the evidence is in the reputation store
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CheckNote:
    state: CheckState
    reason: str = ""  # for people: why not checked, or why the check was lost


class CheckLog:
    """The latest :class:`CheckNote` of each of the last ``max_tries`` tries, by the try's job id."""

    def __init__(self, max_tries: int = MAX_TRIES) -> None:
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, got {max_tries}")
        self.max_tries = max_tries
        self._notes: OrderedDict[str, CheckNote] = OrderedDict()
        self._changed = trio.Event()

    def note(self, job_id: str, state: CheckState, reason: str = "") -> None:
        self._notes[job_id] = CheckNote(state, reason)
        self._notes.move_to_end(job_id)
        while len(self._notes) > self.max_tries:
            self._notes.popitem(last=False)
        self._changed.set()
        self._changed = trio.Event()

    @property
    def changed(self) -> trio.Event:
        """Set at the next :meth:`note`: take it before reading, then wait on it, and no note is missed."""
        return self._changed

    def get(self, job_id: str) -> CheckNote:
        return self._notes.get(job_id, CheckNote(CheckState.UNKNOWN))

    def __len__(self) -> int:
        return len(self._notes)


def check_entry(worker: str, job_id: str, evidence: Sequence[Mapping[str, Any]], note: CheckNote) -> dict[str, Any]:
    """One try's check for the API: its state and, once settled, how its worker came out of it.

    ``evidence``: the store's rows naming the try (:meth:`~.store.ReputationStore.checks_of_tries`).
    ``worker`` is ``blamed`` when a standing row blames it (its output is judged wrong), else ``credited``
    when one credits it (the majority agreed with it), else ``undecided`` (two runs that disagree with no
    third to settle it: ``inconclusive``). A voided row (its blame withdrawn, see docs/verification.md)
    is listed and decides nothing.
    """
    entry: dict[str, Any] = {"job_id": job_id, "worker_peer_id": worker}
    if not evidence:
        state = CheckState.UNKNOWN if note.state is CheckState.SETTLED else note.state  # a store without the row
        return entry | {"state": state.value, "reason": note.reason}
    standing = [row for row in evidence if not row["voided"]]
    if any(worker in row["blamed"] for row in standing):
        worker_role = "blamed"
    elif any(worker in row["credited"] for row in standing):
        worker_role = "credited"
    else:
        worker_role = "undecided"
    rows = [
        {
            "evidence_id": row["id"],
            "at": row["at"],
            "kind": row["kind"],
            "verdict": row["verdict"],
            "peers": row["peers"],
            "blamed": row["blamed"],
            "credited": row["credited"],
            "voided": row["voided"] is not None,
        }
        for row in evidence
    ]
    return entry | {"state": CheckState.SETTLED.value, "worker": worker_role, "evidence": rows}
