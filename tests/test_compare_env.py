"""``sessionkit compare`` across machines: what differs between the two environments is said above
the table, and --fail-on-regression refuses to judge unless --allow-env-change."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_bench_compare import BIG, SMALL, _bench

from sessionkit.bench.compare import compare_sessions, format_comparison
from sessionkit.cli import cli


def _snapshot(db, session, gpu, torch, driver="580.65"):
    data = {"gpus": [{"index": 0, "name": gpu}], "torch": {"version": torch, "cuda": "13.0"},
            "driver": driver}
    db["env_snapshots"].insert({"session_id": session["id"], "taken_at": session["started_at"],
                                "gpu_name": gpu, "torch_version": torch, "torch_cuda": "13.0",
                                "driver_version": driver, "data": json.dumps(data)})


def _pair(db, gpu_b="NVIDIA H200", torch_b="2.12.0+cu130"):
    a = _bench(db, "h100", {(BIG, "ours"): 1.0, (SMALL, "ours"): 0.02})
    _snapshot(db, a, "NVIDIA H100 80GB HBM3", "2.11.0+cu130")
    b = _bench(db, "h200", {(BIG, "ours"): 1.2, (SMALL, "ours"): 0.015})
    _snapshot(db, b, gpu_b, torch_b)
    return a, b


def test_the_environment_change_is_said_above_the_table(db):
    _pair(db)
    result = compare_sessions(db)
    changes = {c["key"]: (c["a"], c["b"]) for c in result["environment"]["changes"]}
    assert changes == {"gpu": ("NVIDIA H100 80GB HBM3", "NVIDIA H200"),
                       "torch": ("2.11.0+cu130", "2.12.0+cu130")}
    first = format_comparison(result).splitlines()[0]
    assert first.startswith("WARNING: the sessions ran in different environments")
    assert "GPU" in first and "torch" in first


def test_fail_on_regression_refuses_across_environments_unless_allowed(db):
    _pair(db)
    runner = CliRunner()
    refused = runner.invoke(cli, ["compare", "--fail-on-regression"])
    assert refused.exit_code == 125  # no verdict, told apart from a regression's 1
    assert "Error: sessions 1 and 2 ran in different environments (GPU, torch changed)" in refused.output
    assert "--allow-env-change" in refused.output
    judged = runner.invoke(cli, ["compare", "--fail-on-regression", "--allow-env-change"])
    assert judged.exit_code == 1 and "regression(s) from session 1 to 2" in judged.output


def test_same_environment_compares_as_before(db):
    _pair(db, gpu_b="NVIDIA H100 80GB HBM3", torch_b="2.11.0+cu130")
    result = compare_sessions(db)
    assert result["environment"]["changes"] == []
    assert not format_comparison(result).startswith("WARNING")
    refused = CliRunner().invoke(cli, ["compare", "--fail-on-regression"])
    assert "regression(s) from session 1 to 2" in refused.output
