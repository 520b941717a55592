"""benchmarks/ab_table.py: the A/B of one session's bench steps as text, each column headed by the
nvcc flags of the build its step timed, from the database alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fixtures_db import _bench, _session, _step

from sessionkit.db import open_db

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ab_table.py"
T = "2026-11-30T10:00:00+00:00"


SDPA_MS, FLASH_MS = [1.0, 2.0, 0.5, 1.0], [2.0, 4.0, 1.0, 2.0]  # 4 configs: two masks x two lengths


def _ab_database(path, builds, *, correctness_after=0, throttled=(0, 0, 0, 0)):
    """An A/B session at ``path``: one bench step per build (nvcc flags, our ms per config), SDPA
    and its flash backend as in SDPA_MS and FLASH_MS, and a correctness step after the first
    ``correctness_after`` of them (0: none)."""
    db = open_db(path, create=True)
    with db.conn:
        _session(db, 1, "A/B", "switches", "passed", T, T, "done")
        seq = 0
        for k, (flags, ours_ms) in enumerate(builds, 1):
            seq += 1
            step = _step(db, 1, seq, "bench", "passed", T, T, 40.0, 300.0,
                         summary={"nvcc_flags": flags})
            _bench(db, step, ours_ms, SDPA_MS, FLASH_MS, throttled=throttled)
            if k == correctness_after:
                seq += 1
                _step(db, 1, seq, "correctness", "passed", T, T, 20.0, 180.0)
    db.conn.close()


def test_one_column_per_bench_step_headed_by_its_flags(tmp_path):
    path = tmp_path / "ab.db"
    # the flagged build is 10 % faster
    _ab_database(path, [("", [1.0, 2.0, 0.5, 1.0]), ("-DSK_X=1", [0.9, 1.8, 0.45, 0.9])],
                 correctness_after=2)
    out = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "config | plain | -DSK_X=1"
    assert len(lines) == 1 + 4 + 1
    assert all(line.count("|") == 2 for line in lines[1:5])
    assert "=1.000 |" in lines[1] and lines[1].endswith("=1.111")
    assert lines[-1] == "geomean | 1.000 | 1.111"


def test_clocks_add_the_sm_clock_and_throttled_samples(tmp_path):
    path = tmp_path / "ab.db"
    _ab_database(path, [("", [1.0, 2.0, 0.5, 1.0])], throttled=(0, 9, 3, 0))
    out = _run(path, "--clocks")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()[1:5]
    # fixtures_db: our clock is 1980 - 15 * i MHz for config i, in the table's sorted order
    assert [row.split(" @")[1] for row in rows] == [
        "1980MHz thr 0/9", "1965MHz thr 9/9", "1950MHz thr 3/9", "1935MHz thr 0/9"]
    assert " @" not in _run(path).stdout


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_help_and_missing_arguments_print_the_usage(tmp_path):
    helped = _run("--help")
    assert helped.returncode == 0 and "usage:" in helped.stdout and "DB" in helped.stdout
    bare = _run()
    assert bare.returncode == 2 and "usage:" in bare.stderr and "DB" in bare.stderr


def test_bad_input_is_one_error_line_not_a_traceback(tmp_path):
    path = tmp_path / "ab.db"
    db = open_db(path, create=True)
    with db.conn:
        _session(db, 1, "no bench", "switches", "passed", T, T, "done")
        _step(db, 1, 1, "correctness", "passed", T, T, 20.0, 180.0)
    db.conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    for args, said in [((tmp_path / "missing.db",), "no database at"),
                       ((text,), "not a SQLite database"),
                       ((path, "7"), "no session matches '7'"),
                       ((path,), "session 1 has no bench step")]:
        out = _run(*args)
        assert out.returncode == 1, (args, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == "", (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], (args, lines)


def test_unusable_databases_are_one_error_line(tmp_path):
    (tmp_path / "text.db").write_text("not sqlite\n")
    import sqlite3

    foreign = sqlite3.connect(tmp_path / "foreign.db")
    foreign.execute("CREATE TABLE x (a)")
    foreign.commit()
    foreign.close()
    db = open_db(tmp_path / "none.db", create=True)  # a sessionkit database without sessions
    db.conn.close()
    for args in [[tmp_path / "missing.db"], [tmp_path / "text.db"], [tmp_path / "foreign.db"],
                 [tmp_path], [tmp_path / "none.db"], [tmp_path / "none.db", "7"]]:
        out = _run(*args)
        said = out.stderr.strip()
        assert out.returncode == 1, (args, out.stdout, said)
        assert said.startswith("error: ") and "\n" not in said and "Traceback" not in said, said
        assert out.stdout == ""
