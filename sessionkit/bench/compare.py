"""Compare the bench results of two sessions, config by config and implementation by
implementation, on their raw samples.

Each pair gets the ratio of medians (B over A: above 1 is slower) and a verdict from the
Mann-Whitney U test together with a minimum effect: FASTER or SLOWER only when the difference is
both significant and at least ``min_effect``. An implementation that ran in A but is wrong or fails
in B is BROKEN. Regressions (SLOWER, BROKEN) come first.
"""

from __future__ import annotations

import json

from ..attention import AttentionConfig
from ..envinfo import snapshot_data
from ..errors import SessionkitError, UsageError
from ..views import clip
from .stats import compare_samples, median, usable_samples
from .timing import slowdown_flags

REGRESSIONS = ("BROKEN", "SLOWER")
ORDER = {"BROKEN": 0, "SLOWER": 1, "FASTER": 2, "FIXED": 3, "SAME": 4, "N/A": 5}


class RegressionFound(SessionkitError):
    """``compare --fail-on-regression`` found at least one regression."""


def benchmarked_sessions(db, limit: int | None = None, *, exclude: str | None = None) -> list[dict]:
    """Sessions with at least one bench result, the last numbered first (sessions brought in by
    ``merge`` are numbered as they arrive): ``{"id", "number", "name", "started_at"}``, at most
    ``limit`` of them, leaving out the session whose id is ``exclude``.

    Sessions are walked newest first and each is probed for a bench result, so that the newest few
    cost a few index lookups however many sessions the database holds (a join over every step and
    result row took seconds at 100,000 sessions).
    """
    sql = ("SELECT se.id, se.number, se.name, se.started_at FROM sessions se WHERE EXISTS (SELECT 1 FROM steps st "
           "WHERE st.session_id = se.id AND EXISTS (SELECT 1 FROM bench_results br "
           "WHERE br.step_id = st.id))")
    args: list = []
    if exclude is not None:
        sql += " AND se.id != ?"
        args.append(exclude)
    sql += " ORDER BY se.number DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [dict(r) for r in db.query(sql, args)]


def _graph_mode(step: dict) -> bool:
    """Whether a bench step timed CUDA-graph replays (``bench --graph``), read from its options,
    else its summary; steps that recorded neither timed eager launches."""
    for column in ("options", "summary"):
        try:
            value = json.loads(step.get(column) or "{}")
        except (TypeError, ValueError):
            continue
        if isinstance(value, dict) and "graph" in value:
            return value["graph"] is True
    return False


def bench_steps(db, session_id: str, *, graph: bool = False) -> list[dict]:
    """The session's steps with bench results that timed eager launches (or, with ``graph``,
    CUDA-graph replays), oldest first."""
    rows = db.query(
        "SELECT st.id, st.seq, st.started_at, st.options, st.summary FROM steps st "
        "WHERE st.session_id = ? AND EXISTS (SELECT 1 FROM bench_results br WHERE br.step_id = st.id) "
        "ORDER BY st.seq", [session_id])
    return [dict(r) for r in rows if _graph_mode(dict(r)) == graph]


def latest_bench_step(db, session_id: str, *, graph: bool = False) -> dict | None:
    steps = bench_steps(db, session_id, graph=graph)
    return steps[-1] if steps else None


def load_session_results(db, steps: list[dict]) -> dict[tuple[AttentionConfig, str], dict]:
    """(config, impl) -> result row over several bench steps of one session: each pair's row from
    the latest step that measured it (a session that ran the standard grid, then a few configs
    again, compares on all of them)."""
    out = {}
    for step in steps:
        out.update(load_step_results(db, step["id"]))
    return out


def load_step_results(db, step_id: str) -> dict[tuple[AttentionConfig, str], dict]:
    """(config, impl) -> result row with its ``samples`` (clean ones when enough)."""
    out = {}
    for row in db.query("SELECT * FROM bench_results WHERE step_id = ? ORDER BY id", [step_id]):
        row = dict(row)
        samples = db.execute("SELECT latency_ms, throttled, clock_reasons FROM bench_samples "
                             "WHERE result_id = ? ORDER BY idx", [row["id"]]).fetchall()
        flags = slowdown_flags([t for _, t, _ in samples], [r for _, _, r in samples])
        row["samples_used"], _ = usable_samples([s for s, _, _ in samples], flags)
        out[(AttentionConfig.from_row(row), row["impl"])] = row  # a later row of a pair wins
    return out


def _session_ref(db, ref) -> dict:
    from ..sessions import get_session

    session = get_session(db, ref)
    return {"id": session["id"], "number": session["number"], "name": session["name"],
            "started_at": session.get("started_at")}


def _chronological(x: dict, y: dict) -> tuple[dict, dict]:
    """The two sessions, the one started first first (by number where the start times tie): an
    imported session may be numbered after a later one of this host."""
    def key(session):
        return (session.get("started_at") or "", session["number"])

    return (x, y) if key(x) <= key(y) else (y, x)


def compare_sessions(db, a=None, b=None, *, min_effect: float = 0.05, alpha: float = 0.01,
                     graph: bool = False) -> dict:
    """Compare the bench results of session ``a`` (old) with those of ``b`` (new): per config and
    implementation, the latest bench step of each session that measured it, eager launches only
    (``graph``: CUDA-graph replays only; the two are different measurements).

    Defaults: the two last-numbered sessions that benchmarked, ``a`` the one started first (by
    their start times: a session brought in by ``merge`` is numbered as it arrives, after later
    ones). With only ``a``, ``b`` is the last-numbered other session that benchmarked, the two in
    the order they started.
    """
    if not 0 <= min_effect < 1:
        raise UsageError(f"--min-effect must be within [0, 1), got {min_effect}")
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must be within (0, 1), got {alpha}")
    if b is None:
        if a is None:
            benchmarked = benchmarked_sessions(db, limit=2)
            if len(benchmarked) < 2:
                raise SessionkitError(
                    f"need two sessions with bench results to compare; found {len(benchmarked)}"
                    " (run 'sessionkit step bench' in another session)")
            sa, sb = _chronological(benchmarked[1], benchmarked[0])
        else:
            sa = _session_ref(db, a)
            others = benchmarked_sessions(db, limit=1, exclude=sa["id"])
            if not others:
                raise SessionkitError("no other session with bench results to compare with")
            sa, sb = _chronological(sa, others[0])
    else:
        sa = _session_ref(db, a) if a is not None else None
        sb = _session_ref(db, b)
        if sa is None:
            raise UsageError("give session A as well as B")
    if sa["id"] == sb["id"]:
        raise UsageError(f"both sides are session {sa['number']}; give two different sessions")
    steps_a = bench_steps(db, sa["id"], graph=graph)
    steps_b = bench_steps(db, sb["id"], graph=graph)
    for sess, steps in ((sa, steps_a), (sb, steps_b)):
        if not steps:
            kind, other = ("CUDA-graph", "eager") if graph else ("eager", "CUDA-graph")
            if bench_steps(db, sess["id"], graph=not graph):  # the other kind of timings only
                hint = (f"it has {other} timings only: compare them with 'sessionkit compare "
                        f"{'A B' if graph else '--graph A B'}'")
            else:
                hint = f"run 'sessionkit step bench{' --graph' if graph else ''}' in it"
            raise SessionkitError(f"session {sess['number']} has no {kind} bench results; {hint}")
    step_a, step_b = steps_a[-1], steps_b[-1]
    res_a, res_b = load_session_results(db, steps_a), load_session_results(db, steps_b)
    rows = [compare_pair(config, impl, res_a[(config, impl)], res_b[(config, impl)],
                         min_effect=min_effect, alpha=alpha)
            for config, impl in res_a if (config, impl) in res_b]
    rows.sort(key=lambda r: (ORDER[r["verdict"]], -(r["ratio"] or 0) if r["verdict"] == "SLOWER"
                             else (r["ratio"] or 0), r["config"], r["impl"]))
    only_a = sorted(f"{k.label} {i}" for k, i in res_a if (k, i) not in res_b)
    only_b = sorted(f"{k.label} {i}" for k, i in res_b if (k, i) not in res_a)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ORDER}
    env_a, env_b = environment_facts(db, sa), environment_facts(db, sb)
    return {
        "a": {**sa, "step_id": step_a["id"], "step_ids": [st["id"] for st in steps_a]},
        "b": {**sb, "step_id": step_b["id"], "step_ids": [st["id"] for st in steps_b]},
        "graph": graph,
        "environment": {"a": env_a, "b": env_b, "changes": environment_changes(env_a, env_b)},
        "min_effect": min_effect, "alpha": alpha, "rows": rows,
        "regressions": counts["SLOWER"] + counts["BROKEN"], "improvements": counts["FASTER"],
        "counts": counts, "only_in_a": only_a, "only_in_b": only_b,
    }


# What makes two sessions' timings comparable: (key, label). A change in any of them is said above
# the table, as asv keeps results of different machines apart and pytest-benchmark warns.
ENV_FACTS = (("gpu", "GPU"), ("driver", "driver"), ("torch", "torch"), ("cuda", "CUDA"),
             ("nvcc", "nvcc"), ("kernel_build", "kernel build key"))


def environment_facts(db, session: dict) -> dict | None:
    """The facts of :data:`ENV_FACTS` for a session, from its latest environment snapshot and its
    latest passed build step; None where the session has neither."""
    snap = db.execute(
        "SELECT gpu_name, driver_version, torch_version, torch_cuda, nvcc_version, data FROM "
        "env_snapshots WHERE session_id = ? ORDER BY taken_at DESC, id DESC LIMIT 1",
        [session["id"]]).fetchone()
    build = db.execute(
        "SELECT summary FROM steps WHERE session_id = ? AND name = 'build' AND status = 'passed' "
        "ORDER BY seq DESC LIMIT 1", [session["id"]]).fetchone()
    if snap is None and build is None:
        return None
    facts = dict.fromkeys(key for key, _ in ENV_FACTS)
    if snap is not None:
        gpu, driver, torch, cuda, nvcc, data = snap
        gpus = [g.get("name") for g in snapshot_data(data).get("gpus", []) if g.get("name")]
        facts.update(gpu=", ".join(gpus) or gpu, driver=driver, torch=torch, cuda=cuda, nvcc=nvcc)
    if build is not None:
        try:
            facts["kernel_build"] = (json.loads(build[0] or "{}") or {}).get("key")
        except (ValueError, AttributeError):
            pass
    return facts


def environment_changes(a: dict | None, b: dict | None) -> list[dict]:
    """What differs between two sessions' :func:`environment_facts`: [{key, label, a, b}].
    A fact unknown on either side is not counted as a change."""
    if a is None or b is None:
        return []
    return [{"key": key, "label": label, "a": a[key], "b": b[key]} for key, label in ENV_FACTS
            if a.get(key) is not None and b.get(key) is not None and a[key] != b[key]]


def compare_pair(config: AttentionConfig, impl: str, ra: dict, rb: dict, *, min_effect: float,
                 alpha: float) -> dict:
    row = {"config": config.label, "impl": impl, "a_ms": None, "b_ms": None, "ratio": None,
           "clock_note": "",
           "p_value": None, "a_samples": len(ra["samples_used"]),
           "b_samples": len(rb["samples_used"]), "a_status": ra["status"],
           "b_status": rb["status"], "reason": ""}
    ok_a = ra["status"] == "ok" and ra["samples_used"]
    ok_b = rb["status"] == "ok" and rb["samples_used"]
    if ok_a:
        row["a_ms"] = median(ra["samples_used"])
    if ok_b:
        row["b_ms"] = median(rb["samples_used"])
    if ok_a and not ok_b:
        row["verdict"], row["reason"] = ("BROKEN" if rb["status"] in ("wrong", "error") else "N/A",
                                         f"B is {rb['status']}: {rb['note'] or ''}".rstrip(": "))
        return row
    if ok_b and not ok_a:
        row["verdict"], row["reason"] = ("FIXED" if ra["status"] in ("wrong", "error") else "N/A",
                                         f"A was {ra['status']}")
        return row
    if not ok_a and not ok_b:
        row["verdict"], row["reason"] = "N/A", f"A {ra['status']}, B {rb['status']}"
        return row
    verdict = compare_samples(ra["samples_used"], rb["samples_used"], min_effect=min_effect,
                              alpha=alpha)
    row.update(verdict=verdict.verdict, ratio=verdict.ratio, p_value=verdict.p_value,
               reason=verdict.reason)
    row["clock_note"] = clock_note(ra.get("sm_clock_mhz"), rb.get("sm_clock_mhz"))
    return row


CLOCK_NOTE_REL = 0.02


def clock_note(a_mhz, b_mhz, *, rel: float = CLOCK_NOTE_REL) -> str:
    """'SM clock 1830 -> 1980 MHz' when the two results ran at clocks ``rel`` or more apart: a
    latency change that follows the clock is the GPU's power state, not the code."""
    if not a_mhz or not b_mhz or abs(b_mhz / a_mhz - 1) < rel:
        return ""
    return f"SM clock {a_mhz:.0f} -> {b_mhz:.0f} MHz"


class EnvironmentChanged(SessionkitError):
    """Two sessions measured on different machines or software, judged for regressions: exit
    status 125, ``git bisect run``'s "cannot test" (as a skipped step's), so that a script tells
    "no verdict" from a regression (1)."""

    exit_code = 125


def check_same_environment(result: dict, *, allow_env_change: bool) -> None:
    """Raise :class:`EnvironmentChanged` when the compared sessions' environments differ, unless
    ``allow_env_change``: a regression verdict across machines is not one about the code."""
    changes = (result.get("environment") or {}).get("changes") or []
    if changes and not allow_env_change:
        what = ", ".join(c["label"] for c in changes)
        raise EnvironmentChanged(
            f"sessions {result['a']['number']} and {result['b']['number']} ran in different "
            f"environments ({what} changed); --fail-on-regression will not judge them: pass "
            "--allow-env-change to compare anyway")


def format_comparison(result: dict) -> str:
    """The comparison as a text table, regressions first."""
    a, b = result["a"], result["b"]
    lines = [f"A = session {a['number']} ({a['name']}), B = session {b['number']} ({b['name']}); "
             f"ratio = B/A median latency, verdict needs p < {result['alpha']:g} and "
             f"|ratio - 1| >= {result['min_effect']:.0%}"]
    env = result.get("environment") or {}
    changes = env.get("changes") or []
    if changes:
        what = "; ".join(f"{c['label']} {clip(str(c['a']), 16)} -> {clip(str(c['b']), 16)}" for c in changes)
        lines.insert(0, f"WARNING: the sessions ran in different environments ({what}): a change "
                        "below may come from the machine or the software, not from the code")
    unknown = [result[side]["number"] for side in ("a", "b") if env and env.get(side) is None]
    if len(unknown) == 1:
        lines.insert(1, f"note: session {unknown[0]} has no environment snapshot, so a change of "
                        "machine cannot be seen (run 'sessionkit step preflight' in it)")
    if not result["rows"]:
        lines.append("no config and implementation was measured in both")
    else:
        width = max(len(r["config"]) for r in result["rows"])
        lines.append(f"{'config':<{width}}  {'impl':<14} {'A ms':>9} {'B ms':>9} {'B/A':>7} "
                     f"{'p':>8}  verdict")
        for r in result["rows"]:
            a_ms = f"{r['a_ms']:.4f}" if r["a_ms"] is not None else r["a_status"]
            b_ms = f"{r['b_ms']:.4f}" if r["b_ms"] is not None else r["b_status"]
            ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
            p = f"{r['p_value']:.1e}" if r["p_value"] is not None else "-"
            note = f"  ({r['clock_note']})" if r.get("clock_note") else ""
            lines.append(f"{r['config']:<{width}}  {r['impl']:<14} {a_ms:>9} {b_ms:>9} {ratio:>7} "
                         f"{p:>8}  {r['verdict']}{note}")
    c = result["counts"]
    lines.append(f"{result['regressions']} regression(s) ({c['SLOWER']} slower, {c['BROKEN']} broken), "
                 f"{c['FASTER']} faster, {c['SAME']} same")
    moved = sum(bool(r.get("clock_note")) for r in result["rows"])
    if moved:
        lines.append(f"{moved} row(s) ran at SM clocks 2 % or more apart: their change may be the "
                     "GPU's power state (compare runs with the same --cooldown)")
    for side, key in (("A", "only_in_a"), ("B", "only_in_b")):
        if result[key]:
            lines.append(f"only in {side}: {len(result[key])} (e.g. {result[key][0]})")
    return "\n".join(lines)
