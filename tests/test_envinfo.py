"""Environment snapshots: redaction, storage, ``diff_snapshots`` and ``sessionkit env show|diff``."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sessionkit.cli import cli
from sessionkit.envinfo import (REDACTED, NoSnapshot, Redactor, diff_sessions, diff_snapshots,
                                flatten, load_snapshot, relevant_env, snapshot_pair, store_snapshot)
from sessionkit.sessions import end_session, start_session


def snapshot(**over) -> dict:
    data = {
        "host": "gpu-a",
        "python": {"version": "3.12.3", "executable": "/usr/bin/python3"},
        "torch": {"version": "2.10.0+cu128", "cuda": "12.8", "cuda_available": True},
        "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "cc": "9.0", "memory_mib": 81559,
                  "uuid": "GPU-1"}],
        "driver": "570.86.15",
        "toolchain": {"nvcc": "/usr/local/cuda-12.8/bin/nvcc", "nvcc_version": "12.8",
                      "nvcc_on_path": True, "arch": "sm_90a",
                      "arch_flags": ["-gencode=arch=compute_90a,code=sm_90a"]},
        "env": {"PATH": "/usr/bin", "CUDA_HOME": "/usr/local/cuda-12.8"},
        "git": {"commit": "abc", "dirty": False},
        "state": {"gpus": [{"sm_clock_mhz": 1980, "temp_c": 30}], "disk_free_gib": 80.0},
    }
    for key, value in over.items():
        data[key] = value
    return data


# --------------------------------------------------------------------------------------------
# Redaction


def test_relevant_env_keeps_build_variables_and_redacts_secrets():
    environ = {
        "PATH": "/usr/local/cuda/bin:/usr/bin", "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
        "CUDA_HOME": "/usr/local/cuda", "CUDA_VISIBLE_DEVICES": "0", "CC": "gcc-13", "MAX_JOBS": "8",
        "TORCH_CUDA_ARCH_LIST": "9.0a", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "SESSIONKIT_BUILD_DIR": "/scratch/build", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "HOME": "/root", "USER": "root", "LANG": "C.UTF-8", "EDITOR": "vim",
        "HF_TOKEN": "hf_abcdefghijklmnop", "my_api_key": "sk-1234567890",
        "NVIDIA_SECRET_THING": "s3cr3t-value", "DB_PASSWORD": "pw-123456", "AWS_CREDENTIALS": "x",
    }
    env = relevant_env(environ)
    assert set(env) == {
        "PATH", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_VISIBLE_DEVICES", "CC", "MAX_JOBS",
        "TORCH_CUDA_ARCH_LIST", "PYTORCH_CUDA_ALLOC_CONF", "SESSIONKIT_BUILD_DIR",
        "NVIDIA_DRIVER_CAPABILITIES", "HF_TOKEN", "my_api_key", "NVIDIA_SECRET_THING", "DB_PASSWORD",
        "AWS_CREDENTIALS"}
    for name in ("HF_TOKEN", "my_api_key", "NVIDIA_SECRET_THING", "DB_PASSWORD", "AWS_CREDENTIALS"):
        assert env[name] == REDACTED
    assert env["CUDA_HOME"] == "/usr/local/cuda" and env["MAX_JOBS"] == "8"
    text = json.dumps(env)
    for secret in ("hf_abcdefghijklmnop", "sk-1234567890", "s3cr3t-value", "pw-123456"):
        assert secret not in text


def test_secret_values_are_scrubbed_inside_other_values_and_urls():
    environ = {"GITHUB_TOKEN": "ghp_0123456789", "PATH": "/opt/ghp_0123456789/bin:/usr/bin",
               "CUDA_PROXY": "https://alice:pa55word@proxy.example:3128", "SHORT_KEY": "1"}
    env = relevant_env(environ)
    assert env["PATH"] == f"/opt/{REDACTED}/bin:/usr/bin"
    assert env["CUDA_PROXY"] == f"https://{REDACTED}@proxy.example:3128"
    # a one-character "secret" is not hunted through every other value
    assert Redactor(environ).text("cuda 12.1") == "cuda 12.1"
    nested = Redactor(environ).scrub({"a": ["x ghp_0123456789 y", 3, None], "ghp_0123456789": True})
    assert json.dumps(nested).count("ghp_") == 0 and nested["a"][1:] == [3, None]


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",
                 min_size=6, max_size=40).filter(lambda s: s not in REDACTED)
_WORD = st.sampled_from(["TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL", "token", "Api_Key"])
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _non_text_leaves(data):
    """The JSON text of every number, boolean and null in ``data``."""
    if isinstance(data, dict):
        for value in data.values():
            yield from _non_text_leaves(value)
    elif isinstance(data, list):
        for value in data:
            yield from _non_text_leaves(value)
    elif not isinstance(data, str):
        yield json.dumps(data)


@settings(max_examples=150, deadline=None)
@given(secret=_TOKEN, word=_WORD, prefix=st.sampled_from(["", "HF_", "CUDA_", "X_"]),
       data=_JSONISH, before=st.text(max_size=10), after=st.text(max_size=10))
def test_fuzz_no_secret_survives_scrubbing(secret, word, prefix, data, before, after):
    # Numbers are not scrubbed (only text is): a secret of digits may stand in one by chance,
    # as '000000' does in 3125000000, without anything having leaked.
    assume(not any(secret in leaf for leaf in _non_text_leaves(data)))
    environ = {f"{prefix}{word}": secret, "PATH": f"{before}{secret}{after}",
               "CUDA_HOME": f"/x/{secret}{secret}/y"}
    scrubbed = Redactor(environ).scrub({"env": relevant_env(environ), "data": data,
                                        "line": f"{before}{secret}{after}", secret: [secret]})
    assert secret not in json.dumps(scrubbed, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Diffs


def test_diff_snapshots_names_what_changed():
    a = snapshot()
    b = snapshot(torch={"version": "2.11.0+cu130", "cuda": "13.0", "cuda_available": True},
                 driver="580.65.06",
                 gpus=[{"index": 0, "name": "NVIDIA H200", "cc": "9.0", "memory_mib": 143771,
                        "uuid": "GPU-2"}],
                 state={"gpus": [{"sm_clock_mhz": 1200}], "disk_free_gib": 2.0})
    b["toolchain"] = {**a["toolchain"], "nvcc_version": "13.0", "nvcc_on_path": False}
    b["env"] = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "1"}
    changes = {c["key"]: (c["a"], c["b"]) for c in diff_snapshots(a, b)}
    assert changes == {
        "torch.version": ("2.10.0+cu128", "2.11.0+cu130"),
        "torch.cuda": ("12.8", "13.0"),
        "driver": ("570.86.15", "580.65.06"),
        "gpus[0].name": ("NVIDIA H100 80GB HBM3", "NVIDIA H200"),
        "gpus[0].memory_mib": (81559, 143771),
        "gpus[0].uuid": ("GPU-1", "GPU-2"),
        "toolchain.nvcc_version": ("12.8", "13.0"),
        "toolchain.nvcc_on_path": (True, False),
        "env.CUDA_HOME": ("/usr/local/cuda-12.8", None),
        "env.CUDA_VISIBLE_DEVICES": (None, "1"),
    }  # momentary readings under "state" are not differences


def test_flatten_and_lists():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "gpus": [{"n": "x"}, {"n": "y"}], "e": {}})
    assert flat == {"a.b": 1, "a.c": [1, 2], "gpus[0].n": "x", "gpus[1].n": "y", "e": {}}
    a, b = snapshot(), snapshot()
    b["gpus"] = b["gpus"] + [dict(b["gpus"][0], index=1)]
    keys = [c["key"] for c in diff_snapshots(a, b)]
    assert keys == [f"gpus[1].{k}" for k in sorted(["cc", "index", "memory_mib", "name", "uuid"])]


@settings(max_examples=100, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["torch", "driver", "env", "gpus", "x"]),
                            _JSONISH, max_size=5),
       other=st.dictionaries(st.sampled_from(["torch", "driver", "env", "gpus", "x"]),
                             _JSONISH, max_size=5))
def test_fuzz_diff_is_empty_on_itself_and_symmetric(data, other):
    assert diff_snapshots(data, copy.deepcopy(data)) == []
    forward = diff_snapshots(data, other)
    backward = diff_snapshots(other, data)
    assert [(c["key"], c["b"], c["a"]) for c in forward] == [(c["key"], c["a"], c["b"]) for c in backward]
    # a key set to None and a missing key read the same: "(none)"
    def known(d):
        return {k: v for k, v in flatten(d).items() if v is not None}

    assert (forward == []) == (known(data) == known(other))


# --------------------------------------------------------------------------------------------
# Stored snapshots


def _session_with(db, data: dict | None, name: str) -> dict:
    s = start_session(db, name, objective="env test", force=True)
    if data is not None:
        store_snapshot(db, data, session_id=s["id"], step_id=None, taken_at=f"2025-01-0{s['number']}T00:00:00")
    end_session(db, s, outcome="done")
    return s


def test_store_load_and_pair(db):
    with pytest.raises(NoSnapshot, match="no session has an environment snapshot"):
        load_snapshot(db)
    s1 = _session_with(db, snapshot(), "one")
    with pytest.raises(NoSnapshot, match="needs two sessions .* found 1"):
        snapshot_pair(db)
    s2 = _session_with(db, None, "no-preflight")
    s3 = _session_with(db, snapshot(driver="580.65.06"), "three")

    row = db.execute("SELECT driver_version, gpu_name, gpu_cc, torch_version, git_commit "
                     "FROM env_snapshots WHERE session_id = ?", [s3["id"]]).fetchone()
    assert row == ("580.65.06", "NVIDIA H100 80GB HBM3", "9.0", "2.10.0+cu128", "abc")

    assert load_snapshot(db)["session"]["number"] == 3
    assert load_snapshot(db, "1")["data"]["driver"] == "570.86.15"
    assert load_snapshot(db, s3["id"])["session"]["name"] == "three"
    with pytest.raises(NoSnapshot, match="session 2 has no environment snapshot"):
        load_snapshot(db, s2["number"])

    a, b = snapshot_pair(db)
    assert (a["session"]["number"], b["session"]["number"]) == (1, 3)
    result = diff_sessions(db, "1")
    assert [c["key"] for c in result["changes"]] == ["driver"]
    assert diff_sessions(db, "3", "1")["changes"] == [
        {"key": "driver", "a": "580.65.06", "b": "570.86.15"}]
    assert s1["number"] == 1


def test_cli_env_show_and_diff(db):
    runner = CliRunner()
    r = runner.invoke(cli, ["env", "diff"])
    assert r.exit_code == 1 and r.output.startswith("Error: env diff needs two sessions")
    assert len(r.output.strip().splitlines()) == 1

    _session_with(db, snapshot(), "one")
    _session_with(db, snapshot(driver="580.65.06", torch={"version": "2.11.0+cu130", "cuda": "13.0",
                                                          "cuda_available": True}), "two")
    r = runner.invoke(cli, ["env", "diff"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("session 1 (2025-01-01 00:00:00 UTC on gpu-a) -> session 2")
    assert any(line.split() == ["driver", "570.86.15", "->", "580.65.06"] for line in lines)
    assert any(line.split() == ["torch.version", "2.10.0+cu128", "->", "2.11.0+cu130"] for line in lines)
    assert lines[-1] == "3 differences"

    r = runner.invoke(cli, ["env", "diff", "last", "1", "--json"])
    data = json.loads(r.output)
    assert (data["a"]["number"], data["b"]["number"]) == (2, 1)
    assert {c["key"] for c in data["changes"]} == {"driver", "torch.version", "torch.cuda"}

    r = runner.invoke(cli, ["env", "diff", "1", "1"])
    assert r.exit_code == 0 and "no differences" in r.output

    r = runner.invoke(cli, ["env", "show"])
    assert r.exit_code == 0 and "Environment of session 2 (two)" in r.output
    assert any(line.split() == ["toolchain.nvcc_version", "12.8"] for line in r.output.splitlines())

    r = runner.invoke(cli, ["env", "show", "1", "--json"])
    assert json.loads(r.output)["data"]["driver"] == "570.86.15"

    r = runner.invoke(cli, ["env", "show", "9"])
    assert r.exit_code == 1 and r.output.startswith("Error: no session matches '9'")
    assert "Traceback" not in r.output


@pytest.mark.parametrize("data", ["not json{", "5", '"text"', "[1]", "null",
                                  '{"gpus": 5, "torch": "x", "toolchain": 3, "git": [1]}',
                                  '{"gpus": ["a", {"name": "H100"}], "python": 1}'])
def test_a_snapshot_that_is_not_what_preflight_stores_is_read_without_a_crash(tmp_path, data):
    """A damaged snapshot row, or one from a database merged from elsewhere: the report, compare
    and env show/diff still answer."""
    from fixtures_db import build_fixture_db

    path = tmp_path / "fixture.db"
    db = build_fixture_db(path)
    with db.conn:
        db.execute("UPDATE env_snapshots SET data = ?", [data])
    for args in (["report", "2", "--no-plots"], ["compare", "1", "2"], ["env", "show", "2"],
                 ["env", "diff", "1", "2"], ["report", "2", "--json"]):
        result = CliRunner().invoke(cli, ["--db", str(path), *args])
        assert result.exit_code == 0 and result.exception is None, (args, repr(result.exception))
