"""``sessionkit mlflow push`` against a live ``mlflow server`` (SQLite backend, 127.0.0.1, a free port):
every param, tag, metric and artifact read back through the MLflow client. No mocks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from fixtures_db import build_fixture_db, sid, stid
from sessionkit.cli import cli

mlflow = pytest.importorskip("mlflow", reason="needs mlflow (pip install -e '.[test]' in the checkout)")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server with a SQLite backend store and proxied artifacts."""
    exe = Path(sys.executable).parent / "mlflow"
    if not exe.exists():
        exe = shutil.which("mlflow")
    if not exe:
        pytest.skip("the mlflow server command is not installed (full mlflow, not mlflow-skinny)")
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(folder / "server.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            raise AssertionError(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _run_for(client, experiment_id, session_id):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`sessionkit.session_id` = '{session_id}'"
                              " and tags.`sessionkit.kind` = 'session'")
    return runs


def test_push_round_trip(server, tmp_path):
    from mlflow.tracking import MlflowClient

    db = build_fixture_db(tmp_path / "fixture.db")
    runner = CliRunner()
    out = runner.invoke(cli, ["--db", str(db.path), "mlflow", "push", "1", "2", "--tracking-uri", server,
                              "--experiment", "fa-kernels", "--json"])
    assert out.exit_code == 0, out.output
    pushed = json.loads(out.output)
    assert [p["created"] for p in pushed] == [True, True]

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("fa-kernels")
    parents = _run_for(client, exp.experiment_id, sid(2))
    assert len(parents) == 1
    run = parents[0]
    assert run.info.run_id == pushed[1]["run_id"]
    assert run.info.status == "FAILED"  # session 2 failed
    # params
    p = run.data.params
    assert p["objective"] == "Overlap the softmax of one tile with the next tile's MMAs"
    assert p["budget_s"] == "7200.0" and p["gpu_rate_usd_per_h"] == "3.0" and p["ai_rate_usd_per_h"] == "6.0"
    assert json.loads(p["plan"]) == ["preflight", "build", "correctness", "bench"]
    assert json.loads(p["step_budgets"])["bench"] == 300 and p["grid"] == "quick"
    # tags
    t = run.data.tags
    assert t["sessionkit.session_id"] == sid(2) and t["host"] == "h100-box"
    assert t["gpu"] == "NVIDIA H100 80GB HBM3" and t["torch"] == "2.11.0+cu130" and t["cuda"] == "13.0"
    assert t["git_commit"] == "2222222bbbbbbb" and t["mlflow.runName"] == "session 2: pipelined softmax"
    # metrics: costs, durations, speedups, TFLOP/s and latency per (implementation, config)
    m = run.data.metrics
    assert m["duration_s"] == pytest.approx(70 * 60) and m["cost_usd"] == pytest.approx(9.0 * 70 / 60)
    assert m["gpu_cost_usd"] == pytest.approx(3.5) and m["ai_cost_usd"] == pytest.approx(7.0)
    assert m["best_speedup"] == pytest.approx(5.0 / 4.2)
    speedups = [0.40 / 0.60, 5.00 / 4.20, 0.25 / 0.29, 2.80 / 2.40]
    import math
    assert m["geomean_speedup"] == pytest.approx(math.exp(sum(map(math.log, speedups)) / 4))
    label = "bf16_B4_H16_S4096_D128_causal"
    assert m[f"bench.ours.{label}.latency_ms"] == pytest.approx(2.40)
    assert m[f"bench.sdpa_flash.{label}.latency_ms"] == pytest.approx(5.00)
    flops = 4 * 4 * 16 * 4096 * 4096 * 128 * 0.5
    assert m[f"bench.ours.{label}.tflops"] == pytest.approx(flops / 2.40e-3 / 1e12)
    bench_keys = [k for k in m if k.startswith("bench.")]
    assert len(bench_keys) == 4 * 3 * 2  # 4 configs x 3 implementations x (tflops, latency)
    # nested runs, one per step, with durations, costs and the steps' metrics
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(c.data.tags["sessionkit.step"] for c in children) == \
        sorted(["preflight", "build", "correctness", "bench", "profile", "run"])
    build = next(c for c in children if c.data.tags["sessionkit.step"] == "build")
    assert build.data.tags["sessionkit.step_id"] == stid(2, 2)
    assert build.data.metrics["duration_s"] == 130.0 and build.data.metrics["budget_s"] == 120.0
    assert build.data.metrics["cost_usd"] == pytest.approx(9.0 * 130 / 3600)
    assert build.data.metrics["build_time_s"] == 128.25
    assert build.data.metrics["registers.flash_fwd_bf16_hdim128_noncausal"] == 255
    correctness = next(c for c in children if c.data.tags["sessionkit.step"] == "correctness")
    assert correctness.info.status == "FAILED"
    # artifacts: the report, its plots, the bench CSV
    files = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert "report/session-2.md" in files
    if any(f.endswith(".png") for f in files):
        assert len([f for f in files if f.endswith(".png")]) >= 2
    else:
        pytest.importorskip("matplotlib")
        raise AssertionError(f"no plots among {files}")
    assert [f.path for f in client.list_artifacts(run.info.run_id, "bench")] == ["bench/bench-2.csv"]
    local = Path(client.download_artifacts(run.info.run_id, "report/session-2.md", str(tmp_path / "dl")))
    assert "pipelined softmax" in local.read_text()
    csv_text = Path(client.download_artifacts(run.info.run_id, "bench/bench-2.csv", str(tmp_path / "dl"))).read_text()
    assert csv_text.splitlines()[0].startswith("id,step_id,impl,dtype") and len(csv_text.splitlines()) == 13

    # pushing again updates the same runs
    with db.conn:
        db.execute("UPDATE sessions SET outcome = 'looked again' WHERE number = 2")
        db.execute("UPDATE bench_results SET latency_ms = 2.0 WHERE step_id = ? AND impl = 'ours' AND "
                   "seq_len_q = 4096 AND causal = 1", [stid(2, 4)])
    out = runner.invoke(cli, ["--db", str(db.path), "mlflow", "push", "2", "--tracking-uri", server,
                              "--experiment", "fa-kernels", "--json"])
    assert out.exit_code == 0, out.output
    again = json.loads(out.output)[0]
    assert again["created"] is False and again["run_id"] == run.info.run_id
    assert len(_run_for(client, exp.experiment_id, sid(2))) == 1
    assert len(client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")) == 6
    updated = client.get_run(run.info.run_id)
    assert updated.data.metrics[f"bench.ours.{label}.latency_ms"] == pytest.approx(2.0)


def test_push_all_open_session_and_errors(server, tmp_path):
    from mlflow.tracking import MlflowClient

    db = build_fixture_db(tmp_path / "fixture.db")
    runner = CliRunner()
    out = runner.invoke(cli, ["--db", str(db.path), "mlflow", "push", "--tracking-uri", server,
                              "--experiment", "all-sessions", "--no-plots"])
    assert out.exit_code == 0, out.output
    assert out.output.count("created") == 4
    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("all-sessions")
    open_run = _run_for(client, exp.experiment_id, sid(4))[0]
    assert open_run.info.status == "RUNNING"
    assert "geomean_speedup" not in open_run.data.metrics  # nothing benched: nothing made up

    out = runner.invoke(cli, ["--db", str(db.path), "mlflow", "push", "99", "--tracking-uri", server])
    assert out.exit_code == 1 and out.output.startswith("Error: no session matches")
    port = _free_port()
    out = runner.invoke(cli, ["--db", str(db.path), "mlflow", "push", "1", "--tracking-uri",
                              f"http://127.0.0.1:{port}"], env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                                               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    assert out.exit_code == 1 and out.output.startswith("Error: ") and "Traceback" not in out.output


def _closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    return _free_port()


def test_unreachable_server_fails_within_seconds(tmp_path):
    """A closed local port: one Error line well before MLflow's own retries (minutes) would end."""
    db = build_fixture_db(tmp_path / "fixture.db")
    env = {k: v for k, v in os.environ.items()
           if k not in ("SESSIONKIT_DB", "MLFLOW_TRACKING_URI") and not k.startswith("MLFLOW_HTTP_REQUEST")}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "sessionkit", "--db", str(db.path), "mlflow", "push", "1",
                          "--no-plots", "--tracking-uri", f"http://127.0.0.1:{_closed_port()}"],
                         capture_output=True, text=True, env=env, timeout=120)
    took = time.monotonic() - started
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().startswith("Error: cannot reach the MLflow tracking server")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert took < 20, f"took {took:.1f} s"


def test_http_settings_default_and_yield_to_the_user(monkeypatch):
    from sessionkit.mlflow_push import HTTP_DEFAULTS, _http_settings

    for key in HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    with _http_settings():
        from mlflow.environment_variables import (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
                                                  MLFLOW_HTTP_REQUEST_TIMEOUT)

        assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == int(HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
        assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 77
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"


@pytest.mark.parametrize("uri", ["ftp://127.0.0.1:9", "notascheme", "0s", "http://[::1", "http://",
                                 "http://127.0.0.1:99999", "file:///tmp", "sqlite:////nonexistent/dir/x.db",
                                 "sqlite://host/x.db", "mailto:x@y"])
def test_bad_tracking_uris_are_one_line_errors(tmp_path, uri):
    db = build_fixture_db(tmp_path / "fixture.db")
    out = CliRunner().invoke(cli, ["--db", str(db.path), "mlflow", "push", "1", "--no-plots",
                                   "--tracking-uri", uri])
    assert out.exit_code == 2, out.output
    assert out.output.startswith("Error: tracking URI ") and len(out.output.splitlines()) == 1
    assert not Path("/nonexistent").exists()


def test_sqlite_tracking_store_in_an_existing_folder(tmp_path):
    """A sqlite:/// store is accepted when its folder exists, and the push lands in it."""
    from mlflow.tracking import MlflowClient

    db = build_fixture_db(tmp_path / "fixture.db")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    out = CliRunner().invoke(cli, ["--db", str(db.path), "mlflow", "push", "1", "--no-plots",
                                   "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("sessionkit")
    assert len(_run_for(MlflowClient(tracking_uri=uri), exp.experiment_id, sid(1))) == 1


def test_sqlite_tracking_store_keeps_its_artifacts_beside_it(tmp_path, monkeypatch):
    """The report pushed to a sqlite:/// store lands in an mlruns folder beside that store, not in
    whatever folder the push ran from (MLflow's default for a new experiment is ./mlruns)."""
    from mlflow.tracking import MlflowClient

    db = build_fixture_db(tmp_path / "fixture.db")
    store = tmp_path / "store"
    store.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    out = CliRunner().invoke(cli, ["--db", str(db.path), "mlflow", "push", "1", "--no-plots",
                                   "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert list(elsewhere.iterdir()) == []
    reports = list((store / "mlruns").rglob("session-1.md"))
    assert len(reports) == 1 and reports[0].read_text().startswith("# Session 1")
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("sessionkit")
    assert exp.artifact_location == (store / "mlruns").as_uri()
