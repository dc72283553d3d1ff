"""How fast a model runs, from its recent runs: megapixel-steps per second plus a fixed cost per run.

A run costs a fixed part (text encoding, the scheduler's set-up, the VAE's launch, thread hops)
and a part that grows with the work (pixels × frames × steps). The pool first advertised the
median of work ÷ time over recent runs: measured on small jobs, where the fixed part is most of
the time, it was ~10× below the speed that large jobs see (a tiny preset: 0.24 megapixel-steps/s
measured on 64×64 jobs, 2.7 on 256×256 × 50 steps), so workers quoted large jobs ten times too
long and refused feasible ones as past their deadline (found by the independent JS requester).

:func:`fit_speed` fits ``seconds = overhead + work / speed`` by least squares where the recent
runs differ enough in size to tell the two parts apart, and falls back to the median ratio
(overhead 0) where they do not, or where the fit makes no physical sense (a negative part,
e.g. from a slow first compile). The speed is the marginal one: what the advert carries, and
what ranks peers for the work of a job; the worker adds the overhead to its own ETAs.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MIN_RUNS_TO_FIT = 4  # fewer cannot tell a fixed cost from noise
MIN_WORK_SPREAD = 2.0  # largest ÷ smallest job in the window before the two parts can be told apart


@dataclass(frozen=True)
class Speed:
    mpx_steps_per_s: float  # marginal speed; 0.0 = not measured
    overhead_s: float  # fixed seconds per run; 0.0 where not told apart

    def seconds(self, work_mpx_steps: float) -> float | None:
        """Expected seconds for ``work_mpx_steps``; None when nothing was measured."""
        if self.mpx_steps_per_s <= 0:
            return None
        return self.overhead_s + work_mpx_steps / self.mpx_steps_per_s


UNMEASURED = Speed(0.0, 0.0)


def fit_speed(runs: Sequence[tuple[float, float]]) -> Speed:
    """The speed of recent ``runs``, each (work in megapixel-steps, seconds on the device)."""
    runs = [(work, seconds) for work, seconds in runs if work > 0 and seconds > 0]
    if not runs:
        return UNMEASURED
    ratio = Speed(statistics.median(work / seconds for work, seconds in runs), 0.0)
    works = [work for work, _ in runs]
    if len(runs) < MIN_RUNS_TO_FIT or max(works) < MIN_WORK_SPREAD * min(works):
        return ratio
    mean_w = statistics.fmean(works)
    mean_t = statistics.fmean(seconds for _, seconds in runs)
    spread = sum((work - mean_w) ** 2 for work in works)
    slope = sum((work - mean_w) * (seconds - mean_t) for work, seconds in runs) / spread  # seconds per mpx-step
    overhead = mean_t - slope * mean_w
    if slope <= 0 or overhead < 0:
        return ratio
    return Speed(1.0 / slope, overhead)


class RunMemo:
    """Each model's recent runs (megapixel-steps, seconds), kept in a small JSON file across restarts.

    A restarted worker knew no speed: it quoted every job the default ETA, took one it could not
    finish by its deadline and failed it after running it (QA), where a peer with measurements had
    refused it. Keys name the preset, the device and the dtype, so runs on another GPU never count.
    A missing file is an empty memo; so is a damaged one, with a WARNING (as for the other small
    state files: ``advert-seq``, ``receipt-seq``), rewritten whole at the next save.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self, *, warn: bool = True) -> dict[str, list[tuple[float, float]]]:
        """The memo's runs by key; ``warn=False``: damage goes unreported (said once already, at start)."""
        if self.path is None:
            return {}
        try:
            found = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            if warn:
                self._damaged(f"{type(exc).__name__}: {exc}")
            return {}
        if not isinstance(found, dict):
            if warn:
                self._damaged(f"a JSON {type(found).__name__}, not an object")
            return {}
        kept = {str(key): runs for key, value in found.items() if (runs := _runs(value))}
        if warn and len(kept) < len(found):
            self._damaged(f"{len(found) - len(kept)} of its {len(found)} entries unreadable", dropped="those entries")
        return kept

    def _damaged(self, what: str, dropped: str = "it") -> None:
        log.warning(
            "the models' measured speeds in %s are damaged (%s); ignoring %s: the models are measured again",
            self.path,
            what,
            dropped,
        )

    def save(self, runs: Mapping[str, Sequence[tuple[float, float]]]) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.path.with_suffix(".tmp")
            temp.write_text(json.dumps({key: [list(r) for r in value] for key, value in runs.items() if value}))
            temp.replace(self.path)
        except OSError as exc:  # a lost memo costs the next start its measurements, nothing else
            log.warning("could not keep the models' measured speeds in %s: %s", self.path, exc)


def _runs(value: object) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        return []
    runs = []
    for item in value:
        if (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in item)
        ):
            runs.append((float(item[0]), float(item[1])))
    return runs


__all__ = ["MIN_RUNS_TO_FIT", "MIN_WORK_SPREAD", "UNMEASURED", "RunMemo", "Speed", "fit_speed"]
