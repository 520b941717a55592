"""Secrets stay out of everything sessionkit stores or renders: argv, options, summaries, output
tails, logs, exports and reports, with the environment snapshot's marker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sessionkit.envinfo import REDACTED
from sessionkit.secrets import SecretScrubber

TOKEN = "ghp_Zx9secretvalue42"
PASSWORD = "hunter2-Pa55word"
URL_PASS = "s3cr3tUrlPass"


def sk(*args, env):
    return subprocess.run([sys.executable, "-m", "sessionkit", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def everything_stored(tmp_path: Path, env) -> str:
    """The whole database as SQL text, every file under .sessionkit, the export and the report."""
    import sqlite3

    conn = sqlite3.connect(tmp_path / "sessions.db")
    parts = ["\n".join(conn.iterdump())]
    conn.close()
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".txt", ".md", ".json", ".csv"):
            parts.append(path.read_text(errors="replace"))
    parts.append(sk("export", "last", env=env).stdout)
    parts.append(sk("report", "last", env=env).stdout)
    parts.append(sk("show", "last", "--json", env=env).stdout)
    return "\n".join(parts)


def test_no_secret_is_stored_or_rendered(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), GITHUB_TOKEN=TOKEN,
               SESSIONKIT_DB=str(tmp_path / "sessions.db"))
    assert sk("start", "--objective", "secrets", env=env).returncode == 0
    script = ("echo token is $GITHUB_TOKEN; echo cloning https://bob:" + URL_PASS
              + "@example.com/repo.git; echo args: \"$@\"")
    result = sk("step", "run", "pw", "--", "sh", "-c", script, "sh", f"--password={PASSWORD}",
                "--token", "plain-token-value", f"API_KEY={PASSWORD}x", env=env)
    assert result.returncode == 0, result.stderr
    assert TOKEN in result.stdout  # the terminal shows the command's own output as it is
    stored = everything_stored(tmp_path, env)
    for secret in (TOKEN, PASSWORD, URL_PASS, "plain-token-value"):
        assert secret not in stored, secret
    assert f"token is {REDACTED}" in stored
    assert f"--password={REDACTED}" in stored
    assert f"https://{REDACTED}@example.com" in stored


def test_secrets_inside_a_shell_script_are_scrubbed_everywhere(tmp_path):
    """A secret option written inside one argument (the script of ``sh -c``) is found word by
    word: its value leaves the stored command, options, summary, output tail and log, and the rest
    of the script is kept."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), MY_API_TOKEN=TOKEN,
               SESSIONKIT_DB=str(tmp_path / "sessions.db"))
    assert sk("start", "--objective", "secrets in a script", env=env).returncode == 0
    script = (f"echo $MY_API_TOKEN; echo --password={PASSWORD}; "
              f"echo https://user:{URL_PASS}@host/x")
    result = sk("step", "run", "s", "--", "sh", "-c", script, env=env)
    assert result.returncode == 0, result.stderr
    stored = everything_stored(tmp_path, env)
    for secret in (TOKEN, PASSWORD, URL_PASS):
        assert secret not in stored, secret
    assert f"echo --password={REDACTED}; echo https://{REDACTED}@host/x" in stored  # the script
    assert f"\n--password={REDACTED}\n" in stored  # the command's output line, in its log


def test_script_arguments_are_read_word_by_word():
    found = SecretScrubber.argv_secrets(["sh", "-c", "run --token=abc123def; API_KEY='q1w2e3r4' go"])
    assert sorted(found) == ["abc123def", "q1w2e3r4"]
    scrub = SecretScrubber({}, found)
    assert scrub.argv(["sh", "-c", "run --token=abc123def; echo done"]) == [
        "sh", "-c", f"run --token={REDACTED}; echo done"]


def test_argv_scrubbing():
    scrub = SecretScrubber({"HF_TOKEN": "hf_abcdefgh"})
    assert scrub.argv(["tool", "--password=xyz", "--token", "abc", "--auth-token=q", "-v",
                       "GITHUB_TOKEN=t", "--url=https://u:p@h/x", "hf_abcdefgh", "--keep=1"]) == [
        "tool", f"--password={REDACTED}", "--token", REDACTED, f"--auth-token={REDACTED}", "-v",
        f"GITHUB_TOKEN={REDACTED}", f"--url=https://{REDACTED}@h/x", REDACTED, "--keep=1"]


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.sampled_from(["SECRET-ABCDEFG", "https://me:pw@host/", "plain text ",
                                        "\n", "xy", "://", "SECRET-ABC"]), max_size=40),
       cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_stream_scrubbing_matches_whole_text_scrubbing(pieces, cuts):
    scrub = SecretScrubber({"MY_SECRET": "SECRET-ABCDEFG"})
    data = "".join(pieces).encode()
    stream = scrub.stream()
    out = b""
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        out += stream.feed(data[last:cut])
        last = max(last, cut)
    out += stream.flush()
    assert out.decode() == scrub.text(data.decode())
    assert b"SECRET-ABCDEFG" not in out and b"me:pw@" not in out


def test_url_credential_scrubbing_is_linear_on_long_lines():
    import time

    from sessionkit.envinfo import Redactor

    line = "a" * 256 * 1024 + "://host/x https://u:p@h/ " + "b" * 1024
    started = time.perf_counter()
    out = Redactor({}).text(line)
    elapsed = time.perf_counter() - started
    assert out.endswith(f"://host/x https://{REDACTED}@h/ " + "b" * 1024)
    assert elapsed < 3.0, f"{elapsed:.1f} s for 256 KiB: the pattern backtracks"


def test_session_text_fields_are_scrubbed_at_write_time(tmp_path):
    """Name, objective, outcome and pattern notes get the same scrubbing and marker as argv."""
    env = {**os.environ, "MY_API_TOKEN": TOKEN, "HF_TOKEN": "hf_Qw8anotherSecret77"}
    name = f"run with https://bob:{URL_PASS}@example.com"
    objective = f"tune with --password={PASSWORD} and token {TOKEN}"
    assert sk("start", name, "--objective", objective, env=env).returncode == 0
    note = "used hf_Qw8anotherSecret77 and MY_API_TOKEN=literal-secret-9"
    res = sk("pattern", "apply", "profile-first", "--note", note, env=env)
    assert res.returncode == 0, res.stderr
    res = sk("end", "--outcome", f"done; --token {PASSWORD} worked", env=env)
    assert res.returncode == 0, res.stderr

    shown = everything_stored(tmp_path, env)
    for cmd in (["history"], ["sessions"], ["show", "last"], ["status"]):
        shown += sk(*cmd, env=env).stdout
    for secret in (TOKEN, PASSWORD, URL_PASS, "hf_Qw8anotherSecret77", "literal-secret-9"):
        assert secret not in shown
    import sqlite3

    conn = sqlite3.connect(tmp_path / "sessions.db")
    stored_name, stored_objective, stored_outcome = conn.execute(
        "SELECT name, objective, outcome FROM sessions").fetchone()
    (stored_note,) = conn.execute("SELECT note FROM patterns_applied").fetchone()
    assert stored_name == f"run with https://{REDACTED}@example.com"
    assert stored_objective == f"tune with --password={REDACTED} and token {REDACTED}"
    assert stored_outcome == f"done; --token {REDACTED} worked"
    assert stored_note == f"used {REDACTED} and MY_API_TOKEN={REDACTED}"
