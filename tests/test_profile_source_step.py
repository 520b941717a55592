"""``step profile --source``: the step asks ncu for the warp samples per SASS instruction, stores
the per-opcode table and the hottest instructions, and the report shows them.

The step runs on the stand-in ncu of ``tests/step_standins.py``, whose source page is
``tests/data/ncu_source_sass_sample.csv`` (real, from ncu of CUDA 13.0 on an H200); the expected
figures come from the library's parser, tested against the file in test_profile_source.py. The GPU
test runs the real ncu.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from step_standins import SASS_SAMPLE, SOURCE_FAILURE, fake_ncu, write_fake_ncu

from sessionkit import profile
from sessionkit.profile import parse_source_csv, pick_kernel
from sessionkit.steps.profile import ProfileStep, ProfileSummary
from sessionkit.toolchain import Found

CONFIG = "4,16,4096,4096,128,bf16,0"
KERNEL = "flash_fwd_sm90_bf16_hdim64_causal_shortkeys"
HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)",'
          '"Warp Stall Sampling (Not-issued Samples)","Instructions Executed",'
          '"stall_long_sb","stall_math","stall_wait","stall_selected",'
          '"stall_long_sb (Not Issued)","stall_math (Not Issued)"')


# ---- the step ---------------------------------------------------------------------------------------

def _calls(tmp_path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "ncu-calls.txt").read_text().splitlines()]


def _summary(row) -> dict:
    return row["summary"] if isinstance(row["summary"], dict) else json.loads(row["summary"])


def _run(db, session, **options):
    from sessionkit.runner import run_step

    return run_step(db, session, ProfileStep(), {"kernel": "ours", "config": CONFIG, **options})


def test_step_without_source_asks_ncu_for_no_source(db, session, tmp_path, monkeypatch):
    fake_ncu(tmp_path, monkeypatch)
    row = _run(db, session)
    assert row["status"] == "passed"
    calls = _calls(tmp_path)
    assert not any("SourceCounters" in c or "source" in c for c in calls)
    summary = _summary(row)
    assert summary["sass_samples"] is None and summary["source_error"] is None
    assert "SASS" not in row["message"]


def test_step_with_source_records_opcodes_hottest_metrics_and_the_csv(db, session, tmp_path,
                                                                     monkeypatch):
    fake_ncu(tmp_path, monkeypatch)
    row = _run(db, session, source=True)
    assert row["status"] == "passed", row["message"]
    calls = _calls(tmp_path)
    prof_call = next(c for c in calls if "--export" in c)
    assert prof_call[prof_call.index("SourceCounters") - 1] == "--section"
    assert prof_call[prof_call.index("--import-source") + 1] == "no"
    assert [c for c in calls if "source" in c] == [
        ["--import", str(Path(prof_call[prof_call.index("--export") + 1] + ".ncu-rep")),
         "--page", "source", "--csv", "--print-source", "sass"]]

    [expected] = parse_source_csv(SASS_SAMPLE.read_text())
    summary = _summary(row)
    assert summary["sass_kernel"] == KERNEL
    assert summary["sass_samples"] == expected.total_samples == 1859
    assert summary["sass_instructions"] == 300
    assert summary["sass_opcodes"] == profile.opcode_rows(expected)
    assert summary["sass_opcodes"][0]["opcode"] == "MUFU"
    assert summary["sass_hottest"] == profile.hottest_rows(expected, 10)
    assert summary["sections"][-1] == "SourceCounters" and summary["source_error"] is None
    assert row["message"].endswith(f"; SASS: MUFU {100 * 342 / 1859:.0f} % of warp samples")

    metrics = db.query("SELECT key, value, unit, subject FROM metrics WHERE step_id = ? "
                       "AND key LIKE 'sass%' ORDER BY id", [row["id"]])
    metrics = [dict(m) for m in metrics]
    assert metrics[0]["key"] == "sass_samples" and metrics[0]["value"] == 1859
    shares = {m["subject"]: m["value"] for m in metrics if m["key"] == "sass_samples_pct"}
    assert len(shares) == 10 and shares["MUFU"] == pytest.approx(100 * 342 / 1859)
    assert all(m["unit"] == "%" for m in metrics[1:])
    artifacts = {Path(a["path"]).name: a for a in db.query(
        "SELECT path, kind, size_bytes FROM artifacts WHERE step_id = ?", [row["id"]])}
    saved = artifacts["profile-source.csv"]
    assert saved["kind"] == "csv" and Path(saved["path"]).read_text() == SASS_SAMPLE.read_text()


@pytest.mark.parametrize("standin, words", [
    (dict(source_fails=True), f"ncu --page source exited with status 1: {SOURCE_FAILURE}"),
    (dict(source_text=f'"Kernel Name","k",\n{HEADER}\n'),
     "ncu's source page lists no instructions for kernel 'k' (only its header)"),
    (dict(source_text="==WARNING== nothing to show\n"), "no SASS table in ncu's source page"),
])
def test_a_failed_source_export_keeps_the_kernel_profile(db, session, tmp_path, monkeypatch,
                                                         standin, words):
    fake_ncu(tmp_path, monkeypatch, **standin)
    row = _run(db, session, source=True)
    assert row["status"] == "passed"
    assert "\n" not in row["message"] and f"; no SASS breakdown: {words}" in row["message"]
    summary = _summary(row)
    assert words in summary["source_error"] and summary["sass_samples"] is None
    assert summary["verdict"] in ("compute-bound", "memory-bound", "latency-bound")
    keys = {m["key"] for m in db.query("SELECT key FROM metrics WHERE step_id = ?", [row["id"]])}
    assert {"duration_ms", "tensor_pipe_pct"} <= keys and "sass_samples" not in keys
    names = {Path(a["path"]).name for a in db.query(
        "SELECT path FROM artifacts WHERE step_id = ?", [row["id"]])}
    assert "profile-source.csv" in names  # what ncu printed, kept to look at


def test_cli_profile_source_without_a_gpu_behaves_as_without_source(monkeypatch, tmp_path):
    """On this machine as it is (no GPU here, ncu or not), and with an ncu but no GPU: the same exit
    status and the same skip message with --source as without."""
    from click.testing import CliRunner

    from sessionkit.cli import cli

    runner = CliRunner()

    assert runner.invoke(cli, ["start", "p", "--objective", "profile"]).exit_code == 0

    def both() -> list[tuple[int, str]]:
        out = []
        for extra in ([], ["--source"]):
            res = runner.invoke(cli, ["step", "profile", "--kernel", "sdpa", *extra])
            assert "Traceback" not in res.output
            out.append((res.exit_code, re.sub(r"(?m)^\[\d+\]", "[N]", res.output)))
        return out

    skip, _ = profile.gpu_facts()
    if skip is None:
        pytest.skip("a GPU is visible here: the profile would run")
    as_is = both()
    assert as_is[0] == as_is[1] and as_is[0][0] == 125
    path = write_fake_ncu(tmp_path)
    monkeypatch.setattr("sessionkit.toolchain.find_cuda_tool", lambda tool: Found(path, True, "PATH"))
    with_ncu = both()
    assert with_ncu[0] == with_ncu[1] and with_ncu[0][0] == 125
    assert f"[N] profile skipped: {skip}\n" in with_ncu[0][1]
    assert not (tmp_path / "ncu-calls.txt").exists() or not any(
        "--export" in c for c in _calls(tmp_path))


# ---- the report -------------------------------------------------------------------------------------

def test_report_shows_where_the_warps_stall(db, session, tmp_path, monkeypatch):
    from sessionkit.report import session_report

    fake_ncu(tmp_path, monkeypatch)
    row = _run(db, session, source=True)
    summary = _summary(row)
    text = session_report(db, session["number"]).text
    part = text[text.index("**Where the warps stall (SASS).**"):]
    assert part.startswith(f"**Where the warps stall (SASS).** 1,859 warp samples of `{KERNEL}` "
                           "over 300 instructions")
    assert "| opcode | share of samples | samples | instructions executed | top reasons |" in part
    for o in summary["sass_opcodes"][:12]:
        reasons = ", ".join(f"{n} {p:.0f} %" for n, p in o["reasons"])
        assert (f"| `{o['opcode']}` | {o['share_pct']:.1f} % | {o['samples']:,} | "
                f"{o['executed']:,} | {reasons} |") in part
    rest = summary["sass_opcodes"][12:]
    assert rest, "the fixture has more than 12 opcodes with samples"
    assert (f"| {len(rest)} other opcodes | {sum(o['share_pct'] for o in rest):.1f} % | "
            f"{sum(o['samples'] for o in rest):,} | | |") in part
    assert "The 10 hottest instructions (offset: bytes from the kernel's first instruction):" in part
    for h in summary["sass_hottest"]:
        reasons = ", ".join(f"{n} {p:.0f} %" for n, p in h["reasons"])
        assert (f"| `0x{h['offset']:04x}` | `{h['sass']}` | {h['share_pct']:.2f} % | "
                f"{h['samples']:,} | {reasons} |") in part
    assert part.index("| opcode |") < part.index("hottest") < part.index("Suggestions:")

    # the figures are read from the database: change the stored summary, the report changes
    # (a share is computed from the stored counts: 100 * samples / sass_samples)
    stored = _summary(row)
    stored["sass_opcodes"][0]["samples"] = 1000
    stored["sass_samples"] = 4000
    stored["sass_hottest"] = stored["sass_hottest"][:3]
    with db.conn:
        db.execute("UPDATE steps SET summary = ? WHERE id = ?", [json.dumps(stored), row["id"]])
    after = session_report(db, session["number"]).text
    assert f"| `MUFU` | 25.0 % | 1,000 |" in after and "The 3 hottest instructions (offset" in after


def test_report_says_why_there_is_no_breakdown(db, session, tmp_path, monkeypatch):
    from sessionkit.report import session_report

    fake_ncu(tmp_path, monkeypatch, source_fails=True)
    _run(db, session, source=True)
    text = session_report(db, session["number"]).text
    assert (f"**Where the warps stall (SASS):** not recorded: ncu --page source exited with "
            f"status 1: {SOURCE_FAILURE}.") in text


def test_report_without_source_has_no_sass_section(db, session, tmp_path, monkeypatch):
    from sessionkit.report import session_report

    fake_ncu(tmp_path, monkeypatch)
    _run(db, session)
    assert "Where the warps stall" not in session_report(db, session["number"]).text


def test_damaged_sass_facts_are_left_out_not_shown():
    from sessionkit.report.data import sass_section

    summary = ProfileSummary.from_json({
        "sass_samples": 10, "sass_kernel": "k",
        "sass_opcodes": [{"opcode": "MUFU", "samples": 6, "share_pct": 60.0,
                          "reasons": [["wait", 50.0], ["bad"], [3, 4]]},
                         {"opcode": "FADD", "samples": "many", "share_pct": 40.0},
                         {"opcode": "BRA", "samples": 1, "share_pct": 10.0, "reasons": 5},
                         "not a dict"],
        "sass_hottest": [{"sass": "MUFU.EX2 R1, R2", "samples": 6, "share_pct": 60.0,
                          "offset": -16},
                         {"sass": "", "samples": 1, "share_pct": 1.0}]})
    section = sass_section(summary)
    assert [o["opcode"] for o in section["opcodes"]] == ["MUFU", "BRA"]
    assert section["opcodes"][1]["reasons"] == []
    assert section["opcodes"][0]["reasons"] == [["wait", 50.0]]
    assert [(h["sass"], h["offset"]) for h in section["hottest"]] == [("MUFU.EX2 R1, R2", None)]
    assert sass_section(ProfileSummary.from_json({"sass_samples": "x"})) is None


# ---- on the GPU -------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_profile_source_on_the_gpu(db, session):
    from sessionkit.runner import run_step
    from sessionkit.toolchain import find_cuda_tool

    if find_cuda_tool("ncu").path is None:
        pytest.skip("needs Nsight Compute (ncu not found)")
    row = run_step(db, session, ProfileStep(),
                   {"kernel": "sdpa", "config": "1,8,1024,1024,128,bf16,1", "warmup": 2,
                    "source": True})
    assert row["status"] == "passed", row["message"]
    summary = _summary(row)
    assert summary["source_error"] is None, summary["source_error"]
    assert summary["sass_samples"] > 0 and summary["sass_instructions"] > 0
    assert summary["sass_opcodes"] and summary["sass_hottest"]
    assert sum(o["samples"] for o in summary["sass_opcodes"]) == summary["sass_samples"]
    csv_path = next(db.query("SELECT path FROM artifacts WHERE step_id = ? AND path LIKE "
                             "'%profile-source.csv'", [row["id"]]))["path"]
    table = pick_kernel(parse_source_csv(Path(csv_path).read_text()), summary["kernel_name"])
    assert table.kernel_name == summary["sass_kernel"]
    assert table.total_samples == summary["sass_samples"]
    assert os.path.getsize(csv_path) > 0
