"""Many-node simulations on one machine: the production node logic on the in-memory network, in virtual time.

What it offers:

* :func:`run_scenario` / :func:`simulate` — run a :class:`Scenario` (from :func:`load_scenario`,
  or the bundled files in ``simnet/scenarios/``) and get a :class:`SimResult` with its metrics;
* :func:`write_report` — ``metrics.json``, ``summary.md`` and PNG plots for a result;
* :class:`SimPool` / :func:`open_sim_pool` — a model pool on a simulated GPU (:data:`PROFILES`),
  usable wherever the node takes an ``InferencePool``;
* ``lpnode.simnet.libp2p_backend.run_libp2p`` — the same stacks on real libp2p hosts over several
  processes, in real time (imported on demand: it loads py-libp2p);
* ``python -m lpnode.simnet run <scenario> --out DIR`` — the command line (:func:`main`).
"""

from .cli import main
from .gpus import PROFILES, GpuProfile, profile
from .report import write_report
from .runner import Progress, SimResult, run_scenario, simulate
from .scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from .sim_pool import SimPool, SimPoolConfig, open_sim_pool

__all__ = [
    "PROFILES",
    "GpuProfile",
    "Progress",
    "Scenario",
    "ScenarioError",
    "SimPool",
    "SimPoolConfig",
    "SimResult",
    "load_scenario",
    "main",
    "open_sim_pool",
    "parse_scenario",
    "profile",
    "run_scenario",
    "simulate",
    "write_report",
]
