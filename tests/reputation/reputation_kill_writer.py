"""Child process of the kill -9 test: records checks forever, reporting each committed one.

    python reputation_kill_writer.py DB_PATH

Every check blames KEYS[2] and credits KEYS[0] and KEYS[1]; after each commit it
prints ``check <evidence id>`` (flushed), so the parent knows what the database
must hold when it SIGKILLs this process mid-write.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from lpnode.node.job_records import JOB_MIGRATIONS
from lpnode.node.store import open_store
from lpnode.protocol.receipts import verify_receipt
from lpnode.reputation.compare import Verdict
from lpnode.reputation.scoring import ScoringConfig
from lpnode.reputation.store import REPUTATION_MIGRATIONS, CheckEvidence, model_family, open_reputation

from tests.reputation.receipt_factory import KEYS, signed

# bans would stop nothing here, but a huge threshold keeps every row the same shape
NEVER_BAN = ScoringConfig(ban_min_bad=1e9)


async def write_forever(path: Path) -> None:
    async with open_store(path, [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as store:
        reputation = await open_reputation(store, config=NEVER_BAN)
        n = 0
        while True:
            n += 1
            receipts = [signed(KEYS[0], b"good%d" % n), signed(KEYS[1], b"good%d" % n), signed(KEYS[2], b"bad%d" % n)]
            spec = verify_receipt(receipts[0]).spec
            evidence_id = await reputation.record_check(
                CheckEvidence(
                    spec=spec,
                    model_family=model_family(spec.model_id),
                    verdict=Verdict.DISAGREE,
                    receipts=receipts,
                    blamed=(KEYS[2].peer_id,),
                    credited=(KEYS[0].peer_id, KEYS[1].peer_id),
                    detail=[{"peers": [KEYS[0].peer_id, KEYS[2].peer_id], "verdict": "disagree", "pad": "x" * 500}],
                )
            )
            print(f"check {evidence_id}", flush=True)


if __name__ == "__main__":
    trio.run(write_forever, Path(sys.argv[1]))
