"""Human-readable output of the client commands: aligned tables from the RPC API's JSON.

A cell may hold several lines (one per address, device or model); a row is as
tall as its tallest cell, so related values stay on one line across columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

GIB = 1024**3
PRICE_UNIT = "micro-credits per megapixel-step"
# Upscaling and frame interpolation draw no noise: the seed every spec carries (and its receipt signs)
# plays no role in their output, so showing one would suggest a way to vary it that does not exist.
SEEDLESS_PIPELINES = frozenset({"upscale", "frame-interpolation"})

Cell = Sequence[str]


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], *, gap: int = 2) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], *(len(line) for line in cell), 0)
    out = [_line(headers, widths, gap)]
    for row in rows:
        height = max((len(cell) for cell in row), default=1) or 1
        for k in range(height):
            out.append(_line([cell[k] if k < len(cell) else "" for cell in row], widths, gap))
    return "\n".join(out)


def _line(values: Sequence[str], widths: Sequence[int], gap: int) -> str:
    return (" " * gap).join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()


def uses_seed(pipeline: object) -> bool:
    """Whether ``pipeline`` (its wire name) draws noise from the seed, so the seed is worth showing."""
    return str(pipeline) not in SEEDLESS_PIPELINES


# what each output media type is saved as; another name keeps the bytes as they are (no conversion)
MEDIA_SUFFIXES = {"image/png": (".png", "a PNG image"), "video/mp4": (".mp4", "an H.264 MP4 video")}


def format_note(path: Any, media_type: str) -> str:
    """``", a PNG image whatever its name says"`` when ``path``'s suffix is not its format's ("" if it is)."""
    suffix, what = MEDIA_SUFFIXES.get(media_type, ("", ""))
    if not suffix or str(path).lower().endswith(suffix):
        return ""
    return f", {what} whatever its name says"


_WORKER_ROLES = {
    "credited": "the output agrees with the majority",
    "blamed": "the output is judged wrong; do not use it",
    "undecided": "two runs disagree and no third peer settled it",
}


def _check_state(check: Mapping[str, Any], record_id: str) -> str:
    """A job command's line on its output's spot check, just after the answer (usually not settled yet)."""
    state = check.get("state")
    if state == "pending":
        return f"pending: another peer runs it too; `lpnode job {record_id}` shows the verdict"
    if state == "settled":
        return check_text(check).split(": ", 1)[1]
    reason = check.get("reason")
    return str(state).replace("_", " ") + (f" ({reason})" if reason else "")


def check_text(check: Mapping[str, Any]) -> str:
    """One network job's spot check, for ``lpnode job ID`` (shape in ``node/rpc_checks.py``)."""
    head = f"{str(check.get('job_id', '?'))[:16]}… on {short_peer_id(str(check.get('worker_peer_id', '?')))}: "
    state = check.get("state")
    if state != "settled":
        reason = check.get("reason") or ("copies running on other peers" if state == "pending" else "")
        return head + str(state).replace("_", " ") + (f" ({reason})" if reason else "")
    rows = check.get("evidence") or []
    verdicts = ", ".join(f"{row.get('verdict')}, evidence #{row.get('evidence_id')}" for row in rows)
    others = len({peer for row in rows for peer in row.get("peers") or []} - {check.get("worker_peer_id")})
    role = str(check.get("worker", "?"))
    return head + f"{role} — {_WORKER_ROLES.get(role, role)} ({verdicts}; {others} other peer(s) ran it)"


def short_peer_id(peer_id: str) -> str:
    """``12D3KooW…a1b2c3``: enough to tell peers apart, short enough for a table."""
    return peer_id if len(peer_id) <= 16 else f"{peer_id[:8]}…{peer_id[-6:]}"


def strip_p2p(addr: str) -> str:
    return addr.split("/p2p/", 1)[0]


def device_text(device: Mapping[str, Any]) -> str:
    if device.get("kind") == "cpu":
        return str(device["name"])
    return f"{device['name']} ({device['vram_total_bytes'] / GIB:.1f} GiB)"


def model_text(model: Mapping[str, Any]) -> str:
    return f"{model['model_id']} {model['pipeline']} ({'warm' if model['warm'] else 'cold'})"


def age_text(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def peers_table(peers: Sequence[Mapping[str, Any]]) -> str:
    if not peers:
        return "no peers known yet"
    rows = [
        [
            [short_peer_id(p["peer_id"])],
            [strip_p2p(a) for a in p["listen_addrs"]] or ["-"],
            [device_text(d) for d in p["gpus"]] or ["-"],
            [model_text(m) for m in p["models"]] or ["-"],
            [str(m["price_per_mpx_step"]) for m in p["models"]] or ["-"],
            [f"{p['queue_depth']}/{p['queue_capacity']}"],
            [age_text(p["advert_age_ms"])],
        ]
        for p in peers
    ]
    headers = ["PEER", "ADDRESSES", "GPUS", "MODELS", "PRICE", "QUEUE", "AGE"]
    return f"{table(headers, rows)}\n\n{len(peers)} peer(s); price in {PRICE_UNIT}"


def node_table(node: Mapping[str, Any], rpc_url: str) -> str:
    gossip = node["gossip"]
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(gossip["adverts_dropped_by_reason"].items()))
    models = [f"{model_text(m)} at {m['price_per_mpx_step']}" for m in node["models"]]
    config = node["config"]
    rows: list[tuple[str, Sequence[str]]] = [
        ("peer id", [node["peer_id"]]),
        ("version", [f"{node['software_version']} (protocol {node['protocol_version']})"]),
        ("uptime", [age_text(int(node["uptime_s"] * 1000))]),
        ("listening", node["listen_addrs"] or ["(none)"]),
        ("rpc", [rpc_url]),
        ("devices", [device_text(d) for d in node["devices"]] or ["(none yet)"]),
        ("models", models or ["none (requester only, or models not loaded yet)"]),
        ("queue", [f"{node['queue_depth']}/{node['queue_capacity']} jobs"]),
        ("peers", [f"{node['known_peers']} known, {node['connected_peers']} connected"]),
        (
            "adverts",
            [
                f"{gossip['adverts_published']} published, {gossip['adverts_accepted']} accepted, "
                f"{gossip['adverts_dropped']} dropped" + (f" ({dropped})" if dropped else ""),
                f"{gossip['peers_expired']} peers expired",
            ],
        ),
        ("bootstrap", config["bootstrap"] or ["(none)"]),
        ("mdns", ["on" if config["mdns"] else "off"]),
        ("data dir", [config["data_dir"]]),
    ]
    width = max(len(name) for name, _ in rows)
    lines = []
    for name, values in rows:
        for k, value in enumerate(values):
            lines.append(f"{name if k == 0 else '':<{width}}  {value}")
    if node["models"]:
        lines.append(f"\nprice in {PRICE_UNIT}")
    return "\n".join(lines)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def models_table(answer: Mapping[str, Any]) -> str:
    """``lpnode models``: the models a running node serves."""
    if answer.get("requester_only"):
        return "this node serves no models (requester only: started with --serve none)"
    rows = [
        (
            [m["name"]],
            list(m["pipelines"]),
            ["loading" if m["loading"] else ("warm" if m["warm"] else "cold") + (" (pinned)" if m["pinned"] else "")],
            [
                _gib(m["vram_measured_bytes"] if m["vram_measured_bytes"] is not None else m["vram_estimate_bytes"])
                + ("" if m["vram_measured_bytes"] is not None else " est.")
            ],
            [f"{m['speed_mpx_steps_per_s']:.2f}" if m["speed_mpx_steps_per_s"] else "-"],
            [f"{m['queued']}+{m['running']}"],
            [(m["weights_sha256"][:12] + "…") if m["weights_sha256"] else "-"],
            [m["problem"][:60] or ("compiled" if m["compiled"] else "")],
        )
        for m in answer["models"]
    ]
    headers = ("MODEL", "PIPELINES", "STATE", "VRAM", "MPX-STEPS/S", "QUEUE", "WEIGHTS", "NOTE")
    return table(headers, rows) + f"\n\n{len(rows)} model(s); queue = waiting+running"


def available_table(rows: Sequence[Mapping[str, Any]], weights_dir: Any) -> str:
    """``lpnode models --available``: every preset, and whether its weights are here."""
    lines = [
        (
            [r["name"]],
            list(r["pipelines"]),
            ["built in (tiny)" if r["tiny"] else ("present" if r["weights_sha256"] else "missing")],
            [_gib(r["vram_bytes"]) + " est."],
            [(r["weights_sha256"][:12] + "…") if r["weights_sha256"] else "-"],
        )
        for r in rows
    ]
    text = table(("PRESET", "PIPELINES", "WEIGHTS", "VRAM", "SHA256"), lines)
    missing = [r for r in rows if not r["tiny"] and not r["weights_sha256"]]
    if missing:
        text += f"\n\nreal presets look for weights under {weights_dir}; for example:\n  " + missing[0]["problem"]
    return text


# ---------------------------------------------------------------- jobs


def size_text(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.1f} MiB"


def attempts_text(attempts: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{short_peer_id(str(a.get('peer_id', '?')))} {a.get('outcome', '?')}" for a in attempts)


def job_summary(saved: Sequence[Any], checks: Sequence[Mapping[str, Any]] = (), record_id: str = "") -> str:
    """What a job command prints: per output, who made it, at what price, with which seed, its receipt, and
    where its spot check stands (``checks``: ``GET /v1/jobs/{record_id}/checks``'s entries).

    ``saved`` are :class:`lpnode.node.cli_follow.Saved` (typed loosely here to keep this module import-light).
    """
    check_of = {str(check.get("job_id")): check for check in checks}
    lines: list[str] = []
    total = 0
    for item in saved:
        job = item.job
        price = int(job.get("price", 0))
        total += price
        note = format_note(item.path, getattr(item, "media_type", ""))
        lines.append(f"saved {item.path} ({size_text(item.size_bytes)}{note})")
        lines.append(f"  worker   {job.get('worker_peer_id', '?')}")
        lines.append(f"  model    {job.get('model_id') or item.receipt.model_id}")
        lines.append(f"  price    {price} micro-credits")
        if uses_seed(item.receipt.spec.pipeline):
            lines.append(f"  seed     {item.seed if item.seed is not None else item.receipt.spec.seed}")
        attempts = job.get("attempts") or []
        if len(attempts) > 1:
            lines.append(f"  attempts {len(attempts)}: {attempts_text(attempts)}")
        lines.append(f"  receipt  {item.receipt_path} (signature verified, seq {item.receipt.seq})")
        if (check := check_of.get(str(job.get("job_id")))) is not None:
            lines.append(f"  check    {_check_state(check, record_id)}")
    if len(saved) > 1:
        lines.append(f"{len(saved)} outputs, {total} micro-credits in all")
    return "\n".join(lines)


def _record_peer(record: Mapping[str, Any]) -> str:
    result = record.get("result")
    if isinstance(result, Mapping) and result.get("jobs"):
        return ", ".join(sorted({short_peer_id(str(j.get("worker_peer_id", "?"))) for j in result["jobs"]}))
    peer_id = (record.get("progress") or {}).get("peer_id")
    return short_peer_id(str(peer_id)) if peer_id else "-"


def _progress_text(progress: Mapping[str, Any]) -> str:
    """``15% (step 3/20)``; without a step count (none reported, e.g. a job interrupted before its
    worker said anything) only what is known, never a made-up ``step 0/0``."""
    fraction, total = float(progress.get("fraction") or 0), int(progress.get("total") or 0)
    if total:
        return f"{fraction * 100:.0f}% (step {progress.get('step', 0)}/{total})"
    return f"{fraction * 100:.0f}%" if fraction else "none reported"


def _progress_cell(progress: Mapping[str, Any]) -> str:
    fraction, total = float(progress.get("fraction") or 0), int(progress.get("total") or 0)
    return f"{fraction * 100:.0f}%" if fraction or total else "-"


def jobs_table(records: Sequence[Mapping[str, Any]]) -> str:
    """``lpnode jobs``: one row per job record, newest first as the node answers."""
    if not records:
        return "no jobs asked of this node yet (the jobs it served for others: lpnode served)"
    rows = [
        (
            [str(r.get("id", "?"))],
            [str(r.get("kind", "?"))],
            [str(r.get("state", "?"))],
            [_progress_cell(r.get("progress") or {})],
            [_record_peer(r)],
            [str((r.get("error") or {}).get("message", ""))[:60]],
        )
        for r in records
    ]
    return table(("ID", "KIND", "STATE", "PROGRESS", "WORKER", "ERROR"), rows) + f"\n\n{len(rows)} job(s)"


def _output_pipeline(record: Mapping[str, Any]) -> str:
    """The pipeline that made a record's outputs: its kind, or a workflow's last step's."""
    if record.get("kind") == "workflow":
        steps = (record.get("request") or {}).get("steps") or [{}]
        return str(steps[-1].get("pipeline", "?")) if isinstance(steps[-1], Mapping) else "?"
    return str(record.get("kind", "?"))


def _readable_json(value: Any) -> str:
    """``value`` as JSON, readable in any script, what a terminal could act on (controls, bidi overrides)
    escaped: ASCII escapes made a French or Japanese prompt unreadable here (QA s11)."""
    text = json.dumps(value, ensure_ascii=False)
    return "".join(
        c if c.isprintable() else f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}" for c in text
    )


def job_text(
    record: Mapping[str, Any],
    step_records: Sequence[Mapping[str, Any]] = (),
    checks: Sequence[Mapping[str, Any]] = (),
) -> str:
    """``lpnode job ID``: one record, readable; ``step_records``: a workflow's steps' records, oldest first;
    ``checks``: its outputs' spot checks (``GET /v1/jobs/{id}/checks``)."""
    lines = [
        f"id        {record.get('id', '?')}",
        f"kind      {record.get('kind', '?')}",
        f"state     {record.get('state', '?')}",
    ]
    if record.get("parent_id"):
        lines.append(f"workflow  {record['parent_id']}")
    progress = record.get("progress") or {}
    request = record.get("request") or {}
    steps = request.get("steps") if record.get("kind") == "workflow" else None
    if progress and isinstance(steps, list) and steps:
        # its step counter is the running step's own ("step 3/3" of a 4-step chain's last step): the share is the news
        lines.append(f"progress  {float(progress.get('fraction') or 0) * 100:.0f}% of {len(steps)} step(s)")
    elif progress:
        lines.append(f"progress  {_progress_text(progress)}")
    if request:
        lines.append("request")
    for key in sorted(request):
        lines.append(f"  {key} = {_readable_json(request[key])}")
    result = record.get("result")
    if isinstance(result, Mapping):
        seeded = uses_seed(_output_pipeline(record))
        for media in result.get("images") or []:
            lines.append(f"output    {media.get('url')}" + (f" (seed {media.get('seed')})" if seeded else ""))
        for job in result.get("jobs") or []:
            lines.append(
                f"job       {job.get('job_id', '?')[:16]}… on {job.get('worker_peer_id', '?')} "
                f"({job.get('model_id', '?')}, {job.get('price', '?')} micro-credits)"
            )
        if not step_records:
            for step_id in result.get("steps") or []:
                lines.append(f"step      {step_id}")
    lines += [f"check     {check_text(check)}" for check in checks]
    for number, step in enumerate(step_records, 1):
        lines.append(f"step {number:<4} {step.get('id', '?')}  {step.get('kind', '?')}  {step.get('state', '?')}")
    error = record.get("error")
    if isinstance(error, Mapping):
        lines.append(
            f"error     {error.get('message', '?')} (HTTP {error.get('status', '?')} {error.get('error', '?')})"
        )
    attempts = record.get("attempts") or []
    if attempts:
        lines.append(f"attempts  {attempts_text(attempts)}")
        # why each try that did not deliver ended: it was in the API's record only (QA)
        lines += [
            f"          {short_peer_id(str(a.get('peer_id', '?')))}: {str(a['detail'])[:160]}"
            for a in attempts
            if a.get("detail") and a.get("outcome") != "done"
        ]
    return "\n".join(lines)
