"""``sessionkit run``: the whole session in one command, with hooks, skips and an honest exit status."""

from __future__ import annotations

import os
import sys

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from sessionkit.errors import ConfigError, StepInterrupted, StepNotFound, UsageError
from sessionkit.session_run import Hooks, parse_hooks, run_session
from sessionkit.steps import Step, StepResult, get_step


class Fake(Step):
    """A stand-in for a built-in step, with its options: passes or fails, records one metric and
    what it was given."""

    budget_s = 5.0

    def __init__(self, name, status="passed", *, exit_code=None, summary=None, interrupt=False):
        self.name, self.status, self.exit_code = name, status, exit_code
        self.summary, self.interrupt = summary or {}, interrupt
        self.options = None
        self.options_type = get_step(name).options_type

    def run(self, context):
        self.options = context.options
        if self.interrupt:
            raise KeyboardInterrupt
        context.metric("ran", 1, unit="count")
        return StepResult(self.status, message=f"{self.name} {self.status}", summary=self.summary,
                          exit_code=self.exit_code)


def factory(**overrides):
    made = {}

    def make(name):
        if name == "run":
            return get_step("run")
        step = overrides.get(name) or Fake(name)
        made[name] = step
        return step

    make.made = made
    return make


PY = sys.executable


def statuses(result):
    return [(r["name"], r["kind"], r["status"]) for r in result.steps]


def test_all_steps_pass(db, tmp_path, capsys):
    make = factory()
    result = run_session(db, objective="everything works", step_factory=make,
                         report_path=tmp_path / "r.md", plots=False)
    assert result.exit_code == 0 and result.session["status"] == "passed"
    assert statuses(result) == [(n, "builtin", "passed") for n in ("preflight", "build", "correctness", "bench")]
    assert make.made["bench"].options.grid == "quick"
    out = capsys.readouterr().out.splitlines()
    for i, name in enumerate(("preflight", "build", "correctness", "bench"), 1):
        assert any(line.startswith(f"[{i}/4] {name} passed") for line in out)
    assert out[-1] == f"Report: {tmp_path / 'r.md'}"
    assert result.outcome == "All 4 steps passed."
    text = (tmp_path / "r.md").read_text()
    assert "**Outcome:** All 4 steps passed." in text and "4 steps: 4 passed." in text


def test_failed_preflight_skips_the_rest_with_its_reason(db, tmp_path):
    checks = [{"name": "gpu", "status": "fail", "finding": "no NVIDIA GPU found", "fix": "run on a GPU"},
              {"name": "nvcc", "status": "pass", "finding": "nvcc 13.0", "fix": None}]
    make = factory(preflight=Fake("preflight", "failed", exit_code=1,
                                  summary={"checks": checks, "passed": 1, "warned": 0, "failed": 1}))
    result = run_session(db, objective="no GPU here", step_factory=make, report_path=tmp_path / "r.md",
                         plots=False)
    assert result.exit_code == 1 and result.session["status"] == "failed"
    assert statuses(result) == [("preflight", "builtin", "failed"), ("build", "builtin", "skipped"),
                                ("correctness", "builtin", "skipped"), ("bench", "builtin", "skipped")]
    assert {r["message"] for r in result.steps[1:]} == {"not run: preflight failed (gpu)"}
    assert "build" not in make.made or make.made["build"].options is None  # never ran
    assert result.outcome == "Preflight failed (gpu); build, correctness and bench skipped."
    text = (tmp_path / "r.md").read_text()
    assert "| gpu | **FAIL** | no NVIDIA GPU found | run on a GPU |" in text
    assert "| 2 | build | 5.0 s | - | skipped | - | not run: preflight failed (gpu) |" in text
    assert "The bench step (step 4) was skipped: not run: preflight failed (gpu)" in text


def test_failed_build_skips_correctness_and_bench(db, tmp_path):
    make = factory(build=Fake("build", "failed", exit_code=2))
    result = run_session(db, objective="broken build", step_factory=make, report_path=tmp_path / "r.md",
                         plots=False)
    assert [r["status"] for r in result.steps] == ["passed", "failed", "skipped", "skipped"]
    assert result.steps[2]["message"] == "not run: build failed (exit 2)"


def test_keep_going_runs_everything(db, tmp_path):
    make = factory(build=Fake("build", "failed", exit_code=2))
    result = run_session(db, objective="broken build", step_factory=make, keep_going=True,
                         report_path=tmp_path / "r.md", plots=False)
    assert [r["status"] for r in result.steps] == ["passed", "failed", "passed", "passed"]
    assert result.exit_code == 1


def test_hooks_are_steps_and_after_hooks_run_after_a_failure(db, tmp_path):
    marker = tmp_path / "stopped"
    hooks = Hooks(before=[[PY, "-c", "print('starting')"]],
                  after=[[PY, "-c", f"open({str(marker)!r}, 'w').write('x')"]])
    make = factory(correctness=Fake("correctness", "failed", exit_code=1))
    result = run_session(db, objective="hooks", step_factory=make, hooks=hooks,
                         report_path=tmp_path / "r.md", plots=False)
    assert statuses(result) == [("hook:before", "hook", "passed"), ("preflight", "builtin", "passed"),
                                ("build", "builtin", "passed"), ("correctness", "builtin", "failed"),
                                ("bench", "builtin", "passed"), ("hook:after", "hook", "passed")]
    assert marker.exists() and result.exit_code == 1
    assert "| 6 | hook:after (hook) |" in (tmp_path / "r.md").read_text()


def test_failed_before_hook_blocks_the_plan(db, tmp_path):
    hooks = Hooks(before=[[PY, "-c", "raise SystemExit(3)"]], after=[[PY, "-c", "pass"]])
    result = run_session(db, objective="hooks", step_factory=factory(), hooks=hooks,
                         report_path=tmp_path / "r.md", plots=False)
    assert [r["status"] for r in result.steps] == ["failed"] + ["skipped"] * 4 + ["passed"]
    assert result.steps[1]["message"].startswith("not run: the before hook ")
    assert result.steps[1]["message"].endswith("-c 'raise SystemExit(3)' failed")
    assert "1 hook failed" in result.outcome


def test_interruption_still_runs_after_hooks_ends_and_reports(db, tmp_path, monkeypatch):
    marker = tmp_path / "stopped"
    hooks = Hooks(after=[[PY, "-c", f"open({str(marker)!r}, 'w').write('x')"]])
    make = factory(build=Fake("build", interrupt=True))
    with pytest.raises(StepInterrupted) as exc:
        run_session(db, objective="ctrl-c", step_factory=make, hooks=hooks,
                    report_path=tmp_path / "r.md", plots=False)
    assert exc.value.exit_code == 130
    assert marker.exists()
    session = next(db.query("SELECT status, outcome FROM sessions"))
    assert session == {"status": "abandoned", "outcome": "Interrupted during build."}
    rows = [(r["name"], r["status"]) for r in db.query("SELECT name, status FROM steps ORDER BY seq")]
    assert rows == [("preflight", "passed"), ("build", "interrupted"), ("hook:after", "passed")]
    assert "**INTERRUPTED** (exit 130)" in (tmp_path / "r.md").read_text()


def test_bad_plans_fail_before_a_session_starts(db):
    with pytest.raises(StepNotFound):
        run_session(db, objective="x", plan=["preflight", "nope"], step_factory=get_step)
    with pytest.raises(UsageError, match="needs a command"):
        run_session(db, objective="x", plan=["run"], step_factory=get_step)
    with pytest.raises(UsageError, match="twice"):
        run_session(db, objective="x", plan=["build", "build"], step_factory=factory())
    assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0


def test_default_report_path_is_beside_the_database(db, capsys):
    from sessionkit.db import reports_root

    result = run_session(db, objective="where", step_factory=factory(), plan=["preflight"], plots=False)
    expected = reports_root(db.path) / f"session-{result.session['number']}.md"
    assert result.report_path == expected and expected.is_file()


def test_two_databases_in_one_folder_keep_their_own_reports(tmp_path):
    """`reports/` beside sessions.db, `reports-<stem>/` beside any other name: session 1 of x.db
    and session 1 of y.db no longer overwrite each other's report."""
    from sessionkit.db import open_db

    paths = []
    for name in ("sessions.db", "x.db", "y.db"):
        other = open_db(tmp_path / name, create=True)
        result = run_session(other, objective=f"in {name}", step_factory=factory(),
                             plan=["preflight"], plots=False)
        paths.append(result.report_path)
        other.conn.close()
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "reports/session-1.md", "reports-x/session-1.md", "reports-y/session-1.md"]
    assert "in x.db" in paths[1].read_text() and "in y.db" in paths[2].read_text()


def test_outcome_quotes_measured_bench_figures(db, tmp_path):
    class Bench(Fake):
        def run(self, context):
            for sq, ms in ((1024, 0.5), (4096, 2.0)):
                context.db["bench_results"].insert({
                    "step_id": context.step_id, "impl": "ours", "dtype": "bf16", "batch_size": 1,
                    "num_heads": 8, "seq_len_q": sq, "seq_len_k": sq, "head_dim": 128, "causal": 0,
                    "latency_ms": ms, "speedup_vs_sdpa": 1.0 / ms, "status": "ok"})
            return StepResult("passed", message="timed")

    result = run_session(db, objective="speed", step_factory=factory(bench=Bench("bench")),
                         report_path=tmp_path / "r.md", plots=False)
    assert result.outcome == "All 4 steps passed; geomean speedup vs SDPA 1.00x over 2 configs (best 2.00x)."


# --------------------------------------------------------------------------------------------
# Hooks configuration


def test_parse_hooks_forms():
    hooks = parse_hooks({"before": ["nvidia-smi -L", ["echo", "a b"]], "after": ["gcloud stop 'my box'"]})
    assert hooks.before == [["nvidia-smi", "-L"], ["echo", "a b"]]
    assert hooks.after == [["gcloud", "stop", "my box"]]
    assert parse_hooks(None) == Hooks()


@pytest.mark.parametrize("raw, message", [
    (["x"], "must be a table"),
    ({"during": []}, "unknown key 'during'"),
    ({"before": "echo"}, "must be a list"),
    ({"after": [""]}, "an empty command"),
    ({"after": [[1, 2]]}, "neither a command string"),
    ({"before": ["echo 'unclosed"]}, "cannot split"),
])
def test_parse_hooks_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_hooks(raw)


@given(st.dictionaries(st.sampled_from(["before", "after", "other"]),
                       st.lists(st.one_of(st.text(max_size=20), st.lists(st.text(max_size=8), max_size=3),
                                          st.integers()), max_size=3), max_size=3))
def test_parse_hooks_fuzz(raw):
    try:
        hooks = parse_hooks(raw)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert all(argv and all(isinstance(a, str) for a in argv) for argv in hooks.before + hooks.after)


def test_each_step_starts_from_its_declared_defaults(db, tmp_path):
    """run hands every step the defaults of its options dataclass (no click involved), and --grid
    only to the steps that take a grid."""
    from sessionkit.steps.bench import BenchOptions
    from sessionkit.steps.correctness import CorrectnessOptions

    make = factory()
    run_session(db, objective="defaults", plan=["build", "correctness", "bench"], grid="seeds",
                step_factory=make, report_path=tmp_path / "r.md", plots=False)
    assert make.made["correctness"].options == CorrectnessOptions()
    assert make.made["bench"].options == BenchOptions(grid="seeds")
    assert make.made["bench"].options.time_limit_s == 150.0  # parsed from its declaration once
    assert make.made["build"].options.force is False
    stored = db.execute("SELECT options FROM steps WHERE name = 'bench'").fetchone()[0]
    assert '"grid": "seeds"' in stored and '"time_limit_s": 150.0' in stored


# --------------------------------------------------------------------------------------------
# The real thing, on a machine without a GPU


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="checks the path of a machine without a GPU")
def test_cli_run_without_gpu_is_honest(tmp_path):
    from sessionkit.cli import cli

    marker = tmp_path / "after-hook-ran"
    (tmp_path / "pyproject.toml").write_text(
        "[tool.sessionkit.hooks]\n"
        f"after = [['{PY}', '-c', \"open('{marker}', 'w').write('x')\"]]\n")
    result = CliRunner().invoke(cli, ["run", "cpu box", "--objective", "see what happens without a GPU",
                                      "--no-plots", "-o", str(tmp_path / "report.md")],
                                catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"Report: {tmp_path / 'report.md'}"
    assert any(line.startswith("[1/5] preflight FAILED") for line in lines)
    for i, name in ((2, "build"), (3, "correctness"), (4, "bench")):
        assert any(line.startswith(f"[{i}/5] {name} skipped: not run: preflight failed (") for line in lines)
    assert any(line.startswith("[5/5] hook:after passed") for line in lines)
    assert marker.exists()
    text = (tmp_path / "report.md").read_text()
    assert "Preflight (step 1) **failed**" in text and "| **FAIL** |" in text
    assert "The correctness step (step 3) was skipped: not run: preflight failed (" in text
    assert os.environ["SESSIONKIT_DB"]  # the run went into the test's own database


def test_cli_run_needs_an_objective(tmp_path):
    from sessionkit.cli import cli

    result = CliRunner().invoke(cli, ["run"], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.output.strip() == "Error: an objective is required: -m/--objective TEXT"


def test_cli_run_takes_its_plan_from_the_config_unless_given(tmp_path):
    """`run` honours `plan` in [tool.sessionkit] as `start` does; --plan still wins."""
    from sessionkit.cli import cli

    (tmp_path / "pyproject.toml").write_text('[tool.sessionkit]\nplan = ["build"]\n')
    result = CliRunner().invoke(cli, ["run", "--objective", "plan from config", "--no-plots",
                                      "-o", str(tmp_path / "a.md")], catch_exceptions=False)
    steps = [line.split()[1] for line in result.output.splitlines() if line.startswith("[1/")]
    assert steps and set(steps) == {"build"}, result.output
    assert "preflight" not in result.output and "correctness" not in result.output
    result = CliRunner().invoke(cli, ["run", "--objective", "plan from the flag", "--plan", "preflight",
                                      "--no-plots", "--force", "-o", str(tmp_path / "b.md")],
                                catch_exceptions=False)
    steps = [line.split()[1] for line in result.output.splitlines() if line.startswith("[1/")]
    assert steps and set(steps) == {"preflight"}, result.output


def test_after_hooks_keep_their_place_in_the_count_when_the_plan_is_cut_short(db, tmp_path, capsys):
    """Interrupted at step 3 of 6, the after hook is still step 6 of 6, not "4/6" with two more to
    come."""
    hooks = Hooks(before=[[PY, "-c", "pass"]], after=[[PY, "-c", "pass"]])
    with pytest.raises(StepInterrupted):
        run_session(db, objective="ctrl-c", step_factory=factory(build=Fake("build", interrupt=True)),
                    hooks=hooks, report_path=tmp_path / "r.md", plots=False)
    labels = [line.split()[0] + " " + line.split()[1] for line in capsys.readouterr().out.splitlines()
              if line.startswith("[") and line.split()[2] in ("passed", "INTERRUPTED")]
    assert labels == ["[1/6] hook:before", "[2/6] preflight", "[3/6] build", "[6/6] hook:after"]
