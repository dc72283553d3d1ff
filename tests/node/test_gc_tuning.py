"""The collector tuning ``lpnode run`` applies once up (``freeze_startup_heap``), in a process of its own."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from lpnode.node.run import YOUNG_COLLECTION_THRESHOLD, freeze_startup_heap

startup = [[i] for i in range(10_000)]  # long-lived containers, as startup leaves them
before = gc.get_freeze_count()
freeze_startup_heap()
assert gc.get_freeze_count() >= before + 10_000, (before, gc.get_freeze_count())
assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
cycle = []
cycle.append(cycle)
del cycle
assert gc.collect() >= 1  # cycles made after the freeze are still found
print("ok")
"""


def test_startup_objects_are_frozen_and_young_collections_are_rarer() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
