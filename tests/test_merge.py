"""``sessionkit merge``: two hosts' databases merged both ways, twice, with a conflict, and across
migration levels; history, report and compare on the merged sessions."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_db import _bench, build_fixture_db, sid
from sessionkit.cli import cli
from sessionkit.db import open_db
from sessionkit.schema import MIGRATIONS
from sessionkit.merge import LOCAL_COLUMNS, merge_database
from sessionkit.runner import run_step
from sessionkit.sessions import end_session, start_session
from sessionkit.steps import Step, StepResult

HOST_B = "a100-box"


class Probe(Step):
    name = "probe"
    description = "Record a metric, a log file and a bench table."
    budget_s = 10.0

    def run(self, context):
        context.metric("probe_ms", 1.25, unit="ms")
        log = context.workdir / "probe.log"
        log.write_text("probe ran\n")
        context.artifact(log, "log")
        _bench(context.db, context.step_id, ours_ms=(0.45, 4.0, 0.28, 2.5), sdpa_ms=(0.40, 5.00, 0.25, 2.80),
               flash_ms=(0.60, 9.00, 0.35, 5.00))
        return StepResult("passed", message="probed")


def host_a(folder: Path):
    """The fixture database (host h100-box) with one artifact file that exists and one that does not."""
    path = folder / ".sessionkit" / "sessions.db"
    path.parent.mkdir(parents=True)
    db = build_fixture_db(path)
    log = path.parent / "artifacts" / "session-1" / "02-build" / "build.log"
    log.parent.mkdir(parents=True)
    log.write_text("nvcc ok\n")
    from sessionkit.steps import record_artifact

    record_artifact(db, "00000000-0000-4000-9000-000001000002", log, "log")
    record_artifact(db, "00000000-0000-4000-9000-000002000002",
                    path.parent / "artifacts" / "session-2" / "02-build" / "gone.log", "log")
    return db


def host_b(folder: Path, sessions: int = 2):
    """A database made through the library on a second host: ended sessions with a probe step."""
    path = folder / ".sessionkit" / "sessions.db"
    db = open_db(path, create=True)
    for i in range(sessions):
        s = start_session(db, f"b-{i + 1}", objective="try tiles on the A100", gpu_rate=1.2)
        run_step(db, s, Probe())
        end_session(db, s, outcome="probed", status="passed")
    with db.conn:
        db.execute("UPDATE sessions SET host = ?", [HOST_B])
        db.execute("UPDATE steps SET host = ?", [HOST_B])
    return db


def counts(db) -> dict:
    return {t: db.execute(f"SELECT COUNT(*) FROM [{t}]").fetchone()[0]
            for t in ("sessions", "steps", "metrics", "artifacts", "telemetry_samples", "env_snapshots",
                      "patterns_applied", "correctness_results", "bench_results", "bench_samples")}


def test_two_hosts_merged_both_ways(tmp_path):
    a, b = host_a(tmp_path / "a"), host_b(tmp_path / "b")
    before_a, before_b = counts(a), counts(b)

    into_a = merge_database(a, b.path)
    assert [s["local_number"] for s in into_a.imported] == [5, 6]
    assert into_a.conflicts == [] and into_a.skipped_open == []
    assert into_a.artifacts_copied == 2 and into_a.artifacts_missing == 0
    after_a = counts(a)
    for table, n in before_b.items():
        assert after_a[table] == before_a[table] + n, table
    row = a.execute("SELECT host, number, origin_number, imported_from FROM sessions WHERE name = 'b-2'").fetchone()
    assert row == (HOST_B, 6, 2, str(b.path.resolve()))
    # the artifact file was copied under this database's folder and still matches its sha256
    path, sha, missing, origin = a.execute(
        "SELECT a.path, a.sha256, a.missing, a.origin_path FROM artifacts a JOIN steps st ON st.id = a.step_id"
        " JOIN sessions s ON s.id = st.session_id WHERE s.name = 'b-1'").fetchone()
    assert Path(path).is_relative_to(a.path.parent / "artifacts" / "session-5")
    assert Path(path).read_text() == "probe ran\n" and missing == 0
    assert origin.startswith(str(b.path.parent))

    into_b = merge_database(b, a.path)
    # A's four sessions: three ended come over; the open one stays where it is, said so
    assert [s["number"] for s in into_b.imported] == [1, 2, 3]
    assert [s["local_number"] for s in into_b.imported] == [3, 4, 5]
    assert [s["number"] for s in into_b.skipped_open] == [4]
    # B's own sessions, coming back from A, are recognised as the same
    assert sorted(s["name"] for s in into_b.unchanged) == ["b-1", "b-2"]
    assert into_b.conflicts == []
    # one artifact of A exists, one never did: copied and recorded missing
    assert into_b.artifacts_copied == 1 and into_b.artifacts_missing == 1
    gone = b.execute("SELECT missing, path FROM artifacts WHERE path LIKE '%gone.log'").fetchone()
    assert gone[0] == 1
    # the same rows on both sides for every ended session
    for table in ("steps", "metrics", "bench_samples", "telemetry_samples", "correctness_results"):
        q = (f"SELECT COUNT(*) FROM [{table}]" if table != "steps"
             else "SELECT COUNT(*) FROM steps st JOIN sessions s ON s.id = st.session_id WHERE s.status != 'open'")
        assert a.execute(q).fetchone()[0] == b.execute(q).fetchone()[0], table
    assert b.execute("PRAGMA foreign_key_check").fetchall() == []
    assert a.execute("PRAGMA foreign_key_check").fetchall() == []


def test_merging_twice_changes_nothing(tmp_path):
    a, b = host_a(tmp_path / "a"), host_b(tmp_path / "b")
    merge_database(a, b.path)
    snapshot = counts(a)
    dump = list(a.conn.iterdump())
    again = merge_database(a, b.path)
    assert again.imported == [] and again.conflicts == []
    assert len(again.unchanged) == 2
    assert counts(a) == snapshot
    assert list(a.conn.iterdump()) == dump


def test_conflict_is_reported_never_overwritten(tmp_path):
    a, b = host_a(tmp_path / "a"), host_b(tmp_path / "b")
    merge_database(a, b.path)
    with b.conn:  # the same session, edited on host B after the first merge
        b.execute("UPDATE sessions SET outcome = 'rewritten later' WHERE name = 'b-1'")
        b.execute("UPDATE steps SET duration_s = duration_s + 1 WHERE session_id IN "
                  "(SELECT id FROM sessions WHERE name = 'b-2')")
    dump = list(a.conn.iterdump())
    result = merge_database(a, b.path)
    assert sorted(s["name"] for s in result.conflicts) == ["b-1", "b-2"]
    assert result.imported == []
    assert list(a.conn.iterdump()) == dump
    assert a.execute("SELECT outcome FROM sessions WHERE name = 'b-1'").fetchone()[0] == "probed"

    out = CliRunner().invoke(cli, ["--db", str(a.path), "merge", str(b.path)])
    assert out.exit_code == 1
    assert "CONFLICT" in out.output and "2 conflicting session(s)" in out.output


def _old_database(path: Path, upto: str):
    """A database migrated only up to ``upto`` (as an older sessionkit left it), with one session."""
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    migrations = Migrations("sessionkit")
    for fn in MIGRATIONS:
        migrations(name=fn.__name__)(fn)
        if fn.__name__ == upto:
            break
    migrations.apply(db)
    sess, step = "11111111-0000-4000-8000-000000000001", "11111111-0000-4000-9000-000000000001"
    db["sessions"].insert({"id": sess, "number": 1, "name": "old host", "objective": "older schema",
                           "status": "passed", "started_at": "2025-06-01T10:00:00+00:00",
                           "ended_at": "2025-06-01T10:30:00+00:00", "host": "v100-box",
                           "gpu_rate_usd_per_h": 0.9})
    db["steps"].insert({"id": step, "session_id": sess, "seq": 1, "name": "bench", "status": "passed",
                        "started_at": "2025-06-01T10:01:00+00:00", "ended_at": "2025-06-01T10:05:00+00:00",
                        "duration_s": 240.0, "host": "v100-box", "pid": 7})
    if db["bench_results"].exists():
        rid = db["bench_results"].insert({
            "step_id": step, "impl": "ours", "dtype": "fp16", "batch_size": 1, "num_heads": 8,
            "seq_len_q": 1024, "seq_len_k": 1024, "head_dim": 64, "causal": 0, "latency_ms": 0.2,
            "status": "ok", "speedup_vs_sdpa": 1.1}).last_pk
        db["bench_samples"].insert_all({"result_id": rid, "idx": k, "latency_ms": 0.2 + k / 1000}
                                       for k in range(5))
    db.conn.commit()
    db.conn.close()
    return path


def test_older_migration_level_merges_and_is_left_unchanged(tmp_path):
    old = _old_database(tmp_path / "old" / "sessions.db", upto="m004_bench")  # before bench passes
    old_bytes = old.read_bytes()
    a = host_a(tmp_path / "a")
    result = merge_database(a, old)
    assert [s["name"] for s in result.imported] == ["old host"] and result.left_out == []
    row = a.execute("SELECT b.latency_ms, b.passes FROM bench_results b JOIN steps st ON st.id = b.step_id"
                    " WHERE st.host = 'v100-box'").fetchone()
    assert row == (0.2, None)  # a column the old level lacked gets its default
    passes = a.execute("SELECT DISTINCT s.pass FROM bench_samples s JOIN bench_results b ON b.id = s.result_id"
                       " JOIN steps st ON st.id = b.step_id WHERE st.host = 'v100-box'").fetchall()
    assert passes == [(0,)] and len(a.execute("SELECT * FROM bench_samples WHERE result_id = "
                                              "(SELECT MAX(id) FROM bench_results)").fetchall()) == 5
    assert old.read_bytes() == old_bytes  # the other database is read, never migrated
    # the merged session reads like any other
    history = CliRunner().invoke(cli, ["--db", str(a.path), "history", "--json"])
    assert history.exit_code == 0, history.output
    assert "old host" in [s["name"] for s in json.loads(history.output)["sessions"]]

    # the same session in a database without the bench tables: the same as far as it can tell
    core_only = _old_database(tmp_path / "older" / "sessions.db", upto="m001_core")
    result = merge_database(a, core_only)
    assert [s["name"] for s in result.unchanged] == ["old host"] and result.conflicts == []
    with sqlite3.connect(core_only) as conn:
        conn.execute("UPDATE steps SET duration_s = 241.0")
    assert [s["name"] for s in merge_database(a, core_only).conflicts] == ["old host"]


def test_newer_database_leaves_out_what_this_version_does_not_know(tmp_path):
    b = host_b(tmp_path / "b", sessions=1)
    with b.conn:
        b.execute("ALTER TABLE steps ADD COLUMN energy_wh REAL")
        b.execute("CREATE TABLE future_things (id INTEGER PRIMARY KEY, step_id TEXT REFERENCES steps(id))")
    fresh = open_db(tmp_path / "fresh.db", create=True)
    result = merge_database(fresh, b.path)
    assert len(result.imported) == 1
    assert result.left_out == ["future_things", "steps.energy_wh"]


def test_history_report_and_compare_across_merged_sessions(tmp_path):
    a, b = host_a(tmp_path / "a"), host_b(tmp_path / "b")
    merge_database(a, b.path)
    runner = CliRunner()
    history = runner.invoke(cli, ["--db", str(a.path), "history", "--json"])
    rows = json.loads(history.output)["sessions"]
    assert [r["number"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[4]["geomean_speedup"] is not None  # bench results came with the session
    report = runner.invoke(cli, ["--db", str(a.path), "report", "5"])
    assert report.exit_code == 0, report.output
    assert "b-1" in report.output and "probe" in report.output
    compare = runner.invoke(cli, ["--db", str(a.path), "compare", "2", "6", "--json"])
    assert compare.exit_code == 0, compare.output
    data = json.loads(compare.output)
    assert data["a"]["number"] == 2 and data["b"]["number"] == 6 and data["rows"]


def test_merge_cli_json_and_bad_input(tmp_path):
    b = host_b(tmp_path / "b", sessions=1)
    runner = CliRunner()
    target = tmp_path / "merged.db"
    out = runner.invoke(cli, ["--db", str(target), "merge", str(b.path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[0]["imported"][0]["local_number"] == 1
    out = runner.invoke(cli, ["--db", str(target), "merge", str(tmp_path / "nope.db")])
    assert out.exit_code != 0 and out.output.startswith("Error: ") and "Traceback" not in out.output
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    out = runner.invoke(cli, ["--db", str(target), "merge", str(tmp_path / "junk.db")])
    assert out.exit_code == 1 and out.output.startswith("Error: ")
    out = runner.invoke(cli, ["--db", str(target), "merge", str(target)])
    assert out.exit_code == 2 and "this database" in out.output
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("CREATE TABLE t (x)").connection.close()
    out = runner.invoke(cli, ["--db", str(target), "merge", str(plain)])
    assert out.exit_code == 1 and "not a sessionkit database" in out.output


def test_fixture_ids_are_kept(tmp_path):
    a = host_a(tmp_path / "a")
    fresh = open_db(tmp_path / "fresh.db", create=True)
    merge_database(fresh, a.path)
    assert fresh.execute("SELECT id FROM sessions WHERE origin_number = 2").fetchone()[0] == sid(2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=2048), keep=st.integers(min_value=0, max_value=40_000))
def test_damaged_databases_are_one_line_errors(tmp_path_factory, junk, keep):
    """The start of a real database followed by junk, or junk alone: a clean result or one line."""
    folder = tmp_path_factory.mktemp("fuzz")
    source = host_b(folder / "b", sessions=1)
    source.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    good = Path(source.path).read_bytes()
    source.conn.close()
    damaged = folder / "damaged.db"
    damaged.write_bytes(good[:keep] + junk)
    out = CliRunner().invoke(cli, ["--db", str(folder / "here.db"), "merge", str(damaged)])
    assert "Traceback" not in out.output
    assert out.exit_code in (0, 1, 2), out.output
    if out.exit_code:
        assert out.output.strip().splitlines()[-1].startswith("Error:"), out.output


def test_logs_of_databases_with_other_names_are_copied(tmp_path):
    """Two databases in one folder keep their own step folders (artifacts-<stem>/), and merge finds
    the source's logs there and copies them into the target's own folder, hashes intact."""
    runner = CliRunner()
    folder = tmp_path / "shared"
    folder.mkdir()
    src, dst = folder / "hostA.db", folder / "agg.db"
    for args in (["start", "a", "--objective", "o"], ["step", "run", "compile", "--", "echo", "LOG-OF-A"],
                 ["end", "--outcome", "x"]):
        result = runner.invoke(cli, ["--db", str(src), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["--db", str(dst), "merge", str(src)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "artifacts: 1 copied, 0 recorded as missing" in result.output, result.output
    db = open_db(dst)
    (row,) = [r for r in db["artifacts"].rows if r["kind"] == "log"]
    path = Path(row["path"])
    assert path.is_relative_to(folder / "artifacts-agg") and "LOG-OF-A" in path.read_text()
    assert not (folder / "artifacts").exists()


def test_a_conflict_says_which_fields_differ(tmp_path):
    a, b = host_a(tmp_path / "a"), host_b(tmp_path / "b")
    merge_database(a, b.path)
    with b.conn:  # edited on host B after the first merge
        b.execute("UPDATE sessions SET outcome = 'rewritten later' WHERE name = 'b-1'")
        b.execute("UPDATE steps SET duration_s = 7.5, message = 'probed again' WHERE session_id IN "
                  "(SELECT id FROM sessions WHERE name = 'b-2')")
        b.execute("DELETE FROM metrics WHERE step_id IN (SELECT st.id FROM steps st JOIN sessions s "
                  "ON s.id = st.session_id WHERE s.name = 'b-2')")
    result = merge_database(a, b.path)
    by_name = {c["name"]: c for c in result.conflicts}
    assert by_name["b-1"]["differences"] == [
        {"field": "outcome", "here": "'probed'", "there": "'rewritten later'"}]
    b2 = {d["field"]: (d["here"], d["there"]) for d in by_name["b-2"]["differences"]}
    here_s = a.execute("SELECT duration_s FROM steps st JOIN sessions s ON s.id = st.session_id "
                       "WHERE s.name = 'b-2'").fetchone()[0]
    assert b2 == {"step 1 (probe) duration_s": (repr(here_s), "7.5"),
                  "step 1 (probe) message": ("'probed'", "'probed again'"),
                  "metrics rows": ("1", "0")}
    assert by_name["b-2"]["differences_total"] == 3

    out = CliRunner().invoke(cli, ["--db", str(a.path), "merge", str(b.path)])
    assert out.exit_code == 1
    assert "    outcome: here 'probed', there 'rewritten later'" in out.output
    assert "    step 1 (probe) message: here 'probed', there 'probed again'" in out.output
    assert "    metrics rows: here 1, there 0" in out.output
    listed = json.loads(CliRunner().invoke(cli, ["--db", str(a.path), "merge", "--json", str(b.path)])
                        .output.split("\nError:")[0])
    assert {d["field"] for c in listed[0]["conflicts"] for d in c["differences"]} == set(b2) | {"outcome"}


def test_imported_sessions_are_marked_in_the_human_listings(tmp_path):
    a, b = host_a(tmp_path / "a"), host_b(tmp_path / "b")
    merge_database(a, b.path)
    runner = CliRunner()

    listing = runner.invoke(cli, ["--db", str(a.path), "sessions"]).output.splitlines()
    assert listing[0].split()[:5] == ["#", "name", "status", "imported", "from"]
    rows = {line.split()[0]: line for line in listing[2:]}
    assert rows["6"].split()[1:5] == ["b-2", "passed", "a100-box", "#2"]
    assert rows["5"].split()[1:5] == ["b-1", "passed", "a100-box", "#1"]
    assert rows["1"].split()[3] == "-"  # recorded here

    history = runner.invoke(cli, ["--db", str(a.path), "history"]).output
    assert "| 6 | b-2 (imported from a100-box #2) |" in history
    assert "| 5 | b-1 (imported from a100-box #1) |" in history
    data = json.loads(runner.invoke(cli, ["--db", str(a.path), "history", "--json"]).output)
    assert [(r["number"], r["host"], r["origin_number"]) for r in data["sessions"][-2:]] == [
        (5, HOST_B, 1), (6, HOST_B, 2)]
    assert data["sessions"][0]["imported_from"] is None

    show = runner.invoke(cli, ["--db", str(a.path), "show", "6"]).output
    assert f"  imported:  from a100-box #2 on " in show and str(b.path.resolve()) in show
    assert "imported" not in runner.invoke(cli, ["--db", str(a.path), "show", "1"]).output
    # a database without imported sessions lists as before, without the column
    assert "imported" not in runner.invoke(cli, ["--db", str(b.path), "sessions"]).output


def test_an_empty_or_folder_source_is_refused_as_the_database_path_check_refuses_it(tmp_path):
    """An empty source file was "not a sessionkit database" (and the target database was made
    before that was found); a folder got click's "is a directory" usage message with exit status
    2. Both are now refused before anything is made, in the words a reading command's --db gets
    for the same path, with exit status 1 (no usage error: the path is well formed)."""
    runner = CliRunner()
    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "folder.db").mkdir()
    target = tmp_path / "t" / "m.db"
    for source, said in (("empty.db", "no sessionkit data at {} (the file is empty)"),
                         ("folder.db", "database path {} is not a regular file (it is a folder); "
                                       "give the path of a database file")):
        path = tmp_path / source
        out = runner.invoke(cli, ["--db", str(target), "merge", str(path)])
        assert out.exit_code == 1, out.output
        assert out.output == f"Error: {said.format(path)}\n"
        # a reading command given the same path as its database says the same
        reading = runner.invoke(cli, ["--db", str(path), "history"])
        assert reading.exit_code == 1 and reading.output.startswith(out.output.rstrip("\n"))
        assert not target.parent.exists()  # refused before this database was made
    assert (tmp_path / "empty.db").read_bytes() == b""  # and left empty


@pytest.mark.parametrize("upto", ["m004_bench", "m007_bench_variants"])
def test_a_session_that_came_through_an_older_database_is_the_same_when_merged_again(tmp_path, upto):
    """A session imported from a database of an older migration level gets the defaults (NULL)
    here for the columns that level lacks; merged again from a database that has them (the host
    that recorded it, say), it was a conflict on steps.pid_ns ("here None, there 'pid:[...]'").
    Every session and step column that a later migration added is filled in the newer copy, so
    that a column added later without a thought for this fails here. (Result rows of a table the
    older level lacks do not come through it: that copy holds less data, which a merge reports.)"""
    old = _old_database(tmp_path / "old" / "sessions.db", upto=upto)
    new = _old_database(tmp_path / "new" / "sessions.db", upto=MIGRATIONS[-1].__name__)
    with sqlite3.connect(new) as conn, sqlite3.connect(old) as before:
        for table in ("sessions", "steps"):
            had = {r[1] for r in before.execute(f"PRAGMA table_info({table})")}
            added = [(r[1], r[2]) for r in conn.execute(f"PRAGMA table_info({table})")
                     if r[1] not in had and r[1] not in LOCAL_COLUMNS]
            for column, kind in added:
                value = {"TEXT": "pid:[4026531836]", "INTEGER": 1, "REAL": 1.5}[kind.upper()]
                conn.execute(f"UPDATE {table} SET [{column}] = ?", [value])
        assert "pid_ns" in {r[1] for r in conn.execute("PRAGMA table_info(steps)")} - {
            r[1] for r in before.execute("PRAGMA table_info(steps)")}
    for first, then in ((old, new), (new, old)):
        here = open_db(tmp_path / f"here-{first.parent.name}.db", create=True)
        assert [s["name"] for s in merge_database(here, first).imported] == ["old host"]
        again = merge_database(here, then)
        assert again.conflicts == [] and [s["name"] for s in again.unchanged] == ["old host"], again.conflicts
        here.conn.close()
    # a real difference in a column both levels have is still a conflict
    with sqlite3.connect(new) as conn:
        conn.execute("UPDATE steps SET duration_s = 241.0")
    here = open_db(tmp_path / "here-old.db")
    conflict = merge_database(here, new).conflicts
    assert [d["field"] for d in conflict[0]["differences"]] == ["step 1 (bench) duration_s"]


@pytest.mark.parametrize("tables", [
    ["CREATE TABLE sessions (x)", "CREATE TABLE steps (y)"],
    ["CREATE TABLE sessions (id TEXT PRIMARY KEY, number INTEGER, status TEXT, started_at TEXT)",
     "CREATE TABLE steps (id TEXT PRIMARY KEY, session_id TEXT)",
     "INSERT INTO sessions VALUES ('s', 1, 'passed', '2026-01-01')"],
])
def test_another_programs_database_with_sessions_and_steps_tables_is_refused_first(tmp_path, tables):
    """Another program's database that happens to hold tables named ``sessions`` and ``steps``
    passed the check made before this database is opened: this database was made, the sources
    named before it were imported, and then the merge failed ("database error: no such column:
    started_at", or NOT NULL constraints). A sessionkit database is one with sessionkit's
    migrations recorded, as every other command tells them apart."""
    runner = CliRunner()
    good = host_b(tmp_path / "b", sessions=1).path
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        for sql in tables:
            conn.execute(sql)
    conn.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    target = tmp_path / "t" / "m.db"
    out = runner.invoke(cli, ["--db", str(target), "merge", str(good), str(foreign)])
    assert out.exit_code == 1, out.output
    assert out.output == (f"Error: {foreign} is not a sessionkit database (no sessionkit "
                          "migrations recorded in it)\n")
    assert not target.parent.exists()  # nothing made, nothing imported
    assert sorted(p.name for p in tmp_path.iterdir()) == before
