"""The bench step's CPU-side parts: option parsing, result rows, speedups, CSV, table, skip."""

from __future__ import annotations

import csv
import textwrap

import pytest

from sessionkit.attention import AttentionConfig
from sessionkit.bench import step as bench_step
from sessionkit.bench.timing import ImplRun, input_sets_for, launches_for, summarize_samples
from sessionkit.errors import UsageError
from sessionkit.steps import bench as steps_bench

CFG = AttentionConfig(4, 16, 4096, 4096, 128, "bf16", True)


def _run(name, samples, throttled=None, status="ok", note=""):
    return ImplRun(name, status=status, note=note, samples=list(samples),
                   throttled=list(throttled or [False] * len(samples)), launches=1,
                   memory_mb=100.0)


def test_parse_impls():
    assert bench_step.parse_impls(()) is None
    assert bench_step.parse_impls(["sdpa, sdpa_flash", "ours", "sdpa"]) == ["sdpa", "sdpa_flash",
                                                                             "ours"]
    with pytest.raises(UsageError, match="unknown implementation 'fa3'"):
        bench_step.parse_impls(["fa3"])


def test_result_rows_speedups_and_peak():
    runs = [_run("ours", [0.50] * 30), _run("sdpa", [1.00] * 30),
            _run("sdpa_flash", [0.80] * 30), _run("sdpa_efficient", [], status="unsupported",
                                                   note="No available kernel")]
    rows = bench_step.result_rows(CFG, runs, ceiling=700.0)
    by = {r["impl"]: r for r in rows}
    assert by["ours"]["speedup_vs_sdpa"] == pytest.approx(2.0)
    assert by["ours"]["speedup_vs_best"] == pytest.approx(0.8 / 0.5)  # flash is the best SDPA
    assert by["sdpa"]["speedup_vs_sdpa"] == pytest.approx(1.0)
    assert by["sdpa_flash"]["speedup_vs_best"] == pytest.approx(1.0)
    expected_tflops = CFG.flops / 0.5e-3 / 1e12
    assert by["ours"]["tflops"] == pytest.approx(expected_tflops)
    assert by["ours"]["pct_peak"] == pytest.approx(100 * expected_tflops / 700.0)
    eff = by["sdpa_efficient"]
    assert eff["status"] == "unsupported" and eff["latency_ms"] is None
    assert eff["tflops"] is None and eff["note"] == "No available kernel"


def test_wrong_kernel_gets_no_speed():
    runs = [_run("ours", [], status="wrong", note="max abs error 0.5"), _run("sdpa", [1.0] * 5)]
    by = {r["impl"]: r for r in bench_step.result_rows(CFG, runs, ceiling=None)}
    assert by["ours"]["latency_ms"] is None and by["ours"]["speedup_vs_sdpa"] is None
    assert by["sdpa"]["pct_peak"] is None  # no ceiling, no percentage


def test_slowed_samples_are_left_out_and_power_capped_ones_kept():
    from sessionkit.nvml import REASON_HW_SLOWDOWN, REASON_SW_POWER_CAP, REASON_SW_THERMAL

    samples = [1.0] * 10 + [2.0] * 4
    # heat: the four slow samples are left out; the power cap: they stay in, counted
    heat = [0] * 10 + [REASON_SW_THERMAL] * 4
    stats = summarize_samples(samples, [r != 0 for r in heat], heat)
    assert stats["latency_ms"] == 1.0 and stats["throttled_samples"] == 4
    assert stats["left_out"] == 4 and not stats["used_slowed"]
    capped = [REASON_SW_POWER_CAP] * 14
    stats = summarize_samples(samples, [True] * 14, capped)
    assert stats["latency_ms"] == 1.0 and stats["throttled_samples"] == 14
    assert stats["left_out"] == 0 and stats["slowed_samples"] == 0
    # slowed most of the time: that is the steady state, so all samples count
    slowed = [0] * 4 + [REASON_HW_SLOWDOWN | REASON_SW_POWER_CAP] * 10
    stats = summarize_samples([1.0] * 4 + [2.0] * 10, [r != 0 for r in slowed], slowed)
    assert stats["latency_ms"] == 2.0 and stats["used_slowed"]
    # rows stored without reasons fall back to the throttled flag
    stats = summarize_samples(samples, [False] * 10 + [True] * 4)
    assert stats["latency_ms"] == 1.0 and stats["left_out"] == 4
    runs = [ImplRun("sdpa", samples=[1.0] * 4 + [2.0] * 10, throttled=[r != 0 for r in slowed],
                    reasons=slowed),
            ImplRun("sdpa_flash", samples=samples, throttled=[r != 0 for r in heat], reasons=heat)]
    rows = bench_step.result_rows(CFG, runs, ceiling=None)
    assert rows[0]["throttled_samples"] == 10 and "median of all" in rows[0]["note"]
    assert rows[1]["note"] == "4 samples under a heat or hardware slowdown left out"


def test_launch_batching_and_input_sets():
    assert launches_for(1.0) == 1 and launches_for(0.25) == 1
    assert launches_for(0.1) == 3
    assert launches_for(0.005) == 50
    assert launches_for(0.0) == launches_for(float("nan")) == 512
    assert input_sets_for(1 << 20, 50) == 50
    assert input_sets_for(1 << 30, 1) == 2  # 2 GiB cap
    assert input_sets_for(4 << 30, 1) == 1


def test_csv_has_the_documented_columns(tmp_path):
    runs = [_run("ours", [0.5] * 3), _run("sdpa", [1.0] * 3)]
    rows = bench_step.result_rows(CFG, runs, ceiling=700.0)
    path = bench_step.write_csv(tmp_path / "out" / "bench.csv", rows)
    with open(path) as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 2
    for col in ("implementation", "dtype", "batch_size", "seq_len_q", "seq_len_k", "head_dim",
                "num_heads", "causal", "latency_ms", "iqr_ms", "samples", "tflops", "pct_peak",
                "memory_mb", "throttled_samples"):
        assert col in lines[0]
    assert lines[0]["implementation"] == "ours" and lines[0]["causal"] == "1"
    assert float(lines[1]["latency_ms"]) == 1.0 and lines[1]["samples"] == "3"


def test_csv_unwritable_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot write"):
        bench_step.write_csv(tmp_path / "file" / "x.csv", [])


def test_an_unwritable_csv_path_is_refused_before_anything_is_timed(make_context, tmp_path):
    """--csv is written after the whole grid is measured; a path that cannot be written is refused
    when the step starts instead (it is, on a machine without a GPU too: before the skip)."""
    (tmp_path / "file").write_text("")
    folder = tmp_path / "folder"
    folder.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    cases = [(tmp_path / "file" / "x.csv", "cannot write .* is not a folder"),
             (folder, "is a directory")]
    import os

    if os.geteuid() != 0:  # root writes anywhere
        cases.append((locked / "new" / "x.csv", "cannot write .*permission denied"))
    try:
        for path, said in cases:
            with pytest.raises(UsageError, match=said):
                steps_bench.BenchStep().run(make_context({"grid": "quick", "csv_path": str(path)},
                                                         name="bench"))
    finally:
        locked.chmod(0o755)
    bench_step.check_csv_target(tmp_path / "new" / "deeper" / "x.csv")  # made when written


def test_a_csv_path_every_output_refuses_is_refused_before_anything_is_timed(tmp_path):
    """--csv had none of the checks every -o output makes: a dangling symbolic link (writing
    through it makes its target, and with the CSV's folders made first, the folders on the way),
    a path below a dangling folder link ("File exists" after the whole grid was timed) and the
    session database itself (which the CSV would have replaced). The step ends failed at its
    start, in the -o outputs' words, before the skip on a machine without a GPU, and nothing is
    made or changed."""
    import json
    import os

    from click.testing import CliRunner

    from sessionkit.cli import cli
    from sessionkit.db import open_db

    runner = CliRunner()
    assert runner.invoke(cli, ["start", "--objective", "csv"]).exit_code == 0
    link, folder_link = tmp_path / "link.csv", tmp_path / "dl"
    target = tmp_path / "nowhere" / "deeper" / "out.csv"
    link.symlink_to(target)
    folder_link.symlink_to(tmp_path / "gone")
    database = tmp_path / "sessions.db"
    cases = [(link, f"cannot write {link}: it is a symbolic link to {target}, which does not exist"),
             (folder_link / "sub" / "x.csv", f"cannot write {folder_link / 'sub' / 'x.csv'}: its folder "
                                             f"{folder_link} is a symbolic link to {tmp_path / 'gone'}, "
                                             "which does not exist"),
             (database, f"will not write {database}: it is the session database (or one of its files); "
                        "give another output path")]
    for path, said in cases:
        out = runner.invoke(cli, ["step", "bench", "--grid", "quick", "--csv", str(path)])
        assert out.exit_code == 1, out.output
        assert "bench FAILED in " in out.output and out.output.rstrip().endswith(said), out.output
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "gone").exists()
    assert os.readlink(link) == str(target) and os.readlink(folder_link) == str(tmp_path / "gone")
    db = open_db(database)
    rows = db.execute("SELECT status, message, options FROM steps ORDER BY seq").fetchall()
    assert [(status, message) for status, message, _ in rows] == [("failed", said) for _, said in cases]
    assert [json.loads(options)["csv_path"] for _, _, options in rows] == [str(p) for p, _ in cases]
    db.conn.close()


def test_results_table():
    rows = bench_step.result_rows(CFG, [_run("ours", [0.5] * 3), _run("sdpa", [1.0] * 3),
                                        _run("sdpa_cudnn", [], status="wrong")], ceiling=None)
    table = bench_step.results_table(rows)
    header, line = table.splitlines()
    assert header.split()[-4:] == ["ours", "sdpa", "cudnn", "ours/sdpa"]
    assert line.startswith("bf16 B4 H16 S4096 D128 causal")
    assert "WRONG" in line and line.endswith("2.00x")
    assert f"{CFG.flops / 0.5e-3 / 1e12:.0f}" in line


def test_session_ceiling_reuse(make_context, db):
    ctx = make_context(name="bench")
    assert bench_step.session_ceiling(db, ctx.session["id"]) is None
    ctx.metric("matmul_bf16_tflops", 712.5, unit="TFLOP/s", subject="ceiling")
    ctx.metric("matmul_bf16_tflops", 1.0, unit="TFLOP/s", subject="something else")
    assert bench_step.session_ceiling(db, ctx.session["id"]) == 712.5


def test_step_skips_without_cuda(make_context):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only path")
    result = steps_bench.BenchStep().run(make_context({"grid": "quick"}, name="bench"))
    assert result.status == "skipped" and "CUDA" in result.message


def test_step_rejects_bad_options_before_touching_the_gpu(make_context):
    from sessionkit.steps.bench import BenchOptions

    with pytest.raises(UsageError, match="no grid named"):
        steps_bench.BenchStep().run(make_context({"grid": "nope"}, name="bench"))
    for bad in (-1, 0):
        with pytest.raises(UsageError, match=r"'--time-limit': .* is not in the range x>0"):
            BenchOptions(time_limit_s=bad)
    with pytest.raises(UsageError, match="'--time-limit': bad duration '0s'"):
        BenchOptions.parse({"time_limit_s": "0s"})
    for bad in (-0.5, 11):
        with pytest.raises(UsageError, match=r"'--cooldown': .* is not in the range 0<=x<=10"):
            BenchOptions.parse({"cooldown": bad})
    for bad in (0, 21):
        with pytest.raises(UsageError, match=r"'--passes': .* is not in the range 1<=x<=20"):
            BenchOptions.parse({"passes": bad})
    with pytest.raises(UsageError, match="'--passes': 2.5 is not a valid integer"):
        BenchOptions.parse({"passes": 2.5})


def test_time_limit_and_preheat_are_parsed_once_into_seconds():
    from sessionkit.steps.bench import BenchOptions

    options = BenchOptions.parse({"time_limit_s": "2m", "preheat_s": "off", "impls": ("sdpa, ours",)})
    assert (options.time_limit_s, options.preheat_s, options.impls) == (120.0, 0.0, ("sdpa", "ours"))
    assert BenchOptions().time_limit_s == bench_step.DEFAULT_TIME_LIMIT_S
    assert BenchOptions().preheat_s == bench_step.DEFAULT_PREHEAT_S
    assert BenchOptions.parse(options) is options  # typed options are not parsed again


def test_cli_step_bench_is_registered_and_skips(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only path")
    from click.testing import CliRunner

    from sessionkit.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["start", "-m", "bench on cpu"]).exit_code == 0
    result = runner.invoke(cli, ["step", "bench", "--config", "1,8,128,128,64,fp16,0"])
    assert result.exit_code == 125, result.output  # skipped: git bisect's "cannot test"
    assert "skipped" in result.output and "CUDA" in result.output
    bad = runner.invoke(cli, ["step", "bench", "--config", "1,8"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "bad config" in bad.output


def test_preheat_option():
    assert bench_step.parse_preheat(None) == bench_step.DEFAULT_PREHEAT_S
    assert bench_step.parse_preheat("0") == 0.0 and bench_step.parse_preheat("off") == 0.0
    assert bench_step.parse_preheat("20s") == 20.0
    with pytest.raises(UsageError, match="bad duration"):
        bench_step.parse_preheat("soon")
    # a zero length of time in any unit skips it too, as --help says "0 to skip"
    for zero in ("0ms", "0.0s", "0m", "0h0m", " 0 s "):
        assert bench_step.parse_preheat(zero) == 0.0, zero
    for bad in ("-0s", "0x", "0s5"):
        with pytest.raises(UsageError, match="bad duration"):
            bench_step.parse_preheat(bad)


def test_cooldown_rests_the_gpu_in_proportion(monkeypatch):
    from sessionkit.bench import timing

    slept = []
    monkeypatch.setattr(timing.time, "sleep", slept.append)
    timer = timing.Timer.__new__(timing.Timer)  # no GPU needed for the rest logic
    timer.cooldown = 1.5
    timer.rest(0.02)
    timer.rest(0.0)
    timer.cooldown = 0.0
    timer.rest(0.02)
    assert slept == [pytest.approx(0.03)]


def test_cli_rejects_bad_cooldown_and_passes(tmp_path):
    from click.testing import CliRunner

    from sessionkit.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["start", "-m", "bad options"]).exit_code == 0
    for args in (["--cooldown", "-1"], ["--cooldown", "x"], ["--passes", "0"],
                 ["--passes", "21"]):
        result = runner.invoke(cli, ["step", "bench", *args])
        assert result.exit_code != 0 and "Traceback" not in result.output, args


def test_noise_metrics_summarize_the_run():
    rows = [
        {"status": "ok", "samples": 100, "throttled_samples": 10, "pass_spread_pct": 0.5,
         "sm_clock_mhz": 1980.0},
        {"status": "ok", "samples": 100, "throttled_samples": 30, "pass_spread_pct": 1.5,
         "sm_clock_mhz": 1950.0},
        {"status": "ok", "samples": 200, "throttled_samples": 0, "pass_spread_pct": 0.7,
         "sm_clock_mhz": None},
        {"status": "wrong", "samples": 0, "throttled_samples": 0, "pass_spread_pct": None,
         "sm_clock_mhz": None},
    ]
    noise = bench_step.noise_metrics(rows)
    assert noise["pass_spread_median_pct"] == (0.7, "%")
    assert noise["throttled_sample_share"] == (0.1, "fraction")
    assert noise["sm_clock_median_mhz"] == (1965.0, "MHz")
    empty = bench_step.noise_metrics([])
    assert all(value is None for value, _ in empty.values())


def test_preheat_stops_when_the_temperature_levels_off():
    from sessionkit.bench.timing import plateau

    rule = dict(min_s=3.0, window_s=10.0, rise_c=0.5)
    rising = [(t, 40.0 + 2.0 * t) for t in range(0, 21)]  # +2 C per second
    assert plateau(rising[:3], 2.0, True, **rule) == (False, False)  # before min_s
    assert plateau(rising, 20.0, True, **rule) == (False, False)  # still rising
    flat = rising[:11] + [(t, 60.2 + 0.02 * (t - 10)) for t in range(11, 25)]
    # 10 s after t=10 (60 C) the reading is 60.4 C: less than 0.5 C of rise
    assert plateau(flat[:21], 20.0, True, **rule) == (True, True)
    # without a reading 10 s back there is nothing to compare with
    assert plateau(flat[:8], 7.0, True, **rule) == (False, False)
    # without NVML: min_s plus one window, not steady
    assert plateau([], 12.9, False, **rule) == (False, False)
    assert plateau([], 13.0, False, **rule) == (True, False)


def test_run_bench_end_to_end_with_a_fake_gpu(make_context, db, monkeypatch, tmp_path):
    """The whole step on the CPU: a stand-in torch and timer, real passes, storage, CSV, metrics."""
    from step_standins import fake_bench_gpu

    from sessionkit.steps.bench import BenchOptions

    visits = fake_bench_gpu(monkeypatch)
    ctx = make_context(name="bench")
    options = BenchOptions.parse({"configs": ("1,8,512,512,64,fp16,0", "2,8,1024,1024,128,bf16,1"),
                                  "csv_path": str(tmp_path / "b.csv"), "passes": 3, "cooldown": 0.5})
    result = steps_bench.run_bench(ctx, options)
    assert result.status == "passed", result.message
    assert len(visits) == 6 and [v[1] for v in visits] == [False, False, True, True, True, True]
    assert all(v[0] == {"ours", "sdpa", "sdpa_flash"} and v[2] == 10 for v in visits)
    summary = result.summary
    assert summary.passes == 3 and summary.cooldown == 0.5 and summary.graph is False
    assert summary.geomean_speedup_vs_sdpa == pytest.approx(2.0)
    assert summary.sm_clock_median_mhz == 1980.0 and summary.throttled_sample_share == 0.0
    rows = bench_step.step_rows(db, ctx.step_id)
    assert len(rows) == 6 and all(r["samples"] == 36 and r["passes"] == 3 for r in rows)
    metrics = {m["key"]: m["value"] for m in db.query(
        "SELECT key, value FROM metrics WHERE step_id = ?", [ctx.step_id])}
    assert metrics["matmul_bf16_tflops"] == 700.0 and metrics["sm_clock_median_mhz"] == 1980.0
    assert metrics["pass_spread_median_pct"] > 0
    with open(tmp_path / "b.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6


CSV_ON_A_FULL_DISK = textwrap.dedent("""
    set -u
    mount -t tmpfs -o size=1m tmpfs "$1" || exit 77
    cd "$1"
    echo "the last bench's CSV" > bench.csv
    head -c 2000000 /dev/zero > filler 2>/dev/null   # the disk is now full
    "$2" - <<'PY'
    from sessionkit.bench import step
    rows = [{"impl": "ours", "status": "ok", "note": "x" * 1000} for _ in range(100)]
    try:
        step.write_csv("bench.csv", rows)
        print("WRITTEN")
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
    PY
    echo "CONTENT $(cat bench.csv)"
    ls -a
""")


def test_the_csv_is_replaced_whole_or_not_at_all(tmp_path):
    """--csv PATH is checked by the rules of every -o output, but was written in place: a full
    disk (or Ctrl-C) while writing it left the file truncated, the CSV of an earlier bench at that
    path gone. It is written as the -o outputs are now: whole, or the old file is kept."""
    from small_disk import run_on_small_disk

    result = run_on_small_disk(CSV_ON_A_FULL_DISK, tmp_path, "", timeout=120)
    out = result.stdout
    assert "ERROR UsageError cannot write bench.csv: no space left on device" in out, out + result.stderr
    assert "CONTENT the last bench's CSV\n" in out, out
    assert ".tmp" not in out  # no temporary file left behind
