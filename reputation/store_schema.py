"""The reputation store's tables: :data:`REPUTATION_MIGRATIONS` (component ``reputation``) and what each table holds.

* ``rep_evidence``: one row per settled check (or equivocation proof): the job
  spec's id, pipeline, model family, overall verdict, who was blamed and who
  credited, and the pairwise verdicts with their metrics (JSON); a row whose
  blame a later-banned peer helped decide is marked voided (kept for audit,
  its blame no longer counted: see :func:`~lpnode.reputation.store_withdraw.withdraw_blames`);
* ``rep_receipts``: every signed receipt a row rests on, as received, so the
  evidence can be checked offline by anyone (``lpnode reputation export``);
* ``rep_peers``: per (peer, model family) the scoring state (decayed good/bad
  counts as of ``at``, and the ban test's ban_good/ban_bad) and the policy's history (jobs, consecutive agreements,
  jobs since the last blame);
* ``rep_bans``: a peer's current or last ban, its expiry, reason and how many
  bans it has had (each doubles the next one's length, except those lifted
  because the blames they rested on were voided);
* ``rep_counters``: compute given to users' jobs and to checks (the overhead figure);
* ``rep_failures``: one row per try of ours that failed by the worker's doing (``node.job_try``'s fault
  classes: it signed a wrong result, broke the protocol, or took the job and dropped it), with the signed
  receipt where a cheat came with one that verifies.
"""

from __future__ import annotations

from lpnode.node.store import Migration

__all__ = ["REPUTATION_MIGRATIONS"]

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
    # Failed tries: a try that failed by the worker's doing lowers its score (a cheat, a signed wrong result, counts
    # as a blame in the ban test too). The rows keep what happened, and a cheat's signed receipt as evidence.
    Migration(
        "reputation",
        4,
        (
            """CREATE TABLE rep_failures (
                id INTEGER PRIMARY KEY,
                at REAL NOT NULL,                                  -- unix seconds, requester's clock
                peer_id TEXT NOT NULL,
                model_family TEXT NOT NULL,
                job_id TEXT NOT NULL,                              -- the try's job id
                outcome TEXT NOT NULL,                             -- node.job_try's Attempt.outcome
                fault TEXT NOT NULL CHECK (fault IN ('cheat', 'violation', 'unproven')),
                detail TEXT NOT NULL,
                receipt BLOB                                       -- a cheat's signed receipt, as received; or NULL
            )""",
            "CREATE INDEX rep_failures_peer ON rep_failures (peer_id, id)",
            "ALTER TABLE rep_peers ADD COLUMN failed REAL NOT NULL DEFAULT 0",  # scoring.Evidence.failed as of `at`
            "ALTER TABLE rep_peers ADD COLUMN failed_tries INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE rep_peers ADD COLUMN cheats INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE rep_bans ADD COLUMN failure_id INTEGER",  # the failed try that banned; NULL: a check did
        ),
    ),
)
