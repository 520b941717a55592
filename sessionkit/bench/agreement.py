"""Does the bench step's timing agree with ``triton.testing.do_bench``?

For each config, SDPA default is timed by this package's method and by ``do_bench(...,
return_mode="median")`` (``repeats`` times, to show do_bench's own spread), alternating which
goes first, after the GPU's temperature has levelled off. Used by ``benchmarks/bench_agreement.py``
and the GPU tests.

Both must measure the GPU in the same power regime. do_bench runs the kernel back to back, so a
busy GPU sits at its power cap; the comparison therefore runs this package's timer without rests
(``cooldown=0``) by default. With the bench step's default rests, the GPU stays at full boost and
its medians are lower than do_bench's by the clock difference (up to ~11 % on an H100 for the
heaviest configs): a difference of regime, not of method.
"""

from __future__ import annotations

import time

from ..attention import AttentionConfig


def agreement_rows(configs: list[AttentionConfig], *, repeats: int = 3, budget_s: float = 4.0,
                   preheat_s: float = 30.0, cooldown: float = 0.0,
                   progress=None) -> list[dict]:
    import torch
    import triton.testing

    from . import timing
    from .step import bench_config, result_rows, stop_rule

    device = torch.device("cuda", torch.cuda.current_device())
    probe = timing.Probe.for_torch_device(device.index)
    rows = []
    try:
        timer = timing.Timer(torch, device, probe=probe, cooldown=cooldown)
        if preheat_s > 0:
            timing.preheat(timer, cap_s=preheat_s)
        for n, config in enumerate(configs):
            if progress:
                progress(n + 1, len(configs), config.label)
            sdpa = [i for i in timing.sdpa_impls(torch, config) if i.name == "sdpa"]
            q, k, v = timing.make_input_sets(torch, config, device, 1)[0]

            def fn():
                sdpa[0].launch(q, k, v)

            ours_ms, theirs = None, []

            def run_ours():
                nonlocal ours_ms
                runs = bench_config(timer, torch, config, sdpa, stop_rule(budget_s),
                                    deadline=time.monotonic() + budget_s, first=(n == 0))
                ours_ms = result_rows(config, runs, ceiling=None)[0]["latency_ms"]

            def run_theirs():
                theirs.append(float(triton.testing.do_bench(fn, return_mode="median")))

            if n % 2 == 0:
                run_ours()
                for _ in range(repeats):
                    run_theirs()
            else:
                for _ in range(repeats):
                    run_theirs()
                run_ours()
            theirs_sorted = sorted(theirs)
            mid = theirs_sorted[len(theirs_sorted) // 2]
            rows.append({
                "config": config.label, "sessionkit_ms": ours_ms, "do_bench_ms": mid,
                "do_bench_runs": theirs,
                "do_bench_spread_pct": 100.0 * (max(theirs) - min(theirs)) / mid,
                "diff_pct": 100.0 * (ours_ms - mid) / mid if ours_ms else None,
            })
            del q, k, v
    finally:
        probe.close()
    return rows


def format_rows(rows: list[dict], *, threshold_ms: float = 0.2, tolerance_pct: float = 5.0) -> str:
    width = max(len(r["config"]) for r in rows)
    lines = [f"{'config':<{width}} {'sessionkit':>11} {'do_bench':>9} {'diff %':>7} "
             f"{'do_bench spread %':>18}  check"]
    for r in rows:
        gated = r["do_bench_ms"] >= threshold_ms
        ok = r["diff_pct"] is not None and abs(r["diff_pct"]) <= tolerance_pct
        check = ("ok" if ok else "DISAGREE") if gated else f"(< {threshold_ms} ms)"
        lines.append(f"{r['config']:<{width}} {r['sessionkit_ms']:>11.4f} {r['do_bench_ms']:>9.4f} "
                     f"{r['diff_pct']:>+7.2f} {r['do_bench_spread_pct']:>18.2f}  {check}")
    return "\n".join(lines)
