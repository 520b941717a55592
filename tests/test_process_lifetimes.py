"""Process lifetimes: zombies, the wrapped command's process group, signals in the child, pid
namespaces, a full disk and output without newlines. Real processes throughout."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from small_disk import run_on_small_disk, session_on_tmpfs

from sessionkit.db import open_db


def _env():
    """This interpreter's import path, so that child processes run the sessionkit under test."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def sk(*args, **kw):
    kw.setdefault("capture_output", "stdout" not in kw)
    kw.setdefault("env", _env())
    return subprocess.run([sys.executable, "-m", "sessionkit", *args], text=True, timeout=120, **kw)


def spawn(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sessionkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=_env(), **kw)


def wait_for_line(proc, text, timeout=30):
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}: {seen}")


def processes_with(token: str) -> list[int]:
    """Live (not zombie) processes whose command line holds ``token``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().decode(errors="replace").rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token in cmdline and state != "Z" and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def gone_within(token: str, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not processes_with(token):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def opened(tmp_path):
    assert sk("start", "--objective", "lifetimes").returncode == 0
    return tmp_path


@pytest.fixture
def token():
    """A sleep length that no other process on the machine uses, to find our grandchild by."""
    value = f"{3000 + uuid.uuid4().int % 997}.{uuid.uuid4().int % 9973}"
    yield value
    for pid in processes_with(f"sleep {value}"):
        os.kill(pid, signal.SIGKILL)


# ---- zombies --------------------------------------------------------------------------------------

def test_a_zombie_counts_as_dead(db, session):
    from sessionkit.liveness import process_alive, process_start_time, reap_dead_steps
    from sessionkit.timefmt import now_iso

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = None
    deadline = time.time() + 10
    while time.time() < deadline:  # wait for it to exit; do not reap it
        started = started or process_start_time(child.pid)
        with open(f"/proc/{child.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    try:
        assert not process_alive(child.pid, started)
        db["steps"].insert({"id": "z", "session_id": session["id"], "seq": 1, "name": "zombie",
                            "started_at": now_iso(), "host": socket.gethostname(), "pid": child.pid,
                            "pid_started": started, "heartbeat_at": now_iso()})
        assert len(reap_dead_steps(db)) == 1
        assert db["steps"].get("z")["status"] == "interrupted"
    finally:
        child.wait()


# ---- the wrapped command's process group ---------------------------------------------------------

@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "SIGTERM"),
                                             (signal.SIGHUP, 129, "SIGHUP")])
def test_signal_to_sessionkit_ends_the_commands_whole_group(opened, token, sig, code, word):
    proc = spawn("step", "run", "sweep", "--", "bash", "-c", f"echo started; sleep {token}; echo done")
    wait_for_line(proc, "started")
    assert processes_with(f"sleep {token}")
    os.kill(proc.pid, sig)  # only sessionkit, as a lost SSH session or a scheduler would
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == code, out
    assert gone_within(f"sleep {token}", 10), "the command's child outlived the step"
    row = dict(next(open_db().query("SELECT * FROM steps WHERE name = 'sweep'")))
    assert (row["status"], row["exit_code"], row["message"]) == ("interrupted", code,
                                                                 f"interrupted by {word}")


def test_kill_9_of_sessionkit_ends_the_commands_whole_group(opened, token):
    proc = spawn("step", "run", "sweep", "--", "bash", "-c", f"echo started; sleep {token}; echo done")
    wait_for_line(proc, "started")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert gone_within(f"sleep {token}", 10), "the command outlived sessionkit"


def test_what_the_command_leaves_running_ends_with_the_step(opened, token):
    result = sk("step", "run", "bg", "--", "bash", "-c", f"sleep {token} & echo left")
    assert result.returncode == 0, result.stderr
    assert gone_within(f"sleep {token}", 10), "a background child outlived its step"


def test_the_command_starts_with_default_signal_dispositions(opened):
    probe = "import signal; print('SIGINT', signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGQUIT))"

    def ignore():  # a background job of a shell: SIGINT and SIGQUIT ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    result = subprocess.run([sys.executable, "-m", "sessionkit", "step", "run", "probe", "--",
                             sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, preexec_fn=ignore, env=_env())
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("SIGINT"))
    assert "SIG_IGN" not in line and "default_int_handler" in line


# ---- pid namespaces -------------------------------------------------------------------------------

def test_pid_checks_only_in_the_same_pid_namespace(db, session):
    from sessionkit.liveness import STALE_AFTER_S, pid_namespace, reap_dead_steps
    from sessionkit.timefmt import now_iso, utcnow

    gone_pid = 4_000_000  # above Linux's pid_max: no process here has it
    old = (utcnow() - dt.timedelta(seconds=STALE_AFTER_S + 5)).isoformat()
    rows = [("other-fresh", "pid:[1]", now_iso()), ("other-stale", "pid:[1]", old),
            ("same-gone", pid_namespace(), now_iso())]
    for seq, (step_id, ns, beat) in enumerate(rows, 1):
        db["steps"].insert({"id": step_id, "session_id": session["id"], "seq": seq, "name": step_id,
                            "started_at": old, "host": socket.gethostname(), "pid": gone_pid,
                            "heartbeat_at": beat, "pid_ns": ns})
    reap_dead_steps(db)
    status = {r["id"]: r["status"] for r in db["steps"].rows}
    assert status == {"other-fresh": "running", "other-stale": "interrupted",
                      "same-gone": "interrupted"}


def test_steps_record_their_pid_namespace(opened):
    assert sk("step", "run", "ns", "--", "true").returncode == 0
    row = dict(next(open_db().query("SELECT * FROM steps WHERE name = 'ns'")))
    assert row["pid_ns"] == os.readlink("/proc/self/ns/pid")


# ---- a full disk ----------------------------------------------------------------------------------

FULL_DISK = session_on_tmpfs("4m") + textwrap.dedent("""
    # fill the disk, leaving 1 MiB for the step to fill
    head -c $((3 * 1024 * 1024)) /dev/zero > filler 2>/dev/null
    "$2" -m sessionkit step run flood -- "$2" -c "import sys; [sys.stdout.write('line %d of output\\\\n' % i) for i in range(200000)]" >/dev/null 2>"$3"
    echo "EXIT $?"
    echo "STDERR-BEGIN"; cat "$3"; echo "STDERR-END"
    rm -f filler
    "$2" -m sessionkit show last --json
""")


def test_a_full_disk_ends_the_step_failed_with_the_reason(tmp_path):
    result = run_on_small_disk(FULL_DISK, tmp_path, str(tmp_path / "stderr.txt"), timeout=120)
    out = result.stdout
    code = int(out.split("EXIT ", 1)[1].split()[0])
    stderr = out.split("STDERR-BEGIN\n", 1)[1].split("STDERR-END", 1)[0]
    assert code != 0
    assert "Traceback" not in stderr
    shown = json.loads(out.split("STDERR-END\n", 1)[1])
    flood = next(s for s in shown["steps"] if s["name"] == "flood")
    assert flood["status"] == "failed", flood
    assert "no space left on device" in flood["message"]


LITTLE_LEFT = session_on_tmpfs("4m") + textwrap.dedent("""
    # leave 300 KiB: less than the space a step keeps aside while it runs
    avail=$(df --output=avail -k . | tail -1)
    head -c $(( (avail - 300) * 1024 )) /dev/zero > filler 2>/dev/null
    "$2" -m sessionkit step run flood -- sh -c 'head -c 10000000 /dev/zero > inner 2>/dev/null; seq 1 20000' >/dev/null 2>"$3"
    echo "EXIT $?"
    echo "STDERR-BEGIN"; cat "$3"; echo "STDERR-END"
    rm -f filler inner
    "$2" -m sessionkit show last --json 2>/dev/null
""")


def test_a_step_that_starts_with_little_space_left_is_still_recorded_failed(tmp_path):
    """With less free space than the step's reserve at its start, the command filling the disk
    must still leave the step recorded as failed with the reason, not as a process that died."""
    result = run_on_small_disk(LITTLE_LEFT, tmp_path, str(tmp_path / "stderr.txt"), timeout=120)
    out = result.stdout
    stderr = out.split("STDERR-BEGIN\n", 1)[1].split("STDERR-END", 1)[0]
    assert "Traceback" not in stderr
    shown = json.loads(out.split("STDERR-END\n", 1)[1])
    flood = next(s for s in shown["steps"] if s["name"] == "flood")
    assert flood["status"] == "failed", (flood, stderr)
    assert "no space left on device" in flood["message"]


# ---- output without newlines ----------------------------------------------------------------------

def test_one_enormous_line_keeps_only_its_end(opened):
    from sessionkit.liveness import TAIL_BYTES

    size = 30 * 1024 * 1024
    writer = (f"import sys; sys.stdout.write('a' * {size - 3}); sys.stdout.write('END'); "
              "sys.stdout.flush()")
    started = time.monotonic()
    result = sk("step", "run", "oneline", "--", sys.executable, "-c", writer,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    row = dict(next(open_db().query("SELECT * FROM steps WHERE name = 'oneline'")))
    tail = row["output_tail"]
    assert len(tail.encode()) <= TAIL_BYTES
    assert tail.endswith("aaaEND")
    print(f"30 MB in one line: {elapsed:.1f} s")


def test_tail_buffer_is_linear_and_capped():
    from sessionkit.steps.command import TailBuffer

    buf = TailBuffer(lines=3, max_bytes=10)
    for chunk in (b"abc", b"defghijklmn", b"op\nq", b"r\ns\nt\nxyz"):
        buf.feed(chunk)
    assert buf.text() == "s\nt\nxyz"
    buf = TailBuffer(lines=3, max_bytes=10)
    buf.feed(b"0123456789ABCDEF")
    assert buf.text() == "6789ABCDEF"


# ---- a command killed by a signal -----------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGSEGV, 139), (signal.SIGKILL, 137)])
def test_a_command_killed_by_a_signal_says_which(opened, sig, code):
    """A segfault or the OOM killer's SIGKILL ends the command without a word of its own: the step
    names the signal, on the terminal and in what is recorded, so exit 139 is not left to decode."""
    result = sk("step", "run", "crash", "--", sys.executable, "-c",
                f"import os, signal; os.kill(os.getpid(), {int(sig)})")
    assert result.returncode == code, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert f"FAILED (exit {code})" in last and f"killed by {sig.name}" in last, last
    row = dict(next(open_db().query("SELECT status, message, exit_code FROM steps WHERE name = 'crash'")))
    assert row == {"status": "failed", "message": f"killed by {sig.name}", "exit_code": code}
