"""GPU checks of the bench step's method (skipped without CUDA)."""

from __future__ import annotations

import csv
import time

import pytest

pytestmark = pytest.mark.gpu


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch


def test_sdpa_medians_agree_with_do_bench():
    """The bench step's median of SDPA agrees with triton's do_bench within 5 % on every config of
    0.2 ms and more. Another process on the GPU (a sanitizer run, say) can slow one method's runs
    of a config and not the other's (once: -36 % on one config, the other six within 1.7 %), so a
    config that disagrees is measured again, by both, before the test fails on it. Run it with the
    GPU to itself (`gpu_check.sh validate` does): next to three other test processes and two
    sanitizer runs it once failed at -12.8 % with do_bench's own repeats 11 % apart."""
    _cuda()
    pytest.importorskip("triton")
    from sessionkit.bench.agreement import agreement_rows, format_rows
    from sessionkit.bench.grids import load_grid

    def disagrees(row):
        return row["do_bench_ms"] >= 0.2 and not abs(row["diff_pct"]) <= 5.0

    configs = load_grid("quick")
    rows = agreement_rows(configs, repeats=3)
    print(format_rows(rows))
    again = [n for n, r in enumerate(rows) if disagrees(r)]
    if again:
        retried = agreement_rows([configs[n] for n in again], repeats=3, preheat_s=5.0)
        print("measured again:\n" + format_rows(retried))
        for n, row in zip(again, retried):
            rows[n] = row
    gated = [r for r in rows if r["do_bench_ms"] >= 0.2]
    assert len(gated) >= 5, "the quick grid should hold configs of 0.2 ms and more"
    for r in gated:
        assert not disagrees(r), (f"{r['config']}: {r['diff_pct']:+.2f} % vs do_bench (do_bench's "
                                  f"own repeats spread {r['do_bench_spread_pct']:.1f} %)")


def test_bench_step_records_results_samples_ceiling_and_csv(make_context, db, tmp_path):
    _cuda()
    from sessionkit.bench.step import CSV_COLUMNS
    from sessionkit.steps.bench import BenchStep

    options = {"grid": None, "configs": ("2,8,1024,1024,64,fp16,1", "1,8,128,128,64,bf16,0"),
               "impls": ("sdpa,sdpa_flash",), "time_limit_s": "20s",
               "csv_path": str(tmp_path / "bench.csv"), "graph": False, "preheat_s": "0"}
    result = BenchStep().run(make_context(options, name="bench"))
    assert result.status == "passed", result.message
    assert result.summary.configs == 2 and result.summary.ceiling_reused is False
    assert 100 < result.summary.ceiling_tflops < 2000
    rows = list(db.query("SELECT * FROM bench_results"))
    assert {r["impl"] for r in rows} == {"sdpa", "sdpa_flash"}
    for r in rows:
        assert r["status"] == "ok", r
        count = db.execute("SELECT COUNT(*) FROM bench_samples WHERE result_id = ?",
                           [r["id"]]).fetchone()[0]
        assert count == r["samples"] >= 3
        assert r["passes"] == 3 and r["pass_spread_pct"] is not None
        passes = {p for (p,) in db.execute("SELECT DISTINCT pass FROM bench_samples "
                                           "WHERE result_id = ?", [r["id"]])}
        assert passes == {0, 1, 2}
        assert r["latency_ms"] > 0 and r["tflops"] > 0 and r["memory_mb"] > 0
        assert r["pct_peak"] == pytest.approx(100 * r["tflops"] / result.summary.ceiling_tflops)
    small = [r for r in rows if r["seq_len_q"] == 128]
    assert all(r["launches_per_sample"] > 1 for r in small), "small kernels must be batched"
    with open(tmp_path / "bench.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert list(lines[0]) == CSV_COLUMNS and len(lines) == 4

    again = BenchStep().run(make_context(dict(options, csv_path=None), name="bench"))
    assert again.summary.ceiling_reused is True
    assert again.summary.ceiling_tflops == result.summary.ceiling_tflops


def test_graph_mode_times_like_eager(make_context, db):
    _cuda()
    from sessionkit.steps.bench import BenchStep

    options = {"grid": None, "configs": ("4,16,2048,2048,128,bf16,0",), "impls": ("sdpa",),
               "time_limit_s": "10s", "csv_path": None, "preheat_s": "0"}
    eager = BenchStep().run(make_context(dict(options, graph=False), name="bench"))
    graph = BenchStep().run(make_context(dict(options, graph=True), name="bench"))
    assert eager.status == graph.status == "passed"
    lat = [r["latency_ms"] for r in db.query("SELECT latency_ms FROM bench_results ORDER BY id")]
    assert len(lat) == 2 and abs(lat[1] / lat[0] - 1) < 0.05, lat


def test_real_nvml_telemetry(make_context, db):
    torch = _cuda()
    pytest.importorskip("pynvml")
    from sessionkit.telemetry import start_telemetry

    ctx = make_context(name="t")
    notes = []
    handle = start_telemetry(db, ctx.step_id, interval_s=0.02, notice=notes.append)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
    summary = handle.stop()
    assert notes == []
    assert summary["samples"] >= 10
    assert summary["power_max_w"] > 50 and summary["energy_j"] > 0
    assert summary["sm_clock_max_mhz"] > 500 and summary["temp_max_c"] > 0
    stored = db.execute("SELECT COUNT(*) FROM telemetry_samples WHERE step_id = ?",
                        [ctx.step_id]).fetchone()[0]
    assert stored == summary["samples"]
