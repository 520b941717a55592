"""``sessionkit serve``: a real Datasette on 127.0.0.1 serving the described tables and the canned
queries as JSON, and the sessions page rendered by a real headless Chromium."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from fixtures_db import build_fixture_db
from sessionkit.serve import chromium, metadata

pytest.importorskip("datasette", reason="needs datasette (pip install -e '.[browse]' in the checkout)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The fixture database served by ``sessionkit serve`` in its own process."""
    folder = tmp_path_factory.mktemp("serve")
    db = build_fixture_db(folder / "sessions.db")
    db.conn.close()
    port = _free_port()
    log = open(folder / "serve.log", "w")
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(folder / "sessions.db"),
                             "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=folder, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            _get(f"{base}/-/versions.json")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                raise AssertionError((folder / "serve.log").read_text()[-3000:])
            time.sleep(0.3)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_every_table_and_column_is_described(tmp_path):
    db = build_fixture_db(tmp_path / "sessions.db")
    meta = metadata(db.path)["databases"]["sessions"]
    tables = meta["tables"]
    for name in db.table_names() + db.view_names():
        if name.startswith("sqlite_"):  # SQLite's own (sqlite_stat1), which Datasette hides itself
            continue
        assert name in tables, f"table {name} has no metadata"
        assert tables[name]["title"] and tables[name]["description"], name
        described = tables[name]["columns"]
        for column in db[name].columns:
            assert described.get(column.name), f"{name}.{column.name} has no description"
    # units: columns named with a unit say it in words, and the common ones carry Datasette units
    for name, table in tables.items():
        for column, text in table["columns"].items():
            for suffix, word in (("_s", "second"), ("_ms", "millisecond"), ("_mhz", "MHz"), ("_w", "watt"),
                                 ("_usd_per_h", "dollars per hour"), ("_bytes", "bytes"), ("_mib", "MiB")):
                if column.endswith(suffix) and column not in ("started_at", "ended_at"):
                    assert word in text, f"{name}.{column}: {text!r} does not give its unit ({word})"
    assert tables["bench_results"]["units"]["latency_ms"] == "ms"
    assert set(meta["queries"]) == {"sessions_cost_speedup", "regressions", "slowest_steps", "step_telemetry"}


def test_canned_queries_as_json(served):
    rows = _get(f"{served}/sessions/sessions_cost_speedup.json?_shape=array")
    by_number = {r["number"]: r for r in rows}
    assert [r["number"] for r in rows] == [4, 3, 2, 1]
    assert by_number[1]["cost_usd"] == 1.0 and by_number[1]["wall_s"] == 1200.0
    assert by_number[2]["cost_usd"] == 10.5  # (3 + 6) USD/h x 70 min
    assert by_number[2]["best_speedup"] == pytest.approx(5.0 / 4.2, abs=1e-3)
    assert by_number[2]["bench_configs"] == 4 and by_number[3]["best_speedup"] is None

    regressions = _get(f"{served}/sessions/regressions.json?_shape=array")
    assert len(regressions) == 1  # S1024 full: 0.50 ms in session 1, 0.60 ms in session 2
    r = regressions[0]
    assert (r["from_session"], r["to_session"], r["seq_len_q"], r["causal"]) == (1, 2, 1024, 0)
    assert (r["before_ms"], r["after_ms"], r["slowdown"]) == (0.5, 0.6, 1.2)

    slow = _get(f"{served}/sessions/slowest_steps.json?_shape=array")
    assert (slow[0]["session"], slow[0]["step"], slow[0]["budget_ratio"]) == (2, "bench", 1.13)
    assert slow[1]["step"] == "build" and slow[1]["over_budget_s"] == 10.0

    samples = _get(f"{served}/sessions/step_telemetry.json?_shape=array&session=2&seq=4")
    assert len(samples) == 30 and samples[0]["t_s"] == 0 and samples[-1]["t_s"] == 14.5
    assert samples[-1]["throttled"] == 1 and samples[0]["power_w"] == 650.0

    meta = _get(f"{served}/-/metadata.json")
    assert meta["databases"]["sessions"]["tables"]["steps"]["columns"]["duration_s"].startswith("Wall time")


def test_sessions_page_renders_in_headless_chromium(served, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", f"{served}/sessions/sessions"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    assert "<title>sessions: sessions" in dom or "Sessions" in dom
    assert 'class="rows-and-columns"' in dom
    for name in ("baseline", "pipelined softmax", "preempted", "empty"):
        assert name in dom
    assert "One row per optimization session" in dom  # the table's description from the metadata

    shot = tmp_path / "sessions.png"
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1280,900",
         f"--screenshot={shot}", f"{served}/sessions/regressions"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_serve_without_a_database_is_one_line(tmp_path):
    from click.testing import CliRunner

    from sessionkit.cli import cli

    out = CliRunner().invoke(cli, ["--db", str(tmp_path / "none.db"), "serve"])
    assert out.exit_code == 1 and out.output.startswith("Error: no database at")


def test_serve_on_a_busy_port_is_one_line(tmp_path):
    """A port another process listens on: one Error line, exit 1, before Datasette starts."""
    db = build_fixture_db(tmp_path / "sessions.db")
    db.conn.close()
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "sessionkit", "--db", str(tmp_path / "sessions.db"),
                              "serve", "--port", str(port)], capture_output=True, text=True, env=env,
                             timeout=60)
    assert out.returncode == 1, out.stderr
    assert out.stderr == f"Error: port {port} on 127.0.0.1 is already in use; pass another --port (0: any free port)\n"
    assert out.stdout == ""


def test_check_port_free(tmp_path):
    from sessionkit.errors import UsageError
    from sessionkit.serve import PortInUse, check_port_free

    port = _free_port()
    check_port_free("127.0.0.1", port)  # free: no error
    check_port_free("127.0.0.1", 0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen(1)
        with pytest.raises(PortInUse, match="already in use"):
            check_port_free("127.0.0.1", port)
    with pytest.raises(PortInUse, match="cannot listen"):
        check_port_free("192.0.2.1", port)  # TEST-NET-1: not an address of this machine
    with pytest.raises(UsageError):
        check_port_free("no-such-host.invalid", port)


def _wait_serving(base: str, proc, log_path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(f"{base}/-/versions.json")
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(log_path.read_text()[-3000:])
            time.sleep(0.3)


def _start_serve(folder):
    """`sessionkit serve` on the fixture database in its own process, once it answers; returns the
    process, its base URL and the pids of its children (Datasette)."""
    db = build_fixture_db(folder / "sessions.db")
    db.conn.close()
    port = _free_port()
    log_path = folder / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(folder / "sessions.db"),
                                 "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                cwd=folder, env=env)
    base = f"http://127.0.0.1:{port}"
    _wait_serving(base, proc, log_path)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no Datasette child found"
    return proc, base, children


def _assert_gone(pids, what):
    for pid in pids:
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(f"/proc/{pid}"), f"Datasette (pid {pid}) outlived {what}"


@pytest.mark.parametrize("signum,code", [(15, 143), (1, 129), (2, 130)], ids=["TERM", "HUP", "INT"])
def test_signals_to_serve_stop_datasette_too(tmp_path, signum, code):
    """SIGTERM or SIGHUP to `sessionkit serve` (a closed SSH session, `timeout`) used to leave its
    Datasette running, owned by init, still answering on the port. Now every way of stopping it
    ends Datasette as well, and the exit status says which signal it was."""
    proc, base, children = _start_serve(tmp_path)
    os.kill(proc.pid, signum)
    assert proc.wait(timeout=30) == code
    _assert_gone(children, "sessionkit serve")
    with pytest.raises(OSError):
        _get(f"{base}/-/versions.json")


def test_kill_9_of_serve_takes_datasette_along(tmp_path):
    """On Linux, Datasette dies with sessionkit even when sessionkit is killed outright."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    proc, _, children = _start_serve(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    _assert_gone(children, "a killed sessionkit")


def test_the_impl_column_names_every_implementation(tmp_path):
    """The Datasette description of bench_results.impl lists the registry's names, in its order."""
    from sessionkit.attention import IMPLS

    db = build_fixture_db(tmp_path / "sessions.db")
    text = metadata(db.path)["databases"]["sessions"]["tables"]["bench_results"]["columns"]["impl"]
    assert f"({', '.join(IMPLS)})" in text, text


def test_serve_on_port_0_names_no_address_of_its_own(tmp_path):
    """With --port 0 the port is Datasette's choice: sessionkit's line does not make one up
    (http://127.0.0.1:0/), and Datasette's own line gives the real address."""
    db = build_fixture_db(tmp_path / "sessions.db")
    db.conn.close()
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(tmp_path / "sessions.db"),
                             "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=60)
        assert first == (f"Serving {tmp_path / 'sessions.db'} on a free port of 127.0.0.1 (Datasette "
                         "prints its address below) (Ctrl-C stops)\n")
        line = ""
        while "running on http://127.0.0.1:" not in line.lower():
            line = lines.get(timeout=60)  # queue.Empty: Datasette never said where it listens
        port = int(line.lower().split("running on http://127.0.0.1:", 1)[1].split()[0].rstrip("/"))
        assert port > 0
        assert _get(f"http://127.0.0.1:{port}/-/versions.json")
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_serve_names_the_database_path_that_a_renamed_database_gets(tmp_path):
    """Datasette names a database after its file: with `--db h.db` the canned queries live under
    /h/, not /sessions/. serve says so, and the URL it gives answers."""
    build_fixture_db(tmp_path / "h.db").conn.close()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SESSIONKIT_DB"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sessionkit", "--db", str(tmp_path / "h.db"),
                                 "serve", "--port", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_serving(base, proc, log_path)
        said = log_path.read_text().splitlines()
        assert said[1] == ("Its tables and canned queries are under /h/ (as JSON, e.g. "
                           "/h/regressions.json?_shape=array)"), said
        assert isinstance(_get(f"{base}/h/regressions.json?_shape=array"), list)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_datasette_names_escape_what_datasette_escapes():
    from sessionkit.serve import datasette_name

    assert datasette_name("/x/sessions.db") == "sessions"
    assert datasette_name("/x/my sessions.db") == "my+sessions"
    assert datasette_name("/x/a.b.db") == "a~2Eb"
