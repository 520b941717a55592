"""``sessionkit step correctness`` end to end: on the CPU with injected kernels, on a GPU for real."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import sessionkit
from sessionkit.cli import cli
from sessionkit.db import open_db
from sessionkit.kernels import correctness
from sessionkit.sessions import start_session
from sessionkit.steps import REGISTRY, get_step
from sessionkit.steps import correctness as correctness_step

CONTRACT_COLUMNS = [
    "id", "step_id", "idx", "dtype", "batch_size", "num_heads", "seq_len_q", "seq_len_k",
    "head_dim", "causal", "layout", "seed", "max_err", "bound", "lse_err", "passed", "worst_index",
    "worst_out", "worst_ref", "failure",
]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def open_session():
    db = open_db(create=True)  # $SESSIONKIT_DB from conftest
    return start_session(db, "check", objective="check the kernel")


def step_rows(name="correctness"):
    db = open_db()
    return [dict(r) for r in db.query("SELECT * FROM steps WHERE name = ? ORDER BY seq", [name])]


def results_for(step_id):
    db = open_db()
    return [dict(r) for r in db.query(
        "SELECT * FROM correctness_results WHERE step_id = ? ORDER BY idx", [step_id])]


def cpu_kernel(corrupt=None):
    """A correct fp32 kernel on the CPU; ``corrupt(q, out)`` may then damage its output."""
    import torch

    def kernel(q, k, v, out, lse, causal, scale, causal_alignment="top_left", enable_gqa=False):
        ratio = q.shape[1] // k.shape[1]
        assert enable_gqa == (ratio != 1)
        k, v = k.repeat_interleave(ratio, 1), v.repeat_interleave(ratio, 1)
        s = (q.double() @ k.double().transpose(-1, -2)) * scale
        if causal:
            sq, sk = s.shape[-2:]
            offset = sk - sq if causal_alignment == "bottom_right" else 0
            s = s.masked_fill(torch.ones(sq, sk, dtype=torch.bool).triu(1 + offset), -math.inf)
        row_lse = torch.logsumexp(s, dim=-1)
        probs = torch.nan_to_num(torch.exp(s - row_lse[..., None]), nan=0.0)
        out.copy_((probs @ v.double()).to(out.dtype))
        lse.copy_(row_lse.float())
        if corrupt is not None:
            corrupt(q, out)

    return kernel


@pytest.fixture
def inject(monkeypatch):
    """Make the step find ``kernel`` on the CPU instead of loading the CUDA kernel."""
    pytest.importorskip("torch")

    def use(kernel):
        monkeypatch.setattr(correctness, "load_kernel",
                            lambda progress=None: correctness.LoadedKernel(kernel, "cpu", "k1"))

    return use


def test_records_the_kernel_family(open_session, monkeypatch):
    """The step names the kernel family that ran (sm90 or the sm80 fallback) in its message and
    summary, so that a session shows which path was checked."""
    pytest.importorskip("torch")
    monkeypatch.setattr(correctness, "load_kernel", lambda progress=None: correctness.LoadedKernel(
        cpu_kernel(), "cpu", "k1", None, "sm80"))
    r = invoke("step", "correctness", "--seed", "7", "--max-seq-len", "64")
    assert r.exit_code == 0, r.output
    (step,) = step_rows()
    assert step["message"].startswith("sm80 kernels: 64 configs passed (seed 7, worst err/bound")
    assert json.loads(step["summary"])["kernel_family"] == "sm80"


def test_registered_and_migrated(db):
    assert REGISTRY["correctness"] == "sessionkit.steps.correctness:CorrectnessStep"
    step = get_step("correctness")
    assert step.name == "correctness" and step.budget_s > 0
    assert [spec.flag for spec in step.options_type.specs()] == ["--seed", "--configs", "--max-seq-len"]
    columns = [c.name for c in db["correctness_results"].columns]
    assert columns[:len(CONTRACT_COLUMNS)] == CONTRACT_COLUMNS
    assert db["correctness_results"].foreign_keys[0].other_table == "steps"


def test_step_modules_do_not_import_torch():
    code = ("import sys, sessionkit.kernels.correctness, sessionkit.kernels.checking, "
            "sessionkit.steps.correctness; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    root = str(Path(sessionkit.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.strip() == "[]"


def test_passes_with_a_correct_kernel(open_session, inject):
    inject(cpu_kernel())
    r = invoke("step", "correctness", "--seed", "1234", "--max-seq-len", "64")
    assert r.exit_code == 0, r.output
    assert "seed 1234 (64 configs; repeat with --seed 1234) on cpu" in r.output
    assert "    64/64 #63 " in r.output
    assert "worst err/bound" in r.output and "bf16 d128 causal" in r.output
    assert "FAIL" not in r.output
    (step,) = step_rows()
    assert step["status"] == "passed"
    summary = json.loads(step["summary"])
    assert (summary["seed"], summary["configs"], summary["passed"], summary["failed"]) == \
        (1234, 64, 64, 0)
    assert summary["device"] == "cpu" and summary["build_key"] == "k1"
    rows = results_for(step["id"])
    assert [r["idx"] for r in rows] == list(range(64))
    assert all(r["passed"] == 1 and r["failure"] is None for r in rows)
    assert all(r["max_err"] <= r["bound"] and r["lse_err"] <= 1e-3 for r in rows)
    assert max(r["seq_len_q"] for r in rows) == 64 and min(r["seq_len_k"] for r in rows) == 1
    assert {r["layout"] for r in rows} == {"bhsd", "bshd"}
    assert summary["worst_ratio"] == pytest.approx(max(r["max_err"] / r["bound"] for r in rows))
    db = open_db()
    metrics = {m["key"]: m["value"] for m in db.query(
        "SELECT key, value FROM metrics WHERE step_id = ?", [step["id"]])}
    assert metrics["configs_passed"] == 64 and metrics["configs_failed"] == 0
    assert metrics["worst_err_ratio"] == pytest.approx(summary["worst_ratio"])

    # the same seed gives the same configs and inputs again
    r = invoke("step", "correctness", "--seed", "1234", "--max-seq-len", "64")
    assert r.exit_code == 0, r.output
    again = results_for(step_rows()[1]["id"])
    keys = ("dtype", "batch_size", "num_heads", "seq_len_q", "seq_len_k", "head_dim", "causal",
            "layout", "seed", "max_err", "lse_err")
    assert [[r[k] for k in keys] for r in again] == [[r[k] for k in keys] for r in rows]


def test_a_random_seed_is_chosen_and_printed(open_session, inject):
    inject(cpu_kernel())
    r = invoke("step", "correctness", "--max-seq-len", "17", "--configs", "50")
    assert r.exit_code == 0, r.output
    seed = json.loads(step_rows()[0]["summary"])["seed"]
    assert f"seed {seed} (50 configs; repeat with --seed {seed})" in r.output


def test_fails_and_names_the_worst_element(open_session, inject):
    import torch

    def corrupt(q, out):
        # a wrong value in one element, for bf16 with head dim 128 only
        if q.dtype == torch.bfloat16 and q.shape[-1] == 128:
            out[0, 0, out.shape[2] - 1, 5] += 2.0

    inject(cpu_kernel(corrupt))
    r = invoke("step", "correctness", "--seed", "99", "--max-seq-len", "64")
    assert r.exit_code == 1, r.output
    (step,) = step_rows()
    assert step["status"] == "failed" and step["exit_code"] == 1
    assert step["message"].startswith("16 of 64 configs failed (seed 99); first: #")
    rows = results_for(step["id"])
    bad = [row for row in rows if row["dtype"] == "bf16" and row["head_dim"] == 128]
    assert len(bad) == 16
    for row in rows:
        assert row["passed"] == (0 if row in bad else 1)
    for row in bad:
        assert row["worst_index"] == f"0,0,{row['seq_len_q'] - 1},5"
        assert row["worst_out"] - row["worst_ref"] == pytest.approx(2.0, abs=0.05)
        assert row["failure"].startswith("max err")
        fail_line = f"FAIL #{row['idx']} bf16 d128 "
        assert fail_line in r.output
        assert f"at b,h,row,col=0,0,{row['seq_len_q'] - 1},5 (ours " in r.output
    summary = json.loads(step["summary"])
    assert (summary["passed"], summary["failed"]) == (48, 16)


def test_unwritten_output_fails_the_step(open_session, inject):
    def corrupt(q, out):
        out[..., -1, :] = float("nan")  # last query row never written

    inject(cpu_kernel(corrupt))
    r = invoke("step", "correctness", "--seed", "5", "--max-seq-len", "64", "--configs", "50")
    assert r.exit_code == 1
    rows = results_for(step_rows()[0]["id"])
    assert all(row["passed"] == 0 and "NaN/Inf" in row["failure"] for row in rows)
    assert all(row["max_err"] == math.inf and row["worst_out"] is None for row in rows)
    assert json.loads(step_rows()[0]["summary"])["nonfinite"] == 50


def test_skipped_without_cuda(open_session):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the skip path is for machines without one")
    r = invoke("step", "correctness")
    assert r.exit_code == 125, r.output  # git bisect run's "cannot test"
    (step,) = step_rows()
    assert step["status"] == "skipped"
    assert step["message"].endswith("; the kernel needs a CUDA GPU")
    assert f"correctness skipped: {step['message']}" in r.output
    assert "CPU-only build" in step["message"] or "no CUDA device" in step["message"]
    assert results_for(step["id"]) == []


def pretend_cuda(monkeypatch, load_extension):
    """torch claims a GPU, and loading the kernels does what ``load_extension`` does."""
    import sessionkit.kernels

    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sessionkit.kernels, "load_extension", load_extension, raising=False)


def test_a_kernel_that_cannot_load_fails_in_one_line(open_session, monkeypatch):
    def broken(progress=None):
        raise OSError("libflash.so: cannot open shared object file\nmore detail")

    pretend_cuda(monkeypatch, broken)
    r = invoke("step", "correctness", "--seed", "1")
    assert r.exit_code == 1
    assert "Traceback" not in r.output
    message = step_rows()[0]["message"]
    assert message == ("cannot load the attention kernel (OSError: libflash.so: cannot open shared "
                       "object file); run 'sessionkit step build' to see the build log")
    assert message in r.output


def test_a_build_error_is_reported_as_the_build_says(open_session, monkeypatch):
    from sessionkit.errors import SessionkitError

    def failing_build(progress):
        progress.note("building the kernels")
        raise SessionkitError("flash_fwd.h:12: error: expected ';'")

    pretend_cuda(monkeypatch, failing_build)
    r = invoke("step", "correctness", "--seed", "1")
    assert r.exit_code == 1
    assert "    building the kernels" in r.output
    assert step_rows()[0]["message"] == "flash_fwd.h:12: error: expected ';'"


@pytest.mark.parametrize("args, text", [
    (["--configs", "49"], "49 is not in the range 50<=x<=100000"),
    (["--max-seq-len", "0"], "0 is not in the range x>=1"),
    (["--seed", "abc"], "'abc' is not a valid integer"),
])
def test_bad_options_exit_2(open_session, args, text):
    r = invoke("step", "correctness", *args)
    assert r.exit_code == 2 and text in r.output and "Traceback" not in r.output
    assert step_rows() == []


def test_options_are_checked_in_the_library_too(make_context, inject):
    from sessionkit.errors import UsageError

    inject(cpu_kernel())
    step = correctness_step.CorrectnessStep()
    with pytest.raises(UsageError, match=r"'--configs': 10 is not in the range 50<=x<=100000"):
        step.run(make_context({"configs": 10}, name="correctness"))
    with pytest.raises(UsageError, match=r"'--max-seq-len': 0 is not in the range x>=1"):
        step.run(make_context({"configs": 50, "max_seq_len": 0}, name="correctness"))


@pytest.mark.gpu
def test_real_kernel_on_a_gpu(open_session):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if "build" in REGISTRY:
        r = invoke("step", "build")
        assert r.exit_code == 0, r.output
    r = invoke("step", "correctness", "--seed", "2024", "--configs", "64")
    rows = results_for(step_rows()[0]["id"])
    failures = [f"#{row['idx']}: {row['failure']}" for row in rows if not row["passed"]]
    assert r.exit_code == 0, r.output + "\n".join(failures)
    assert len(rows) == 64 and all(row["passed"] == 1 for row in rows)
    assert {row["seq_len_q"] for row in rows} >= {1, 17, 113, 4097}
