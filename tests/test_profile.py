"""The profile step: ncu CSV parsing, the decision tree, ceilings, and the step's skip/fail paths.

CPU tests drive the step with a stand-in ``ncu`` script that replays the committed sample CSV
(``tests/data/ncu_sample.csv``, captured from torch SDPA on an H100). The GPU test runs the real ncu.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionkit import profile
from sessionkit.attention import IMPLS, parse_config
from sessionkit.errors import ConfigError, UsageError
from sessionkit.profile import (Ceilings, KernelNumbers, KernelRecord, classify, load_tree,
                                make_facts, parse_ncu_csv, parse_profile_config)
from sessionkit.steps.profile import ProfileStep
from sessionkit.toolchain import Found
from step_standins import H100, PERM_OUTPUT, SAMPLE, fake_ncu, write_fake_ncu

ROOT = Path(__file__).resolve().parent.parent
CFG = parse_profile_config(profile.DEFAULT_CONFIG)


# ---- configuration --------------------------------------------------------------------------------

def test_profile_config_is_the_attention_config_text():
    cfg = parse_profile_config(" 2, 8,1024,2048, 64, FP16, causal ")
    assert cfg.spec == "2,8,1024,2048,64,fp16,1" and parse_profile_config(cfg.spec) == cfg
    assert parse_profile_config("8,32,1,4096,128,bf16,br,8").bottom_right


@pytest.mark.parametrize("head_dim, fused", [(8, True), (64, True), (96, True), (256, True),
                                             (100, False), (264, False), (512, False)])
def test_profile_config_takes_the_head_dims_sdpa_fuses(head_dim, fused):
    text = f"4,16,4096,4096,{head_dim},bf16,0"
    if fused:
        assert parse_profile_config(text).head_dim == head_dim
        return
    with pytest.raises(UsageError, match=re.escape(
            f"bad config '{text}': head_dim must be a multiple of 8, at most 256, to profile")):
        parse_profile_config(text)


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.text(max_size=40),
                 st.integers(1, 300).map(lambda d: f"1,2,64,64,{d},bf16,1")))
def test_profile_config_is_the_shared_parser_and_the_head_dim_rule(text):
    try:
        shared = parse_config(text)
    except UsageError:
        shared = None
    try:
        got = parse_profile_config(text)
    except UsageError as exc:
        assert "\n" not in str(exc)
        assert shared is None or shared.head_dim % 8 or shared.head_dim > 256
        return
    assert got == shared


def test_flops_and_least_traffic_of_the_default_config():
    assert CFG.flops == 4 * 4 * 16 * 4096 * 4096 * 128
    assert CFG.min_bytes == 4 * 16 * 4 * 4096 * 128 * 2  # Q, K, V, O, 2 bytes each


# ---- reading ncu's CSV ---------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False))
def test_parse_number_reads_ncu_thousands_separators(x):
    assert profile.parse_number(f"{x:,.2f}") == pytest.approx(round(x, 2), abs=0.006)


@pytest.mark.parametrize("text", ["", "n/a", "(128, 1, 1)", "1,2", "inf", None])
def test_parse_number_gives_none_for_non_numbers(text):
    assert profile.parse_number(text) is None


def test_scaled_converts_ncu_units():
    assert profile.scaled(1500.0, "usecond", "ms") == pytest.approx(1.5)
    assert profile.scaled(65.54, "Kbyte/block", "byte") == pytest.approx(65540)
    assert profile.scaled(3.0, "", "ms") == 3.0
    assert profile.scaled(3.0, "furlong", "ms") is None


def _sample_record() -> KernelRecord:
    records = parse_ncu_csv(SAMPLE.read_text())
    return profile.main_kernel(records)


def test_sample_csv_is_a_raw_page_with_units():
    records = parse_ncu_csv(SAMPLE.read_text())
    assert len(records) == 1
    rec = records[0]
    assert rec.name.startswith("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma")
    assert rec.units["gpu__time_duration.sum"] == "us" and rec.text["gpu__time_duration.sum"] == "817.376000"
    assert rec.units["launch__shared_mem_per_block_dynamic"] == "Kbyte/block"
    assert rec.number("device__attribute_l2_cache_size") == 52_428_800  # "52,428,800" in the file


def test_sample_numbers_are_the_contract_set():
    """The SDPA (cuDNN) kernel at B=4 H=16 S=4096 D=128 bf16 on an H100, as ncu 2025.3.1 saw it."""
    numbers = profile.kernel_numbers(_sample_record())
    assert numbers.duration_ms == pytest.approx(0.817376)
    assert numbers.sm_throughput_pct == pytest.approx(73.302892)
    assert numbers.dram_throughput_pct == pytest.approx(9.588099)
    assert numbers.memory_throughput_pct == pytest.approx(47.598001)
    assert numbers.tensor_pipe_pct == pytest.approx(75.96389)
    assert numbers.achieved_occupancy_pct == pytest.approx(14.063625)
    assert numbers.theoretical_occupancy_pct == pytest.approx(18.75)
    assert numbers.registers_per_thread == 168
    assert numbers.smem_per_block_bytes == pytest.approx(232_448)
    assert numbers.l2_hit_rate_pct == pytest.approx(89.99444)
    assert numbers.dram_bytes == pytest.approx(201.813248e6 + 60.897792e6)
    assert numbers.waves_per_sm == 1 and numbers.block_threads == 384
    assert numbers.occupancy_limiters == ["registers", "shared_mem"]
    assert "selected" not in numbers.stalls
    assert sum(numbers.stalls.values()) == pytest.approx(100.0)
    top = numbers.top_stalls(3)
    assert [name for name, _ in top] == ["barrier", "wait", "long_scoreboard"]
    assert top[0][1] == pytest.approx(100 * 1.368 / sum(_SAMPLE_STALL_RATIOS))


# The sample's smsp__average_warps_issue_stalled_*_per_issue_active.ratio values, "selected" left out.
_SAMPLE_STALL_RATIOS = (1.368, 0.017861, 0.558524, 0.000032, 0.044740, 0.000786, 0, 0.607575,
                        0.065625, 0, 0.021796, 0.000009, 0.087370, 0.253199, 0.198240, 0, 0,
                        0.893427)


def test_sample_classifies_as_compute_bound_and_the_ceiling_changes_the_move():
    numbers = profile.kernel_numbers(_sample_record())
    tree = load_tree()
    unmeasured = classify(make_facts(numbers, CFG, "sdpa", Ceilings(tbs=2.96)), tree)
    assert unmeasured.verdict == "compute-bound"
    leaves = [m["leaf"] for m in unmeasured.suggestions]
    assert leaves[0] == "compute-not-mma" and "stall-barrier" in leaves
    # 0.817 ms is 673 TFLOP/s: with bench's 762 TFLOP/s ceiling that is 88 %, near the ceiling.
    measured = classify(make_facts(numbers, CFG, "sdpa", Ceilings(tflops=762.0, tbs=2.96)), tree)
    assert measured.facts["tflops"] == pytest.approx(672.59, abs=0.01)
    assert measured.suggestions[0]["leaf"] == "compute-near-ceiling"


def test_details_page_is_read_too():
    text = textwrap.dedent('''\
        ==PROF== Connected to process 1 (/usr/bin/python3)
        "ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
        "0","1","python3","h","k_small","1","7","(128, 1, 1)","(8, 1, 1)","0","9.0","S","gpu__time_duration.sum","usecond","12.50"
        "1","1","python3","h","k_big","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","S","gpu__time_duration.sum","msecond","1.25"
        "1","1","python3","h","k_big","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","S","dram__bytes_read.sum","Mbyte","1,234.50"
        "1","1","python3","h","k_big","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","S","dram__bytes_write.sum","Kbyte","500"
        "1","1","python3","h","k_big","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0","S","launch__shared_mem_per_block_dynamic","Kbyte/block","196.61"
        ''')
    records = parse_ncu_csv(text)
    assert [r.name for r in records] == ["k_small", "k_big"]
    numbers = profile.kernel_numbers(profile.main_kernel(records))
    assert numbers.kernel_name == "k_big"
    assert numbers.duration_ms == pytest.approx(1.25)
    assert numbers.dram_bytes == pytest.approx(1_234.5e6 + 500e3)
    assert numbers.smem_per_block_bytes == pytest.approx(196_610)


def test_output_without_a_csv_header_is_an_error():
    with pytest.raises(profile.ProfileError, match="no ncu CSV header"):
        parse_ncu_csv("==ERROR== something went wrong\n")


def test_stall_shares_pick_the_richest_family_and_drop_selected():
    rec = KernelRecord(0, "k", text={
        "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio": "3",
        "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio": "1",
        "smsp__average_warps_issue_stalled_selected_per_issue_active.ratio": "1",
        "smsp__pcsamp_warps_issue_stalled_wait": "10",
    })
    assert profile.stall_shares(rec) == {"long_scoreboard": 75.0, "barrier": 25.0}


# ---- the decision tree ----------------------------------------------------------------------------

def _pattern_ids() -> set[str]:
    ids = set()
    for md in (ROOT / "patterns").glob("*.md"):
        text = md.read_text()
        match = re.match(r"\+\+\+\n(.*?)\n\+\+\+", text, re.S)
        if match:
            ids.add(tomllib.loads(match.group(1))["id"])
    return ids


def test_tree_loads_and_every_leaf_names_a_pattern_that_exists():
    tree = load_tree()
    ids = _pattern_ids()
    assert ids, "patterns/*.md have no ids"
    assert [v.name for v in tree.verdicts] == ["compute-bound", "memory-bound", "latency-bound"]
    for leaf in tree.leaves + [tree.fallback]:
        assert leaf.text and leaf.pattern in ids, (leaf.id, leaf.pattern)


def _facts(**numbers):
    kernel = numbers.pop("kernel", "ours")
    ceilings = numbers.pop("ceilings", Ceilings(tflops=762.0, tbs=2.96))
    base = dict(duration_ms=2.0, sm_throughput_pct=30.0, dram_throughput_pct=10.0,
                memory_throughput_pct=30.0, tensor_pipe_pct=25.0, achieved_occupancy_pct=40.0,
                l2_hit_rate_pct=90.0, dram_bytes=float(CFG.min_bytes), waves_per_sm=2.0)
    base.update(numbers)
    return make_facts(KernelNumbers("k", **base), CFG, kernel, ceilings)


# (verdict, leaves expected among the moves, kernel numbers); 2 ms for CFG is 275 TFLOP/s = 36 %.
CASES = {
    "compute-near-ceiling": ("compute-bound", dict(duration_ms=0.8, tensor_pipe_pct=85.0,
                                                    sm_throughput_pct=86.0)),
    "compute-not-mma": ("compute-bound", dict(sm_throughput_pct=75.0, tensor_pipe_pct=40.0)),
    "dram-excess-traffic": ("memory-bound", dict(dram_throughput_pct=70.0,
                                                 memory_throughput_pct=70.0,
                                                 dram_bytes=3.0 * CFG.min_bytes)),
    "dram-low-l2-hit": ("memory-bound", dict(dram_throughput_pct=80.0, memory_throughput_pct=80.0,
                                             l2_hit_rate_pct=30.0)),
    "onchip-memory": ("memory-bound", dict(memory_throughput_pct=85.0)),
    "stall-long-scoreboard": ("latency-bound", dict(stalls={"long_scoreboard": 60.0, "wait": 40.0})),
    "stall-barrier": ("latency-bound", dict(stalls={"barrier": 50.0, "long_scoreboard": 10.0,
                                                    "wait": 40.0})),
    "stall-shared-memory": ("latency-bound", dict(stalls={"mio_throttle": 70.0, "wait": 30.0})),
    "stall-mma-wait": ("latency-bound", dict(stalls={"gmma": 80.0, "barrier": 20.0})),
    "stall-instruction-fetch": ("latency-bound", dict(stalls={"no_instruction": 90.0,
                                                              "wait": 10.0})),
    "occupancy-registers": ("latency-bound", dict(achieved_occupancy_pct=12.0,
                                                  occupancy_limiters=["registers"])),
    "occupancy-shared-memory": ("latency-bound", dict(achieved_occupancy_pct=12.0,
                                                      occupancy_limiters=["shared_mem", "warps"])),
    "partial-wave": ("latency-bound", dict(waves_per_sm=0.5)),
    "read-the-report": ("latency-bound", dict()),
}


@pytest.mark.parametrize("leaf", sorted(CASES))
def test_each_branch_of_the_tree(leaf):
    verdict, numbers = CASES[leaf]
    result = classify(_facts(**numbers), load_tree())
    assert result.verdict == verdict
    assert leaf in [m["leaf"] for m in result.suggestions]
    assert all(m["pattern"] and m["text"] for m in result.suggestions)


def test_every_leaf_of_the_tree_has_a_case():
    tree = load_tree()
    assert {leaf.id for leaf in tree.leaves} | {tree.fallback.id} == set(CASES)


def test_fallback_only_when_no_leaf_holds():
    moves = classify(_facts(stalls={"long_scoreboard": 90.0, "wait": 10.0}), load_tree()).suggestions
    assert "read-the-report" not in [m["leaf"] for m in moves]


def test_measured_ceiling_makes_a_fast_kernel_compute_bound_without_counters():
    # No counters at all but duration: 0.9 ms is 611 TFLOP/s = 80 % of the measured 762.
    facts = _facts(duration_ms=0.9, sm_throughput_pct=None, tensor_pipe_pct=None,
                   dram_throughput_pct=None, memory_throughput_pct=None)
    assert facts["tflops"] == pytest.approx(CFG.flops / 0.9e-3 / 1e12)
    assert facts["tflops_pct"] == pytest.approx(100 * facts["tflops"] / 762.0)
    assert classify(facts, load_tree()).verdict == "compute-bound"
    unmeasured = _facts(duration_ms=0.9, sm_throughput_pct=None, tensor_pipe_pct=None,
                        dram_throughput_pct=None, memory_throughput_pct=None, ceilings=Ceilings())
    assert unmeasured["tflops_pct"] is None
    assert classify(unmeasured, load_tree()).verdict == "latency-bound"


def test_missing_numbers_never_trigger_a_move():
    facts = _facts(achieved_occupancy_pct=None, occupancy_limiters=["registers"], waves_per_sm=None)
    leaves = [m["leaf"] for m in classify(facts, load_tree()).suggestions]
    assert "occupancy-registers" not in leaves and "partial-wave" not in leaves


def _write_tree(tmp_path, body: str) -> Path:
    path = tmp_path / "tree.toml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD_TAIL = '''
[[verdicts]]
name = "latency-bound"
summary = "s"
when = []

[fallback]
id = "fb"
pattern = "profile-first"
text = "t"
'''


@pytest.mark.parametrize("body, words", [
    ("[[leaves]]\nid = 'a'\npattern = 'profile-first'\ntext = 't'\nwhen = ['tensr_pct > 1']\n"
     + GOOD_TAIL, "unknown fact 'tensr_pct'"),
    ("[[leaves]]\nid = 'a'\npattern = 'profile-first'\ntext = 't'\nwhen = ['tensor_pct > lots']\n"
     + GOOD_TAIL, "cannot read the value 'lots'"),
    ("[[leaves]]\nid = 'a'\npattern = 'Not A Slug'\ntext = 't'\n" + GOOD_TAIL, "not a pattern id"),
    ("[[leaves]]\nid = 'a'\ntext = 't'\n" + GOOD_TAIL, "needs a non-empty 'pattern'"),
    ("[[leaves]]\nid = 'a'\npattern = 'p'\ntext = 't'\nwhen = [\"verdict == 'slow'\"]\n" + GOOD_TAIL,
     "no verdict named 'slow'"),
    ("[[leaves]]\nid = 'a'\npattern = 'p'\ntext = 't'\nwhen = ['kernel > 3']\n" + GOOD_TAIL,
     "is not a number"),
    (GOOD_TAIL.split("[fallback]")[0], "needs a [fallback]"),
    ("[[verdicts]]\nname = 'x'\nsummary = 's'\nwhen = ['sm_pct > 1']\n", "last verdict"),
    ("verdicts = [", "not valid TOML"),
])
def test_broken_trees_are_refused_with_the_reason(tmp_path, body, words):
    with pytest.raises(ConfigError, match=re.escape(words)) as err:
        load_tree(_write_tree(tmp_path, body))
    assert "\n" not in str(err.value)


# ---- ceilings -------------------------------------------------------------------------------------

def test_ceilings_come_from_bench_and_the_labelled_h100_default(db, session, make_context):
    bench = make_context(name="bench")
    bench.metric("matmul_bf16_tflops", 701.5, unit="TFLOP/s", subject="ceiling")
    found = profile.find_ceilings(db, session, H100)
    assert found.tflops == 701.5 and "this session" in found.tflops_source
    assert found.tbs == 2.96 and found.tbs_source.startswith("default")
    other = profile.find_ceilings(db, {"id": "elsewhere"}, "NVIDIA A100-SXM4-80GB")
    assert other.tflops == 701.5 and "session" in other.tflops_source  # same host
    assert other.tbs is None


def test_no_ceiling_when_bench_did_not_run(db, session):
    found = profile.find_ceilings(db, session, H100)
    assert found.tflops is None and "sessionkit step bench" in found.tflops_source


# ---- running ncu ----------------------------------------------------------------------------------

def test_ncu_command_never_touches_clocks_and_profiles_one_call():
    cmd = profile.ncu_command("/x/ncu", ["python", "t.py"], Path("/w/profile"), ["a.sum"])
    joined = " ".join(cmd)
    assert "--clock-control none" in joined and "--profile-from-start off" in joined
    assert "--metrics a.sum" in joined and cmd[-2:] == ["python", "t.py"]
    one = profile.ncu_command("/x/ncu", ["python"], Path("/w/p"), [], kernel_regex="flash_fwd")
    assert "--kernel-name regex:flash_fwd --launch-count 1" in " ".join(one)
    assert "--metrics" not in one


def test_only_metrics_ncu_lists_are_requested():
    assert profile.choose_metrics(None) == []
    chosen = profile.choose_metrics({"lts__t_sector_hit_rate", "sm__pipe_tensor_op_hmma_cycles_active"})
    assert chosen == ["lts__t_sector_hit_rate.pct",
                      "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"]


def test_permission_error_gets_the_fix_line():
    reason = profile.ncu_failure(PERM_OUTPUT, 1)
    assert "NVreg_RestrictProfilingToAdminUsers=0" in reason and "\n" not in reason
    assert profile.ncu_failure("==ERROR== Failed to find metric x\n", 1) == "ncu: Failed to find metric x"
    assert profile.ncu_failure("==WARNING== No kernels were profiled.\n", 0).startswith("ncu profiled no")
    assert profile.ncu_failure("fine\n", 0) is None


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    return lambda *, perm=False: fake_ncu(tmp_path, monkeypatch, perm=perm)


def test_step_without_ncu_is_skipped(make_context, monkeypatch):
    monkeypatch.setattr("sessionkit.toolchain.find_cuda_tool", lambda tool: Found(None, False, "nowhere"))
    result = ProfileStep().run(make_context({"kernel": "sdpa"}, name="profile"))
    assert result.status == "skipped" and "ncu not found" in result.message


@pytest.mark.parametrize("torch_module, words", [
    (None, "torch is not installed"),
    (type(sys)("torch"), "no CUDA GPU is visible"),
])
def test_step_without_a_gpu_is_skipped(make_context, monkeypatch, tmp_path, torch_module, words):
    if torch_module is not None:
        torch_module.cuda = type(sys)("torch.cuda")
        torch_module.cuda.is_available = lambda: False
    monkeypatch.setitem(sys.modules, "torch", torch_module)
    path = write_fake_ncu(tmp_path)
    monkeypatch.setattr("sessionkit.toolchain.find_cuda_tool", lambda tool: Found(path, True, "PATH"))
    result = ProfileStep().run(make_context({"kernel": "sdpa"}, name="profile"))
    assert result.status == "skipped" and words in result.message


def _summary(row) -> dict:
    return row["summary"] if isinstance(row["summary"], dict) else json.loads(row["summary"])


def test_permission_error_fails_the_step_with_the_fix(db, session, fake_gpu, capsys):
    from sessionkit.runner import run_step

    fake_gpu(perm=True)
    row = run_step(db, session, ProfileStep(), {"kernel": "sdpa", "config": CFG.spec, "warmup": 3})
    assert row["status"] == "failed"
    assert "NVreg_RestrictProfilingToAdminUsers=0" in row["message"]
    assert _summary(row)["permission_error"] is True
    assert "ERR_NVGPUCTRPERM" in capsys.readouterr().out


def test_step_records_contract_metrics_summary_and_artifacts(db, session, fake_gpu, tmp_path):
    from sessionkit.runner import run_step

    fake_gpu()
    row = run_step(db, session, ProfileStep(), {"kernel": "sdpa", "config": CFG.spec, "warmup": 2})
    assert row["status"] == "passed", row["message"]
    metrics = {r["key"]: r for r in db.query("SELECT * FROM metrics WHERE step_id = ?", [row["id"]])}
    expected = profile.kernel_numbers(_sample_record())
    for key in ("sm_throughput_pct", "dram_throughput_pct", "tensor_pipe_pct",
                "achieved_occupancy_pct", "registers_per_thread", "smem_per_block_bytes",
                "l2_hit_rate_pct", "duration_ms"):
        assert metrics[key]["value"] == pytest.approx(getattr(expected, key)), key
        assert metrics[key]["subject"] == "sdpa"
    summary = _summary(row)
    assert summary["verdict"] in ("compute-bound", "memory-bound", "latency-bound")
    assert summary["config"] == CFG.spec and summary["kernel"] == "sdpa"
    assert [s[0] for s in summary["stalls"]] == [n for n, _ in expected.top_stalls(3)]
    assert summary["suggestions"] and all(s["pattern"] for s in summary["suggestions"])
    assert summary["ceilings"]["dram_source"].startswith("default")
    kinds = {r["kind"] for r in db.query("SELECT kind FROM artifacts WHERE step_id = ?", [row["id"]])}
    assert {"log", "ncu-rep", "csv"} <= kinds
    calls = [json.loads(line) for line in (tmp_path / "ncu-calls.txt").read_text().splitlines()]
    prof = next(c for c in calls if "--export" in c)
    assert prof[prof.index("--metrics") + 1] == "lts__t_sector_hit_rate.pct,dram__bytes_read.sum"
    assert prof[prof.index("--clock-control") + 1] == "none"
    assert prof[prof.index("--config") + 1] == CFG.spec
    target = prof[prof.index("--launch-count") + 2:]  # the command ncu runs, after its own options
    assert target[:3] == [sys.executable, "-m", "sessionkit.profile.target"]


def _installed_copy(tmp_path) -> dict:
    """The sessionkit package alone, copied to a folder of its own as an install would lay it out
    (no checkout around it: no benchmarks/, no tests/), and an environment that imports it first."""
    import shutil

    import sessionkit

    site = tmp_path / "site"
    shutil.copytree(Path(sessionkit.__file__).parent, site / "sessionkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dict(os.environ, PYTHONPATH=str(site))


def test_profile_target_runs_as_a_module_without_the_checkout(tmp_path):
    """``python -m sessionkit.profile.target`` from a folder that holds no checkout, importing the
    copied package: its help, a bad config (usage error) and, on this machine, either the profiled
    call (a GPU) or the one-line reason it cannot run (no GPU)."""
    import subprocess

    env = _installed_copy(tmp_path)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)

    where = run("-c", "import sessionkit.profile.target as t; print(t.__file__)")
    assert where.stdout.strip() == str(tmp_path / "site" / "sessionkit" / "profile" / "target.py")
    helped = run("-m", "sessionkit.profile.target", "--help")
    assert helped.returncode == 0 and "python -m sessionkit.profile.target" in helped.stdout
    assert "{" + ",".join(IMPLS) + "}" in helped.stdout
    bad = run("-m", "sessionkit.profile.target", "--config", "1,2,3")
    assert bad.returncode == 2 and "bad config '1,2,3'" in bad.stderr and "Traceback" not in bad.stderr
    ran = run("-m", "sessionkit.profile.target", "--kernel", "sdpa", "--warmup", "1",
              "--config", "1,8,256,256,64,bf16,1")
    if ran.returncode == 0:
        info = profile.target_info(ran.stdout)
        assert info["kernel"] == "sdpa" and info["config"] == "1,8,256,256,64,bf16,1"
    else:
        skip, _ = profile.gpu_facts()
        assert skip is not None and ran.stderr.strip() == skip and ran.returncode == 1


def test_every_package_ships_in_the_wheel():
    """pyproject's [tool.setuptools] packages lists every package of sessionkit/, so that an install
    from a wheel carries them (the profile target runs from one)."""
    import sessionkit

    root = Path(sessionkit.__file__).parent
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("sessionkit",) + p.parent.relative_to(root).parts)
             for p in root.rglob("__init__.py") if "__pycache__" not in p.parts}
    assert found <= listed, sorted(found - listed)


def test_cli_profile_without_ncu_says_skipped(monkeypatch):
    from click.testing import CliRunner

    from sessionkit.cli import cli

    monkeypatch.setattr("sessionkit.toolchain.find_cuda_tool", lambda tool: Found(None, False, "nowhere"))
    runner = CliRunner()
    assert runner.invoke(cli, ["start", "p", "--objective", "profile"]).exit_code == 0
    res = runner.invoke(cli, ["step", "profile", "--kernel", "sdpa"])
    assert res.exit_code == 125 and "skipped" in res.output and "ncu not found" in res.output
    bad = runner.invoke(cli, ["step", "profile", "--config", "1,2"])
    assert bad.exit_code == 2 and "Error: Invalid value for '--config'" in bad.output
    assert "Traceback" not in bad.output


# ---- on the GPU ----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_profile_sdpa_on_the_gpu(db, session):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from sessionkit.runner import run_step
    from sessionkit.toolchain import find_cuda_tool

    if find_cuda_tool("ncu").path is None:
        pytest.skip("needs Nsight Compute (ncu not found)")
    row = run_step(db, session, ProfileStep(),
                   {"kernel": "sdpa", "config": "1,8,1024,1024,128,bf16,1", "warmup": 2})
    assert row["status"] == "passed", row["message"]
    keys = {r["key"] for r in db.query("SELECT key FROM metrics WHERE step_id = ?", [row["id"]])}
    assert {"sm_throughput_pct", "tensor_pipe_pct", "duration_ms", "registers_per_thread"} <= keys
    assert os.path.getsize(next(db.query(
        "SELECT path FROM artifacts WHERE step_id = ? AND kind = 'ncu-rep'", [row["id"]]))["path"]) > 0
