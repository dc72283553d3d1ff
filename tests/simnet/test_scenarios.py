"""Small whole-network scenarios on the in-memory backend, in virtual time, asserting the issue's outcomes.

Each run is the production node stack (gossip, directory, quotes, jobs,
receipts; spot checks and reputation stores where the workload verifies) for tens of nodes over a minute or two of virtual time; a run takes
a few seconds of real time. Results are cached per module so several tests
can read one run.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
from pathlib import Path

import pytest
import trio
from lpnode.simnet import scenarios
from lpnode.simnet.cli import main
from lpnode.simnet.report import PLOTS, REPUTATION_PLOTS, write_report
from lpnode.simnet.runner import SimResult, run_scenario
from lpnode.simnet.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from lpnode.simnet.workload import plan_jobs

PROPAGATION_TARGET_S = 1.0  # the foundation issue's p95 target for an advert to reach every node


def small(name: str, *, scale: float = 0.25, duration_s: float = 40.0, **changes: object) -> Scenario:
    scenario = load_scenario(scenarios.path(name)).scaled(scale)
    return dataclasses.replace(scenario, duration_s=duration_s, **changes)  # type: ignore[arg-type]


@functools.cache
def churn_run() -> SimResult:
    # 20 % of the workers churn, and faster than the bundled file so several leave mid-run
    scenario = small("churn", duration_s=60.0)
    groups = tuple(
        dataclasses.replace(g, up_s=20.0, down_s=10.0) if g.behaviour == "churn" else g for g in scenario.nodes
    )
    return run_scenario(dataclasses.replace(scenario, nodes=groups))


def test_bundled_scenarios_load_and_unknown_keys_are_refused() -> None:
    assert scenarios.names() == ["baseline", "cheaters", "churn", "flash_crowd", "large", "partition_heal"]
    for name in scenarios.names():
        assert load_scenario(scenarios.path(name)).worker_count >= 20
    with pytest.raises(ScenarioError, match="unknown key"):
        parse_scenario({"nodes": [{"count": 2, "gpus": "4090"}]})
    with pytest.raises(ScenarioError, match="unknown GPU profile"):
        parse_scenario({"nodes": [{"count": 2, "gpu": "voodoo2"}]})


def test_workload_is_planned_from_the_seed_alone_and_flash_crowds_add_jobs() -> None:
    scenario = load_scenario(scenarios.path("flash_crowd"))
    a = plan_jobs(scenario.workload, scenario.duration_s, seed=4)
    assert [(j.at_s, j.requester, j.request) for j in a] == [
        (j.at_s, j.requester, j.request) for j in plan_jobs(scenario.workload, scenario.duration_s, seed=4)
    ]
    in_flash = sum(1 for j in a if 40 <= j.at_s < 60)
    assert in_flash > 5 * sum(1 for j in a if 80 <= j.at_s < 100)


def test_under_20_percent_churn_at_least_99_percent_of_jobs_complete() -> None:
    result = churn_run()
    m = result.metrics
    churners = sum(g.count for g in result.scenario.nodes if g.behaviour == "churn")
    assert churners / result.scenario.worker_count == pytest.approx(0.2)
    assert min(s.online_workers for s in result.recorder.samples) < result.scenario.worker_count  # someone left
    assert m["jobs"]["submitted"] >= 40
    assert m["jobs"]["success_rate"] >= 0.99, m["jobs"]
    assert m["jobs"]["bad_outputs_accepted"] == 0


def test_advert_propagation_p95_is_under_the_foundation_target() -> None:
    adverts = churn_run().metrics["adverts"]
    assert adverts["seen"] > 50
    assert adverts["to_all_s"]["p95"] < PROPAGATION_TARGET_S
    assert adverts["reached_all_share"] > 0.9


def test_same_seed_gives_the_same_metrics() -> None:
    scenario = small("baseline", scale=0.2, duration_s=20.0)
    a, b = run_scenario(scenario).metrics, run_scenario(scenario).metrics
    for m in (a, b):
        m["notes"].pop("wall_s")
        m["notes"].pop("started_wall_s")
    assert a["jobs"]["submitted"] > 5
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@functools.cache
def cheaters_run() -> SimResult:
    # the bundled file at a quarter of its size (8 honest workers, 4 always-cheaters of four kinds, one cheating
    # on 20 % of its jobs, 2 requesters, 15 jobs/s): as busy per worker and per requester as the full one. On an
    # idle network the ranking starves a blamed cheater of work before a requester has the evidence to ban it
    # (docs/simnet.md), so the load is part of the scenario
    return run_scenario(small("cheaters", duration_s=40.0))


def test_every_always_cheater_is_banned_and_no_honest_peer_is() -> None:
    result = cheaters_run()
    r = result.metrics["reputation"]
    always = [c for c in r["cheaters"] if c["share"] >= 1.0]
    assert {c["cheat"] for c in always} == {"blank", "other_seed", "half_steps", "other_model"}
    assert r["always_cheaters"] == len(always) >= 4
    for c in always:
        assert c["banned"], c
        assert c["jobs_until_first_ban"] <= 20, c  # users' jobs it delivered before the first ban
    assert r["always_cheaters_banned"] == r["always_cheaters"]
    # honest outputs differ by each card's noise, and the real comparison accepts them; the rare honest blame
    # comes from being outvoted (two other-seed cheaters draw the same wrong picture) and never adds up to a ban
    assert r["honest_banned"] == []
    assert r["honest_checks"] > 100 and r["honest_blames"] <= 0.02 * r["honest_checks"]
    assert all(b["worker"] in result.recorder.worker_cheat for b in r["bans"])
    # overhead is counted: every user job is a first run, checks are extra runs
    assert r["user_jobs"] == result.metrics["jobs"]["completed"]
    assert 0 < r["extra_runs_per_job"] < 2 and r["compute_overhead"] > 0
    assert len(r["trajectory"]["scores"]) == result.scenario.worker_count
    assert result.metrics["jobs"]["success_rate"] == 1.0


def test_runs_with_spot_checks_are_deterministic_for_a_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    # the reputation store (inline SQLite) and comparisons never let the autojump clock move while they work
    # Outside pytest trio's scheduler is not in the deterministic mode hypothesis turns on, and 2 of 3 runs
    # disagreed (s12): run_scenario turns it on itself, so this runs as `lpnode-simnet` does.
    monkeypatch.setattr(trio._core._run, "_ALLOW_DETERMINISTIC_SCHEDULING", False)
    scenario = small("cheaters", scale=0.2, duration_s=10.0)
    a, b = run_scenario(scenario).metrics, run_scenario(scenario).metrics
    for m in (a, b):
        m["notes"].pop("wall_s")
        m["notes"].pop("started_wall_s")
    assert a["reputation"]["checks"] > 5
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING is False  # as it was: other trio runs are untouched


def test_without_verification_cheaters_are_served_and_only_the_oracle_sees_it() -> None:
    scenario = small("cheaters", scale=0.2, duration_s=20.0)
    m = run_scenario(
        dataclasses.replace(scenario, workload=dataclasses.replace(scenario.workload, verification="none"))
    ).metrics
    served_by_cheaters = m["load"]["by_behaviour"].get("cheater", 0)
    assert m["reputation"] is None
    assert m["notes"]["pools"]["cheated_jobs"] >= m["jobs"]["bad_outputs_accepted"] > 0
    assert served_by_cheaters >= m["jobs"]["bad_outputs_accepted"]


def test_reputation_report_and_table(tmp_path: Path) -> None:
    result = cheaters_run()
    written = write_report(tmp_path / "report", result.metrics, result.recorder)
    assert {p.name for p in written} == {"metrics.json", "summary.md", *PLOTS, *REPUTATION_PLOTS}
    for name in REPUTATION_PLOTS:
        assert (tmp_path / "report" / name).read_bytes().startswith(b"\x89PNG")
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| always-cheaters banned | 4 of 4 |" in summary
    table = io.StringIO()
    assert main(["table", str(tmp_path / "report")], out=table) == 0
    assert "| cheaters | " in table.getvalue() and "honest banned" in table.getvalue()
    with pytest.raises(ScenarioError, match="verification"):
        parse_scenario({"workload": {"verification": "sometimes"}})


def test_report_folder_and_command_line(tmp_path: Path) -> None:
    result = churn_run()
    written = write_report(tmp_path / "report", result.metrics, result.recorder)
    assert {p.name for p in written} == {"metrics.json", "summary.md", *PLOTS}
    for path in written:
        assert path.stat().st_size > 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["jobs"]["submitted"] > 0
    assert "success rate" in (tmp_path / "report" / "summary.md").read_text()
    assert (tmp_path / "report" / "throughput.png").read_bytes().startswith(b"\x89PNG")

    out = io.StringIO()
    code = main(
        [
            "run",
            "baseline",
            "--scale",
            "0.1",
            "--duration",
            "10",
            "--quiet",
            "--no-plots",
            "--out",
            str(tmp_path / "cli"),
        ],
        out=out,
    )
    assert code == 0 and "# simnet: baseline" in out.getvalue()
    assert (tmp_path / "cli" / "metrics.json").exists() and not (tmp_path / "cli" / "throughput.png").exists()
    assert main(["run", "no-such-scenario"], out=io.StringIO()) == 2
    table = io.StringIO()
    assert main(["table", str(tmp_path / "cli")], out=table) == 0
    assert "| baseline | memory | 4 + 1 |" in table.getvalue()


@pytest.mark.slow
def test_libp2p_backend_runs_the_same_stacks_over_real_hosts() -> None:
    from lpnode.simnet.libp2p_backend import run_libp2p

    scenario = small("baseline", scale=0.1, duration_s=6.0)  # 4 workers and a requester, 2 processes
    m = run_libp2p(scenario, processes=2).metrics
    assert m["scenario"]["backend"] == "libp2p"
    assert m["notes"]["workers_known_at_start"] == 4  # no job raced the first adverts
    assert m["jobs"]["submitted"] >= 2 and m["jobs"]["success_rate"] == 1.0, m["jobs"]
    assert m["jobs"]["bad_outputs_accepted"] == 0
    assert m["adverts"]["seen"] > 0
    with pytest.raises(ScenarioError, match="no churn"):
        run_libp2p(small("churn"))
