"""What a session report says, as plain data computed from the database.

Everything here returns dicts and lists of numbers and strings read from rows (or computed from
them in the open, like a geometric mean); the templates only format. A section without data is
``None`` or an empty list, and the template says so in one line. Each step's summary is read back
through the step's ``summary_type`` dataclass (see :mod:`sessionkit.steps.typed`), never by bare
keys, so that a key an older sessionkit did not store reads as None.
"""

from __future__ import annotations

import math

from ..attention import SDPA_IMPLS, AttentionConfig
from ..costs import session_costs
from ..envinfo import snapshot_data
from ..sessions import get_session, session_steps
from ..timefmt import now_iso, seconds_between
from . import aggregates
from .aggregates import geomean, table_exists

BUILD_KERNEL_KEYS = ("registers", "smem_bytes", "spill_store_bytes", "spill_load_bytes")
TELEMETRY_KEYS = ("power_mean_w", "power_max_w", "energy_j", "temp_max_c", "sm_clock_min_mhz",
                  "sm_clock_max_mhz", "throttled_share", "samples")
PROFILE_KEYS = ("sm_throughput_pct", "dram_throughput_pct", "tensor_pipe_pct",
                "achieved_occupancy_pct", "registers_per_thread", "smem_per_block_bytes",
                "l2_hit_rate_pct", "duration_ms")
SASS_OPCODES = 12  # opcodes shown in the "where the warps stall" table; the rest in one row
REGRESSION_THRESHOLD = 0.05  # a change in median latency smaller than this is called "same"


def config_label(row: dict) -> str:
    """A result row's config as :attr:`~sessionkit.attention.AttentionConfig.label`
    (``bf16 B2 H16 S4096 D128 causal``), followed by a correctness row's layout."""
    label = AttentionConfig.from_row(row).label
    return f"{label} {row['layout']}" if row.get("layout") else label


def _step_metrics(db, step_id: str) -> list[dict]:
    return [dict(r) for r in db.query(
        "SELECT key, value, unit, subject FROM metrics WHERE step_id = ? ORDER BY id", [step_id])]


# --------------------------------------------------------------------------------------------
# Sections


def _step_device(steps: list[dict]) -> str | None:
    """The device a step recorded in its summary (the correctness step does), for sessions that
    ran no preflight."""
    for s in steps:
        summary = s.get("summary")
        device = summary.get("device") if isinstance(summary, dict) else None
        if isinstance(device, str) and device.strip():
            return f"{device.strip()} (recorded by the {s['name']} step)"
    return None


def header_section(session: dict, env: dict | None, now: str,
                   step_device: str | None = None) -> dict:
    end = session.get("ended_at")
    gpu = None
    if env:
        gpus = env["data"].get("gpus") or []
        gpu = env.get("gpu_name") or (gpus[0].get("name") if gpus else None)
        if gpu and (env.get("gpu_cc") or (gpus and gpus[0].get("cc"))):
            gpu = f"{gpu} (cc {env.get('gpu_cc') or gpus[0].get('cc')})"
    if env and not gpu:
        gpu = "none found by preflight"
    gpu = gpu or step_device
    return {
        "id": session["id"], "number": session["number"], "name": session["name"],
        "status": session["status"], "objective": session.get("objective"),
        "outcome": session.get("outcome"), "started_at": session["started_at"], "ended_at": end,
        "duration_s": seconds_between(session["started_at"], end or now),
        "open": session["status"] == "open", "budget_s": session.get("budget_s"),
        "host": session.get("host"), "gpu": gpu, "git_commit": session.get("git_commit"),
        "plan": session.get("plan") or [],
    }


def steps_section(steps: list[dict], now: str) -> dict:
    rows = []
    for s in steps:
        actual = s.get("duration_s") if s["status"] != "skipped" else None
        if actual is None and s["status"] == "running":
            actual = seconds_between(s["started_at"], now)
        budget = s.get("budget_s")
        delta = None if actual is None or not budget or s["status"] == "running" else actual - budget
        rows.append({"seq": s["seq"], "name": s["name"], "kind": s.get("kind"), "status": s["status"],
                     "budget_s": budget, "duration_s": actual, "delta_s": delta,
                     "exit_code": s.get("exit_code"), "message": s.get("message")})
    counts = {k: sum(1 for r in rows if r["status"] == k)
              for k in ("passed", "failed", "interrupted", "skipped", "running")}
    return {"rows": rows, "counts": counts, "total": len(rows)}


def _env_rows(db, session_id: str) -> list[dict]:
    return [dict(r) for r in db.query(
        "SELECT * FROM env_snapshots WHERE session_id = ? ORDER BY taken_at, id", [session_id])]


def _flatten(data, prefix: str = "") -> dict:
    out = {}
    if isinstance(data, dict):
        for key in sorted(data):
            out.update(_flatten(data[key], f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and any(isinstance(x, (dict, list)) for x in data):
        for i, item in enumerate(data):
            out.update(_flatten(item, f"{prefix}.{i}"))
    else:
        out[prefix] = data
    return out


def diff_snapshots(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old, new) for every leaf that differs between two snapshot ``data`` dicts."""
    try:
        from ..envinfo import diff_snapshots as shared_diff
    except ImportError:
        shared_diff = None
    if shared_diff is not None:
        return [(d["key"], d["a"], d["b"]) if isinstance(d, dict) else tuple(d)
                for d in shared_diff(old, new)]
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def environment_section(db, session: dict) -> dict | None:
    rows = _env_rows(db, session["id"])
    if not rows:
        return None
    latest = rows[-1]
    data = snapshot_data(latest["data"])
    latest = {**latest, "data": data}
    torch_info = data.get("torch") or {}
    tool = data.get("toolchain") or {}
    gpus = data.get("gpus") or []
    git = data.get("git") or {}
    facts = [
        ("Python", latest.get("python_version") or (data.get("python") or {}).get("version")),
        ("torch", latest.get("torch_version") or torch_info.get("version")),
        ("torch CUDA", latest.get("torch_cuda") or torch_info.get("cuda")),
        ("nvcc", latest.get("nvcc_version") or tool.get("nvcc_version")),
        ("driver", latest.get("driver_version") or data.get("driver")),
        ("GPU", latest.get("gpu_name") or (gpus[0].get("name") if gpus else None)),
        ("compute capability", latest.get("gpu_cc") or (gpus[0].get("cc") if gpus else None)),
        ("GPUs visible", len(gpus) if gpus else None),
        ("arch", tool.get("arch")),
        ("ninja", tool.get("ninja")),
        ("git commit", latest.get("git_commit") or git.get("commit")),
    ]
    previous = None
    prev_rows = list(db.query(
        """SELECT s.number, s.name, e.data FROM env_snapshots e JOIN sessions s ON s.id = e.session_id
           WHERE s.number < ? ORDER BY s.number DESC, e.taken_at DESC, e.id DESC LIMIT 1""",
        [session["number"]]))
    if prev_rows:
        prev = prev_rows[0]
        changes = diff_snapshots(snapshot_data(prev["data"]), data)
        previous = {"number": prev["number"], "name": prev["name"],
                    "changes": [{"key": k, "old": o, "new": n} for k, o, n in changes]}
    return {"taken_at": latest["taken_at"], "host": latest.get("host"),
            "facts": [{"name": n, "value": v} for n, v in facts if v not in (None, "")],
            "snapshots": len(rows), "previous": previous, "data": data}


# --------------------------------------------------------------------------------------------
# Step sections: one per registered step with a template, holding every instance of the step in
# the session, in order. A step's summary is read back through its summary_type.


def step_instances(steps: list[dict], name: str) -> list[dict]:
    """The built-in steps named ``name``, in order, a running one with what it recorded so far (a
    command step that took the name, ``sessionkit step run bench -- ...``, is not one)."""
    return [s for s in steps if s["name"] == name and s.get("kind", "builtin") == "builtin"]


def instance_base(step: dict, summary) -> dict:
    """What every step instance of a section has: its row's facts and its typed summary."""
    return {"step_id": step["id"], "seq": step["seq"], "name": step["name"],
            "status": step["status"], "message": step.get("message"),
            "duration_s": step.get("duration_s"), "summary": summary}


def preflight_instance(db, step: dict, summary) -> dict:
    """The preflight's checks that did not pass, failures first, with their fixes."""
    checks = [c for c in summary.checks or [] if isinstance(c, dict)]
    order = {"fail": 0, "warn": 1}
    problems = sorted((c for c in checks if c.get("status") in order),
                      key=lambda c: order[c["status"]])
    return {**instance_base(step, summary), "checks": len(checks), "problems": problems}


def build_instance(db, step: dict, summary) -> dict:
    metrics = _step_metrics(db, step["id"])
    build_time = next((m["value"] for m in metrics if m["key"] == "build_time_s" and not m["subject"]),
                      None)
    kernels: dict[str, dict] = {}
    for m in metrics:
        if m["subject"] and m["key"] in BUILD_KERNEL_KEYS:
            kernels.setdefault(m["subject"], {"name": m["subject"]})[m["key"]] = m["value"]
    return {**instance_base(step, summary), "build_time_s": build_time,
            "kernels": [kernels[k] for k in sorted(kernels)]}


def correctness_instance(db, step: dict, summary) -> dict:
    rows = []
    if table_exists(db, "correctness_results"):
        rows = [dict(r) for r in db.query(
            "SELECT * FROM correctness_results WHERE step_id = ? ORDER BY idx, id", [step["id"]])]
    worst = None
    for r in rows:
        if r.get("bound") and r.get("max_err") is not None:
            ratio = r["max_err"] / r["bound"]
            if worst is None or ratio > worst["ratio"]:
                worst = {**r, "ratio": ratio, "label": config_label(r)}
    failures = [{**r, "label": config_label(r)} for r in rows if not r.get("passed")]
    dtypes = sorted({r["dtype"] for r in rows if r.get("dtype")})
    return {**instance_base(step, summary), "configs": len(rows),
            "passed": sum(1 for r in rows if r.get("passed")), "failed": len(failures),
            "worst": worst, "failures": failures, "dtypes": dtypes}


def _bench_rows(db, step_id: str) -> list[dict]:
    return [dict(r) for r in db.query(
        "SELECT * FROM bench_results WHERE step_id = ? ORDER BY id", [step_id])]


def bench_instance(db, step: dict, summary) -> dict:
    """One bench step: per config, ours against SDPA and the other backends, from its rows."""
    rows = _bench_rows(db, step["id"]) if table_exists(db, "bench_results") else []
    configs: dict[AttentionConfig, dict] = {}
    for r in rows:
        entry = configs.setdefault(AttentionConfig.from_row(r), {"label": config_label(r),
                                                                 "impls": {}})
        entry["impls"][r["impl"]] = r
    table = []
    for entry in configs.values():
        ours, sdpa = entry["impls"].get("ours"), entry["impls"].get("sdpa")
        table.append({
            "label": entry["label"], "ours": ours, "sdpa": sdpa,
            "others": [entry["impls"][i] for i in SDPA_IMPLS if i in entry["impls"] and i != "sdpa"],
            "speedup": ours.get("speedup_vs_sdpa") if ours else None,
        })
    speedups = [t["speedup"] for t in table
                if t["ours"] and t["ours"].get("status") == "ok" and t["speedup"] is not None]
    ceiling = next((m["value"] for m in _step_metrics(db, step["id"])
                    if m["key"] == "matmul_bf16_tflops"), None)
    impls = sorted({r["impl"] for r in rows}, key=lambda i: (i != "ours", i))
    return {**instance_base(step, summary), "grid": summary.grid, "rows": table,
            "configs": len(table), "impls": impls, "ceiling_tflops": ceiling,
            "geomean_speedup": geomean(speedups), "best_speedup": max(speedups) if speedups else None,
            "not_ok": [t for t in table if t["ours"] and t["ours"].get("status") != "ok"],
            "raw": rows}


def bench_side_by_side(instances: list[dict]) -> dict | None:
    """The session's bench steps side by side, when it has two or more with results.

    For one implementation (ours where two or more of the steps timed it, else SDPA): per config,
    each step's TFLOP/s from its ``ok`` rows, and each later step's TFLOP/s over the first step's
    (above 1: faster), with the geometric mean of those ratios per step.
    """
    timed = [b for b in instances if b["raw"]]
    if len(timed) < 2:
        return None

    def tflops(bench: dict, impl: str) -> dict[tuple, float]:
        return {AttentionConfig.from_row(r): r["tflops"] for r in bench["raw"]
                if r["impl"] == impl and r.get("status") == "ok" and r.get("tflops")}

    impl = "ours" if sum(1 for b in timed if tflops(b, "ours")) >= 2 else "sdpa"
    per_step = [tflops(b, impl) for b in timed]
    labels: dict[tuple, str] = {}
    for bench in timed:
        for r in bench["raw"]:
            if r["impl"] == impl:
                labels.setdefault(AttentionConfig.from_row(r), config_label(r))
    rows = []
    for key, label in labels.items():
        values = [figures.get(key) for figures in per_step]
        rows.append({"label": label, "tflops": values,
                     "ratios": [v / values[0] if v and values[0] else None for v in values[1:]]})
    geomeans = [geomean(r["ratios"][i] for r in rows) for i in range(len(timed) - 1)]
    steps = [{"seq": b["seq"], "graph": b["summary"].graph, "grid": b["grid"],
              "flags": b["summary"].nvcc_flags or None} for b in timed]
    return {"impl": impl, "steps": steps, "rows": rows, "geomeans": geomeans}


def _stall(entry) -> bool:
    """A stored stall reason is ``[name, % of stalls]``; anything else is left out."""
    return (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], (int, float))
            and not isinstance(entry[1], bool))


def _number(value) -> float | None:
    """A stored figure, or None when it is not a number (a damaged or hand-edited summary)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def sass_section(summary) -> dict | None:
    """Where the warps stall, from a ``profile --source`` summary: ``{"kernel", "samples",
    "instructions", "opcodes": [...] (the first SASS_OPCODES), "rest": {"opcodes", "samples",
    "share_pct"} or None, "hottest": [...], "profiled_kernel"}``; rows whose figures are not
    numbers are left out. None when the step stored no SASS breakdown.

    A share (%) is computed here from the stored sample counts, ``100 * samples / sass_samples``,
    so that the report rounds it once (summaries of earlier releases hold shares rounded to 2
    decimals, which shown to 1 decimal could be 0.1 off; the "other opcodes" row was their sum).
    ``profiled_kernel`` is the kernel of the step's kernel-level figures when the SASS table is
    of another one (ncu's source page had no table of that name), else None."""
    samples = _number(summary.sass_samples)
    if samples is None:
        return None

    def share(entry, count: float) -> float | None:
        return 100.0 * count / samples if samples > 0 else _number(entry.get("share_pct"))

    def reasons(entry) -> list[list]:
        stored = entry.get("reasons")
        return [list(r) for r in stored if _stall(r) and isinstance(r[0], str)] \
            if isinstance(stored, list) else []

    opcodes = []
    for o in summary.sass_opcodes or []:
        count = _number(o.get("samples")) if isinstance(o, dict) else None
        pct = share(o, count) if count is not None else None
        if pct is not None and _text(o.get("opcode")):
            opcodes.append({"opcode": o["opcode"], "samples": count, "share_pct": pct,
                            "executed": _number(o.get("executed")), "reasons": reasons(o)})
    rest = opcodes[SASS_OPCODES:]
    rest_samples = sum(o["samples"] for o in rest)
    hottest = []
    for h in summary.sass_hottest or []:
        count = _number(h.get("samples")) if isinstance(h, dict) else None
        pct = share(h, count) if count is not None else None
        if pct is not None and _text(h.get("sass")):
            offset = _number(h.get("offset"))
            hottest.append({"offset": None if offset is None or offset < 0
                            else f"0x{int(offset):04x}",
                            "sass": h["sass"], "samples": count, "share_pct": pct,
                            "reasons": reasons(h)})
    kernel, profiled = _text(summary.sass_kernel), _text(summary.kernel_name)
    return {"kernel": kernel, "samples": samples,
            "instructions": _number(summary.sass_instructions),
            "opcodes": opcodes[:SASS_OPCODES],
            "rest": {"opcodes": len(rest), "samples": rest_samples,
                     "share_pct": 100.0 * rest_samples / samples if samples > 0
                     else sum(o["share_pct"] for o in rest)} if rest else None,
            "hottest": hottest,
            "profiled_kernel": profiled if kernel and profiled and profiled != kernel else None}


def profile_instance(db, step: dict, summary) -> dict:
    metrics = {m["key"]: m for m in _step_metrics(db, step["id"]) if m["key"] in PROFILE_KEYS}
    return {**instance_base(step, summary),
            "metrics": [{"key": k, **metrics[k]} for k in PROFILE_KEYS if k in metrics],
            "stalls": [list(s) for s in summary.stalls or [] if _stall(s)],
            "suggestions": [g for g in summary.suggestions or [] if isinstance(g, dict)],
            "sass": sass_section(summary), "sass_error": _text(summary.source_error)}


def any_instance(db, step: dict, summary) -> dict:
    """A step without its own reader here: its summary and its metrics (telemetry aside)."""
    metrics = [m for m in _step_metrics(db, step["id"]) if m["subject"] != "telemetry"]
    return {**instance_base(step, summary), "metrics": metrics}


# step name -> the reader of one instance; a step not named here gets any_instance
INSTANCE_READERS = {"preflight": preflight_instance, "build": build_instance,
                    "correctness": correctness_instance, "bench": bench_instance,
                    "profile": profile_instance}


def step_sections(db, steps: list[dict]) -> list[dict]:
    """One section per registered step that has a report template and ran in the session (or, for
    the built-in pipeline steps, ``report_when_absent``, did not), in the registry's order:
    ``{"name", "template", "description", "instances": [...]}`` (the bench section also has
    ``side_by_side``). Each instance's ``summary`` is the step's ``summary_type`` read back from
    the row (a dict for a step without one)."""
    from ..steps import REGISTRY, get_step

    sections = []
    for name in REGISTRY:
        step_obj = get_step(name)
        if not step_obj.template:
            continue
        reader = INSTANCE_READERS.get(name, any_instance)
        instances = []
        for row in step_instances(steps, name):
            stored = row.get("summary") or {}
            summary = (step_obj.summary_type.from_json(stored) if step_obj.summary_type
                       else stored)
            instances.append(reader(db, row, summary))
        if not instances and not step_obj.report_when_absent:
            continue
        section = {"name": name, "template": step_obj.template,
                   "description": step_obj.description, "instances": instances}
        if name == "bench":
            section["side_by_side"] = bench_side_by_side(instances)
        sections.append(section)
    return sections


def telemetry_section(db, steps: list[dict]) -> list[dict]:
    ids = [s["id"] for s in steps]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    per: dict[str, dict] = {}
    for step_id, key, value in db.execute(
            f"SELECT step_id, key, value FROM metrics WHERE subject = 'telemetry' AND step_id IN ({marks})",
            ids).fetchall():
        per.setdefault(step_id, {})[key] = value
    return [{"seq": s["seq"], "name": s["name"], "status": s["status"], **per[s["id"]]}
            for s in steps if s["id"] in per]


def cost_section(session: dict, steps: list[dict], now: str) -> dict:
    costs = session_costs(session, steps, now=now)
    return {"gpu_usd": costs["gpu_usd"], "ai_usd": costs["ai_usd"], "total_usd": costs["total_usd"],
            "per_passed_step_usd": costs.get("per_passed_step_usd"),
            "passed_steps": costs.get("passed_steps"), "wall_s": costs.get("wall_s"),
            "gpu_rate": session.get("gpu_rate_usd_per_h"), "ai_rate": session.get("ai_rate_usd_per_h")}


def _previous_bench_session(db, session: dict) -> dict | None:
    if not table_exists(db, "bench_results"):
        return None
    rows = list(db.query(
        """SELECT s.id, s.number, s.name, st.id AS step_id, st.seq
           FROM sessions s JOIN steps st ON st.session_id = s.id
           WHERE s.number < ? AND st.name = 'bench'
             AND EXISTS (SELECT 1 FROM bench_results br WHERE br.step_id = st.id AND br.impl = 'ours')
           ORDER BY s.number DESC, st.seq DESC LIMIT 1""", [session["number"]]))
    return dict(rows[0]) if rows else None


def comparison_section(db, session: dict, bench: dict | None) -> dict | None:
    """Each config and implementation against the previous session that benchmarked.

    The verdicts are the bench package's (:func:`sessionkit.bench.compare.compare_sessions`): a
    Mann-Whitney U test on the raw samples together with a minimum change of 5 %; regressions first.
    """
    if bench is None or not bench["rows"]:
        return None
    prev = _previous_bench_session(db, session)
    if prev is None:
        return {"previous": None, "rows": []}
    from ..bench.compare import compare_sessions

    result = compare_sessions(db, prev["id"], session["id"], min_effect=REGRESSION_THRESHOLD)
    return {"previous": {"number": prev["number"], "name": prev["name"]}, "rows": result["rows"],
            "min_effect": result["min_effect"], "alpha": result["alpha"],
            "regressions": result["regressions"], "improvements": result["improvements"],
            "only_before": result["only_in_a"], "only_now": result["only_in_b"]}


def patterns_section(db, session: dict) -> list[dict]:
    rows = [dict(r) for r in db.query(
        "SELECT pattern_id, note, applied_at FROM patterns_applied WHERE session_id = ? "
        "ORDER BY applied_at, id", [session["id"]])]
    if not rows:
        return []
    try:
        from .patterns import load_patterns

        titles = {p.id: p.title for p in load_patterns()}
    except Exception:  # a broken pattern file must not stop the report: show the ids
        titles = {}
    return [{**r, "title": titles.get(r["pattern_id"])} for r in rows]


def telemetry_timeline(db, steps: list[dict]) -> dict | None:
    """Samples of the longest finished step that has telemetry samples (for the plot)."""
    ids = [s["id"] for s in steps]
    if not ids:
        return None
    marks = ",".join("?" * len(ids))
    with_samples = {r[0] for r in db.execute(
        f"SELECT DISTINCT step_id FROM telemetry_samples WHERE step_id IN ({marks})", ids).fetchall()}
    candidates = [s for s in steps if s["id"] in with_samples and s.get("duration_s") is not None]
    if not candidates:
        return None
    longest = max(candidates, key=lambda s: s["duration_s"])
    samples = [dict(r) for r in db.query(
        "SELECT gpu_index, t_unix_s, power_w, sm_clock_mhz, temp_c, throttled FROM telemetry_samples"
        " WHERE step_id = ? ORDER BY gpu_index, t_unix_s", [longest["id"]])]
    return {"step": longest["name"], "seq": longest["seq"], "samples": samples}


# --------------------------------------------------------------------------------------------


def report_data(db, session_ref=None, *, now: str | None = None) -> dict:
    """All the facts of one session's report. ``session_ref``: id, number, name, 'last', or None.

    ``sections`` holds the step sections (:func:`step_sections`); ``bench`` is the last finished
    bench step's instance (the one MLflow logs and the previous session is compared with), or None.
    """
    session = session_ref if isinstance(session_ref, dict) else get_session(db, session_ref)
    now = now or now_iso()
    steps = session_steps(db, session["id"])
    env = environment_section(db, session)
    latest_env = None
    if env is not None:
        latest_env = {**_env_rows(db, session["id"])[-1], "data": env["data"]}
    sections = step_sections(db, steps)
    benches = next((s["instances"] for s in sections if s["name"] == "bench"), [])
    bench = next((b for b in reversed(benches) if b["status"] != "running"), None)
    return {
        "session": header_section(session, latest_env, now, _step_device(steps)),
        "steps": steps_section(steps, now),
        "environment": env,
        "sections": sections,
        "bench": bench,
        "telemetry": telemetry_section(db, steps),
        "cost": cost_section(session, steps, now),
        "comparison": comparison_section(db, session, bench),
        "patterns": patterns_section(db, session),
        "timeline": telemetry_timeline(db, steps),
        "generated_at": now,
    }


__all__ = ["report_data", "config_label", "diff_snapshots", "aggregates"]
