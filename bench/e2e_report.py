"""The Markdown for docs/benchmarks.md from ``bench/e2e.py``'s JSON lines, one section a run."""

from __future__ import annotations

import json
from pathlib import Path

from e2e_probes import FINE_PARTS


def report(path: Path) -> str:
    lines: list[str] = []
    for r in map(json.loads, path.read_text().splitlines()):
        raw = r["bare_ms"] or r["device_ms"]
        raw_name = "bare diffusers call" if r["bare_ms"] else "pool device stage"
        over = r["network_ms"] - r["direct_ms"]
        lines += [
            f"**{r['setup']}**: {r['model']}, {r['size']}×{r['size']}, {r['steps']} step(s), on {r['device']} "
            f"({r['cores']} cores, Python {r['python']}, torch {r['torch']}), {r['date']}; "
            f"median of {r['repeats']} jobs each, alternating; PNG {r['png_bytes'] / 1000:.0f} kB.",
            "",
            "| one job at a time | ms | ÷ direct `pool.run` |",
            "|---|---|---|",
        ]
        if r["bare_ms"]:
            lines.append(
                f"| bare diffusers call (raw inference, PIL out) | {r['bare_ms']} | {r['bare_ms'] / r['direct_ms']:.2f} |"
            )
        lines += [
            f"| direct `await pool.run` (device {r['device_ms']} + output stage {r['encode_ms']}) | {r['direct_ms']} | 1.00 |",
            f"| `POST /text-to-image` through requester → worker | {r['network_ms']} | {r['network_ms'] / r['direct_ms']:.2f} |",
            f"| the worker's `run_ms` in the signed receipt | {r['receipt_run_ms']} | {r['receipt_run_ms'] / r['direct_ms']:.2f} |",
            "",
            f"Network + protocol overhead: {over:.1f} ms (medians; median of paired differences "
            f"{r['paired_overhead_ms']} ms) = **{100 * over / raw:.1f} %** of the {raw_name} ({raw} ms). "
            f"An authenticated `GET /v1/node` on the requester takes {r['rpc_get_ms']} ms.",
        ]  # fmt: skip
        if b := r["breakdown_ms"]:
            lines += [
                "",
                f"Measured inside the same jobs (probe stamps): the network job minus the worker's own `pool.run` "
                f"is **{b['overhead']} ms = {100 * b['overhead'] / raw:.1f} %** of the {raw_name}.",
                "",
                "| part of a network job (probe stamps, medians) | ms |",
                "|---|---|",
                f"| RPC: HTTP + FastAPI + JSON in the requester, outside `run_job` | {b['rpc']} |",
                f"| before the run: open stream, QuoteRequest → Quote → Accept, request check | {b['before_run']} |",
                f"| worker `pool.run`: device stage {b['device']} + output stage {b['encode']} + queue/threads | {b['pool_run']} |",
                f"| after the run: receipt signed, Result sent, receipt checked by the requester | {b['after_run']} |",
                f"| output transfer ({r['png_bytes'] / 1000:.0f} kB, chunked, sha256 checked) | {b['transfer']} |",
                f"| after the transfer: outcome checks, back to the RPC handler | {b['after_transfer']} |",
            ]  # fmt: skip
        if f := r.get("fine_ms"):
            lines += ["", "| finer parts of a network job (probe stamps, medians) | ms |", "|---|---|"]
            lines += [f"| {FINE_PARTS[key]} | {f[key]} |" for key in FINE_PARTS]
            lines.append(f"| sum of the finer parts but `pool.run` | {round(sum(f[key] for key in FINE_PARTS), 2)} |")
            spares = r.get("spare_stream_ttl_s", "default")
            lines += [
                "",
                f"Spare job streams (`spare_stream_ttl_s` {spares}): "
                f"{f.get('jobs_on_spares', 0)} of {r['repeats']} timed jobs ran on a stream opened ahead.",
            ]
        lines += [
            "",
            f"Jobs per second, tiny-sdxl {r['stream_size']}×{r['stream_size']}, 1 step, {r['stream_jobs']} jobs, "
            f"{r['concurrency']} in flight: direct `pool.run` {r['direct_jobs_per_s']}/s, through the network "
            f"{r['network_jobs_per_s']}/s ({r['network_jobs_per_s'] / r['direct_jobs_per_s']:.2f}× direct)"
            + (
                f"; {r['network_failures']} network jobs failed: {r['first_failure']}"
                if r.get("network_failures")
                else ""
            )
            + ".",
            "",
        ]
    return "\n".join(lines)
