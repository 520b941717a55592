"""The pattern library: the seeded files, parsing, applying, and measured evidence."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from fixtures_db import assert_snapshot, build_fixture_db, sid
from hypothesis import given
from hypothesis import strategies as st

from sessionkit.errors import NoOpenSession, PatternNotFound, SessionkitError
from sessionkit.report import patterns_report
from sessionkit.report.patterns import (
    PatternError,
    apply_pattern,
    get_pattern,
    load_patterns,
    parse_pattern,
    parse_selector,
    pattern_evidence,
)

SEEDED = {"baseline-first", "profile-first", "static-asserts", "explicit-instantiation",
          "detect-preemption", "bisect-last-good", "keep-gpu-warm", "one-tu-per-recipe",
          "env-validation", "profile-decision-tree", "step-counted-progress",
          "measure-below-power-cap"}

GOOD = """+++
id = "demo"
title = "Demo"
problem = "p"
solution = "s"
when = "w"
metric = "step_duration:build"
better = "lower"
+++
Body text.
"""


@pytest.fixture
def fdb(tmp_path):
    return build_fixture_db(tmp_path / "fixture.db")


def invoke(*args):
    from sessionkit.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_seeded_library_is_complete_and_valid():
    patterns = load_patterns()
    assert {p.id for p in patterns} == SEEDED
    for p in patterns:
        assert len(p.body.split()) >= 60, f"{p.id}: the body should teach something"
        assert p.source == f"{p.id}.md"
        assert parse_selector(p.metric).text == p.metric


def test_parse_pattern_fields():
    p = parse_pattern(GOOD, "demo.md")
    assert (p.id, p.title, p.metric, p.better, p.body) == ("demo", "Demo", "step_duration:build",
                                                            "lower", "Body text.")


@pytest.mark.parametrize("text, message", [
    ("no front matter", "starts with a '+++'"),
    ("+++\nid = \"x\"\n", "no closing"),
    (GOOD.replace('title = "Demo"\n', ""), "lacks title"),
    (GOOD.replace('"demo"', '"Not A Slug"'), "short slug"),
    (GOOD.replace('"lower"', '"sideways"'), "better must be"),
    (GOOD.replace("step_duration:build", "speed"), "bad metric selector"),
    (GOOD.replace("Body text.\n", ""), "no body"),
    (GOOD.replace('problem = "p"', "problem = [1]"), "must be a string"),
    (GOOD.replace('when = "w"', "when = "), "bad front matter"),
])
def test_parse_pattern_errors_are_one_line(text, message):
    with pytest.raises(PatternError) as exc:
        parse_pattern(text, "x.md")
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith("x.md: ")


@given(st.text(max_size=400))
def test_parse_pattern_fuzz_only_raises_pattern_error(text):
    try:
        parse_pattern(text, "fuzz.md")
    except PatternError:
        pass


@given(st.text(max_size=60))
def test_parse_selector_fuzz(text):
    try:
        selector = parse_selector(text)
    except PatternError:
        return
    assert parse_selector(selector.text) == selector


def test_duplicate_ids_are_refused(tmp_path):
    (tmp_path / "a.md").write_text(GOOD)
    (tmp_path / "b.md").write_text(GOOD)
    with pytest.raises(PatternError, match="also used by a.md"):
        load_patterns(tmp_path)


def test_apply_records_in_open_session(db, session):
    row = apply_pattern(db, "baseline-first", "  measured first  ")
    stored = next(db.query("SELECT session_id, pattern_id, note FROM patterns_applied"))
    assert stored == {"session_id": session["id"], "pattern_id": "baseline-first", "note": "measured first"}
    assert row["id"] >= 1


def test_apply_unknown_id_and_no_open_session(db):
    with pytest.raises(PatternNotFound, match="'sessionkit pattern list' shows the ids"):
        apply_pattern(db, "no-such-pattern")
    with pytest.raises(NoOpenSession):
        apply_pattern(db, "baseline-first")


def test_apply_to_ended_session_is_refused(fdb):
    ended = next(fdb.query("SELECT * FROM sessions WHERE number = 1"))
    with pytest.raises(SessionkitError, match="is passed"):
        apply_pattern(fdb, "baseline-first", session=ended)


def test_evidence_medians_and_counts(fdb):
    evidence = {e["id"]: e for e in pattern_evidence(fdb)}
    warm = evidence["keep-gpu-warm"]["effect"]  # step_duration:build, applied in session 3
    assert (warm["n_with"], warm["n_without"]) == (1, 2)
    assert warm["median_with"] == 70.0 and warm["median_without"] == pytest.approx((95 + 130) / 2)
    assert warm["direction"] == "better"
    profile = evidence["profile-first"]["effect"]  # bench geomean, applied in session 2
    assert profile["n_with"] == 1 and profile["n_without"] == 1 and profile["direction"] == "better"
    # Applied wherever there is a value: nothing to compare against.
    assert evidence["baseline-first"]["effect"] is None
    assert evidence["baseline-first"]["n_with_value"] == 2
    assert [s["number"] for s in evidence["baseline-first"]["sessions"]] == [1, 2]


def test_evidence_ignores_open_sessions(fdb):
    with fdb.conn:
        fdb.execute("UPDATE sessions SET status = 'open', ended_at = NULL WHERE number = 3")
    warm = next(e for e in pattern_evidence(fdb) if e["id"] == "keep-gpu-warm")
    assert warm["effect"] is None and warm["n_with_value"] == 0


def test_evidence_follows_rows(fdb):
    with fdb.conn:
        fdb.execute("UPDATE steps SET duration_s = 500 WHERE session_id = ? AND name = 'build'", [sid(3)])
    warm = next(e for e in pattern_evidence(fdb) if e["id"] == "keep-gpu-warm")["effect"]
    assert warm["median_with"] == 500 and warm["direction"] == "worse"


@pytest.mark.parametrize("selector, expected", [
    ("session_duration", {1: 1200.0, 2: 4200.0, 3: 1800.0}),
    ("steps_failed", {1: 0.0, 2: 1.0, 3: 0.0}),
    ("steps_interrupted", {1: 0.0, 2: 0.0, 3: 1.0}),
    ("interrupted_time", {1: 0.0, 2: 0.0, 3: 70.0}),
    ("step_duration:preflight", {1: 12.0, 2: 11.0, 3: 12.0}),
    ("step_failures:correctness", {1: 0.0, 2: 1.0}),
    ("bench:best_speedup_vs_sdpa", {1: pytest.approx(2.8 / 3.2), 2: pytest.approx(5.0 / 4.2)}),
    ("correctness:worst_ratio", {1: pytest.approx(0.45), 2: pytest.approx(3.1)}),
    ("metric:build:registers:flash_fwd_bf16_hdim128_causal", {1: 168.0, 2: 232.0}),
    ("metric:profile:tensor_pipe_pct", {2: 37.9}),
])
def test_selector_values(fdb, selector, expected):
    from sessionkit.report.patterns import selector_values

    sessions = {r["id"]: dict(r) for r in fdb.query("SELECT * FROM sessions")}
    numbers = {r["id"]: r["number"] for r in sessions.values()}
    values = selector_values(fdb, parse_selector(selector), sessions)
    assert {numbers[k]: v for k, v in values.items()} == expected


def test_patterns_snapshot(fdb):
    assert_snapshot("patterns.md", patterns_report(fdb).text)


def test_patterns_report_without_data_says_no_evidence(db):
    text = patterns_report(db).text
    assert text.count("no evidence yet") == len(SEEDED)
    assert "$" not in text and "saves" not in text.lower()


def test_cli_pattern_apply_list_show(tmp_path):
    assert invoke("start", "--objective", "try patterns").exit_code == 0
    result = invoke("pattern", "apply", "static-asserts", "--note", "asserted tile shapes")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Applied static-asserts (Static assertions for kernel invariants) to session 1"
    listed = invoke("pattern", "list")
    assert all(pid in listed.output for pid in SEEDED)
    shown = invoke("pattern", "show", "static-asserts")
    assert "static_assert" in shown.output and "metric:" in shown.output
    data = json.loads(invoke("patterns", "--json").output)
    entry = next(p for p in data["patterns"] if p["id"] == "static-asserts")
    assert entry["sessions"][0]["notes"] == ["asserted tile shapes"]


def test_cli_pattern_errors_are_one_line(tmp_path):
    build_fixture_db(os.environ["SESSIONKIT_DB"])
    with_open = invoke("pattern", "apply", "nope")
    assert with_open.exit_code == 1  # not found, as an unknown session
    assert with_open.output.strip() == ("Error: no pattern with id 'nope'; "
                                        "'sessionkit pattern list' shows the ids")
    invoke("end", "--outcome", "closed")
    no_open = invoke("pattern", "apply", "baseline-first")
    assert no_open.exit_code == 1 and no_open.output.startswith("Error: no open session")
    assert len(no_open.output.strip().splitlines()) == 1
    assert get_pattern("baseline-first").title == "Baseline first"
