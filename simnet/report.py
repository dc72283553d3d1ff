"""The report folder of a run: ``metrics.json``, ``summary.md`` and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .metrics import HISTOGRAM_MS, Recorder

PLOTS = ("advert_propagation.png", "job_latency.png", "throughput.png", "load_spread.png")
REPUTATION_PLOTS = ("reputation_trajectory.png", "time_to_ban.png")  # runs whose requesters verify


def write_report(out: Path, metrics: dict[str, Any], recorder: Recorder, *, plots: bool = True) -> list[Path]:
    """Write the report into ``out`` (created); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json", out / "summary.md"]
    written[0].write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    written[1].write_text(summary_markdown(metrics))
    if plots:
        written += _plots(out, metrics, recorder)
        if metrics.get("reputation") is not None:
            written += _reputation_plots(out, metrics)
    return written


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f} %"


def summary_markdown(m: dict[str, Any]) -> str:
    s, jobs, load, adverts = m["scenario"], m["jobs"], m["load"], m["adverts"]
    lat = jobs["latency_s"]
    notes = m["notes"]
    lines = [
        f"# simnet: {s['name']}",
        "",
        f"{s['workers']} workers, {s['requesters']} requesters, {s['duration_s']:.0f} virtual s of workload, "
        f"seed {s['seed']}; wall-clock cost {notes.get('wall_s', 0):.1f} s.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| jobs submitted / completed | {jobs['submitted']} / {jobs['completed']} |",
        f"| success rate | {_pct(jobs['success_rate'])} |",
        f"| failures | {', '.join(f'{k}: {v}' for k, v in jobs['failures'].items()) or 'none'} |",
        f"| latency p50 / p95 / p99 | {_ms(lat['p50'])} / {_ms(lat['p95'])} / {_ms(lat['p99'])} |",
        f"| jobs retried | {jobs['retried']} ({jobs['attempts_per_job'] or 0:.2f} attempts per job) |",
        f"| attempt outcomes | {', '.join(f'{k}: {v}' for k, v in sorted(jobs['attempt_outcomes'].items()))} |",
        f"| throughput | {jobs['throughput_per_s'] or 0:.2f} jobs/s |",
        f"| bad outputs accepted (oracle) | {jobs['bad_outputs_accepted']} of {jobs['outputs_checked']} |",
        f"| load spread (Gini) / busiest worker's share | {load['gini']:.2f} / {_pct(load['max_share'])} |",
        f"| idle workers | {load['idle_workers']} |",
        f"| jobs by GPU | {', '.join(f'{k}: {v}' for k, v in sorted(load['by_gpu'].items()))} |",
        f"| jobs by behaviour | {', '.join(f'{k}: {v}' for k, v in sorted(load['by_behaviour'].items()))} |",
        f"| adverts reaching every online node | {_pct(adverts['reached_all_share'])} of {adverts['seen']} |",
        f"| advert time to all p50 / p95 / max | {_ms(adverts['to_all_s']['p50'])} / {_ms(adverts['to_all_s']['p95'])} / {_ms(adverts['to_all_s']['max'])} |",
        f"| advert delivery p50 / p95 / p99 | {_ms(adverts['delivery_s']['p50'])} / {_ms(adverts['delivery_s']['p95'])} / {_ms(adverts['delivery_s']['p99'])} |",
        f"| model loads / evictions | {notes['pools']['loads']} / {notes['pools']['evictions']} |",
        f"| cheated outputs produced | {notes['pools']['cheated_jobs']} |",
        f"| jobs dropped by flaky workers | {notes['flaky_drops']} |",
        "",
        *_reputation_lines(m.get("reputation")),
    ]
    return "\n".join(lines)


def _reputation_lines(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return ["Requesters did not verify (workload.verification = none): no reputation figures.", ""]
    lines = [
        f"## Reputation (verification `{r['verification']}`, one store per requester)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| users' jobs / settled checks / skipped | {r['user_jobs']} / {r['checks']} / {r['checks_skipped']} |",
        f"| extra runs per user job | {_num(r['extra_runs_per_job'])} |",
        f"| check compute / users' compute | {_pct(r['compute_overhead'])} |",
        f"| always-cheaters banned | {r['always_cheaters_banned']} of {r['always_cheaters']} |",
        f"| time to first ban p50 / max | {_secs(r['time_to_ban_s']['p50'])} / {_secs(r['time_to_ban_s']['max'])} |",
        f"| users' jobs a cheater delivered before its first ban p50 / max"
        f" | {_num(r['jobs_until_ban']['p50'])} / {_num(r['jobs_until_ban']['max'])} |",
        f"| honest peers: blames / peers blamed / checks passed or taken | {r['honest_blames']}"
        f" / {r['honest_peers_blamed']} / {r['honest_checks']} |",
        f"| honest peers banned | {len(r['honest_banned'])} |",
        "",
        "| worker | cheat | share | jobs delivered | before first ban | first ban (virtual s) | banned by | blames |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cheaters"]:
        lines.append(
            f"| {c['worker']} | {c['cheat']} | {c['share']:.0%} | {c['jobs_served']} | {c['jobs_until_first_ban']}"
            f" | {_secs(c['first_ban_s'])} | {c['banned_by']} | {c['blames']} |"
        )
    lines.append("")
    return lines


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}".rstrip("0").rstrip(".")


def _secs(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f} s"


def reputation_table(runs: list[dict[str, Any]]) -> str:
    """One Markdown row per run whose requesters verified: overhead, detection, false blames."""
    lines = [
        "| scenario | checks | extra runs / job | check compute | always-cheaters banned | time to ban p50 / max"
        " | cheater jobs before ban p50 / max | honest blames | honest banned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in runs:
        r = m.get("reputation")
        if r is None:
            continue
        lines.append(
            f"| {m['scenario']['name']} | {r['checks']} | {_num(r['extra_runs_per_job'])}"
            f" | {_pct(r['compute_overhead'])} | {r['always_cheaters_banned']} of {r['always_cheaters']}"
            f" | {_secs(r['time_to_ban_s']['p50'])} / {_secs(r['time_to_ban_s']['max'])}"
            f" | {_num(r['jobs_until_ban']['p50'])} / {_num(r['jobs_until_ban']['max'])}"
            f" | {r['honest_blames']} | {len(r['honest_banned'])} |"
        )
    return "\n".join(lines) + "\n"


def comparison_table(runs: list[dict[str, Any]]) -> str:
    """One Markdown row per run's metrics: the table docs/simnet.md shows."""
    lines = [
        "| scenario | backend | workers + requesters | virtual s | jobs | success | latency p50 / p95 | retried"
        " | jobs/s | Gini | advert to all p95 | bad outputs accepted | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in runs:
        s, jobs, lat = m["scenario"], m["jobs"], m["jobs"]["latency_s"]
        lines.append(
            f"| {s['name']} | {s.get('backend', 'memory')} | {s['workers']} + {s['requesters']} | {s['duration_s']:.0f}"
            f" | {jobs['submitted']} | {_pct(jobs['success_rate'])} | {_ms(lat['p50'])} / {_ms(lat['p95'])}"
            f" | {jobs['retried']} | {jobs['throughput_per_s'] or 0:.2f} | {m['load']['gini']:.2f}"
            f" | {_ms(m['adverts']['to_all_s']['p95'])} | {jobs['bad_outputs_accepted']} | {m['notes'].get('wall_s', 0):.0f} |"
        )
    return "\n".join(lines) + "\n"


def _plots(out: Path, m: dict[str, Any], rec: Recorder) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out / name for name in PLOTS]

    # advert propagation: CDF of per-delivery delays from the 1 ms histogram
    fig, ax = plt.subplots(figsize=(6, 4))
    total = sum(rec.advert_histogram)
    if total:
        last = max(i for i, c in enumerate(rec.advert_histogram) if c)
        xs, ys, running = [], [], 0
        for ms in range(last + 1):
            running += rec.advert_histogram[ms]
            xs.append(ms)
            ys.append(running / total)
        ax.plot(xs, ys, label="each delivery")
        to_all = sorted(a.last_delay_s * 1000 for a in rec.adverts.values() if a.reached >= a.online - 1)
        if to_all:
            ax.plot(to_all, [(i + 1) / len(to_all) for i in range(len(to_all))], label="time to reach all")
        ax.legend()
    ax.set_xlabel(f"ms after issue (capped at {HISTOGRAM_MS} ms)")
    ax.set_ylabel("share")
    ax.set_title("Advert propagation")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    # job latency distribution
    fig, ax = plt.subplots(figsize=(6, 4))
    latencies = [j.latency_s for j in rec.jobs if j.ok]
    if latencies:
        ax.hist(latencies, bins=50)
    ax.set_xlabel("seconds from submit to verified result")
    ax.set_ylabel("jobs")
    ax.set_title(f"Job latency ({len(latencies)} completed)")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    # throughput and online workers over time
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = m["jobs"]["throughput_bins"]
    width = bins["bin_s"]
    counts = bins["completed"]
    ax.bar([i * width for i in range(len(counts))], [c / width for c in counts], width=width, align="edge", alpha=0.6)
    ax.set_xlabel("virtual s")
    ax.set_ylabel("completed jobs/s")
    twin = ax.twinx()
    twin.plot([s.t_s for s in rec.samples], [s.online_workers for s in rec.samples], color="C1", label="online workers")
    twin.plot([s.t_s for s in rec.samples], [s.jobs_in_flight for s in rec.samples], color="C2", label="jobs in flight")
    twin.legend(loc="upper right")
    for event in m["notes"].get("events", []):
        ax.axvline(event["at_s"], color="grey", linestyle="--")
    ax.set_title("Throughput over time")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)

    # load spread: jobs per worker, sorted
    fig, ax = plt.subplots(figsize=(6, 4))
    per_worker = sorted(m["load"]["per_worker"], reverse=True)
    ax.bar(range(len(per_worker)), per_worker)
    ax.set_xlabel("workers, busiest first")
    ax.set_ylabel("jobs completed")
    ax.set_title(f"Load spread (Gini {m['load']['gini']:.2f})")
    fig.tight_layout()
    fig.savefig(paths[3], dpi=100)
    plt.close(fig)
    return paths


def _reputation_plots(out: Path, m: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = m["reputation"]
    paths = [out / name for name in REPUTATION_PLOTS]
    cheat = {c["worker"]: c for c in r["cheaters"]}

    # each worker's score (mean over requesters) over time: honest grey, cheaters coloured
    fig, ax = plt.subplots(figsize=(7, 4.5))
    t = r["trajectory"]["t_s"]
    labelled: set[str] = set()
    for w, scores in enumerate(r["trajectory"]["scores"]):
        if w in cheat:
            c = cheat[w]
            label = f"{c['cheat']} {c['share']:.0%}"
            style = {"color": f"C{sorted({x['cheat'] for x in r['cheaters']}).index(c['cheat'])}", "linewidth": 1.5}
            if c["share"] < 1.0:
                style["linestyle"] = "--"
        else:
            label, style = "honest", {"color": "grey", "linewidth": 0.6, "alpha": 0.5}
        ax.plot(t, scores, label=None if label in labelled else label, **style)  # type: ignore[arg-type]
        labelled.add(label)
    for ban in r["bans"]:
        ax.axvline(ban["at_s"], color="red", alpha=0.15, linewidth=0.8)
    ax.set_xlabel("virtual s (red: a requester bans someone)")
    ax.set_ylabel("score (lower bound), mean over requesters")
    ax.set_title("Reputation trajectories")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    # time to ban each cheater: every requester's ban of it (dots) and the users' jobs it delivered before
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [f"w{c['worker']} {c['cheat']} {c['share']:.0%}" for c in r["cheaters"]]
    for row, c in enumerate(r["cheaters"]):
        times = [b["at_s"] for b in r["bans"] if b["worker"] == c["worker"]]
        ax.scatter(times, [row] * len(times), color="C3", s=18, zorder=3)
        if c["first_ban_s"] is not None:
            ax.annotate(
                f"{c['jobs_until_first_ban']} jobs",
                (c["first_ban_s"], row),
                textcoords="offset points",
                xytext=(4, 5),
                fontsize="x-small",
            )
        else:
            ax.annotate("not banned", (0, row), textcoords="offset points", xytext=(4, 5), fontsize="x-small")
    ax.set_yticks(range(len(names)), names, fontsize="small")
    ax.set_xlim(left=0, right=max([m["scenario"]["duration_s"], *(b["at_s"] for b in r["bans"])]))
    ax.set_xlabel("virtual s since the workload started (each dot: one requester's ban)")
    ax.set_title("Time to ban each cheater (label: users' jobs it delivered first)")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


__all__ = ["PLOTS", "REPUTATION_PLOTS", "comparison_table", "reputation_table", "summary_markdown", "write_report"]
