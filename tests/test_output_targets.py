"""``-o`` keeps what the path is: a symlink stays a link (its target is replaced whole), a FIFO and a
device are written in place, a regular file is replaced whole."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import pytest

from sessionkit.db import open_db


def sk(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sessionkit", *args], capture_output=True, text=True,
                          timeout=60, **kw)


@pytest.fixture
def recorded():
    assert sk("start", "--objective", "outputs").returncode == 0
    assert sk("step", "run", "x", "--", "echo", "hi").returncode == 0


@pytest.mark.parametrize("command", ["history", "report", "export"])
def test_symlink_output_keeps_the_link(tmp_path, recorded, command):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "out.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    res = sk(command, "-o", str(link))
    assert res.returncode == 0, res.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() != "old\n" and target.read_text() == link.read_text()
    assert not list((tmp_path / "real").glob(".*tmp"))


# Every command with -o, and the arguments that run it (before -o PATH).
OUTPUT_COMMANDS = {
    "history": ["history"], "patterns": ["patterns"], "report": ["report"], "export": ["export"],
    "run": ["run", "--objective", "refused", "--plan", "preflight", "--no-hooks", "--force"],
}


def test_every_command_with_an_output_option_is_tried():
    import click

    from sessionkit.cli import cli

    ctx = click.Context(cli, info_name="sessionkit")
    with_o = {name for name in cli.list_commands(ctx)
              if any("-o" in getattr(p, "opts", []) for p in cli.get_command(ctx, name).params)}
    assert with_o == set(OUTPUT_COMMANDS)


@pytest.mark.parametrize("command", sorted(OUTPUT_COMMANDS))
def test_a_dangling_symlink_output_is_refused_and_kept(tmp_path, recorded, command):
    """`history -o LINK` with LINK pointing where nothing is made the link's target and the
    folders on the way to it. Every -o refuses it in one line, before any work (`run` opens no
    session, `report` draws no plot), and leaves the link as it was."""
    target = tmp_path / "nowhere" / "deeper" / "out.md"
    link = tmp_path / "link.md"
    link.symlink_to(target)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = sk(*OUTPUT_COMMANDS[command], "-o", str(link))
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr == (f"Error: cannot write {link}: it is a symbolic link to {target}, "
                          "which does not exist\n")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert [r[0] for r in open_db().execute("SELECT objective FROM sessions")] == ["outputs"]


def test_a_dangling_symlink_is_refused_by_the_library_before_anything_is_made(tmp_path):
    from sessionkit.atomic import check_output, write_atomic
    from sessionkit.errors import SessionkitError

    link = tmp_path / "link.md"
    link.symlink_to(tmp_path / "a" / "b.md")
    for call in (lambda: check_output(link), lambda: write_atomic(link, "x", make_parents=True)):
        with pytest.raises(SessionkitError, match="which does not exist$"):
            call()
    assert sorted(os.listdir(tmp_path)) == ["link.md"]


@pytest.mark.parametrize("command", sorted(OUTPUT_COMMANDS))
def test_an_output_below_a_dangling_folder_link_is_refused_in_words(tmp_path, recorded, command):
    """`-o LINK/x.md` with LINK a symbolic link to a folder that does not exist said only
    "File exists" (making the folders failed on the link); it names the link now, before any
    work, and makes nothing."""
    link = tmp_path / "dl"
    link.symlink_to(tmp_path / "gone")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = sk(*OUTPUT_COMMANDS[command], "-o", str(link / "sub" / "x.md"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr == (f"Error: cannot write {link / 'sub' / 'x.md'}: its folder {link} is a "
                          f"symbolic link to {tmp_path / 'gone'}, which does not exist\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert [r[0] for r in open_db().execute("SELECT objective FROM sessions")] == ["outputs"]


def test_fifo_output_reaches_the_reader(tmp_path, recorded):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    res = sk("export", "-o", str(fifo))
    reader.join(timeout=30)
    if reader.is_alive():  # nothing was written to the FIFO: let the reader go
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert res.returncode == 0, res.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and json.loads(got[0])["session"]["objective"] == "outputs"


def test_descriptor_link_output_is_written_in_place(recorded):
    # /proc/self/fd/1 is what /dev/stdout points to; using it directly keeps /dev untouched.
    res = sk("export", "-o", "/proc/self/fd/1")
    assert res.returncode == 0, res.stderr
    assert '"objective": "outputs"' in res.stdout


def test_full_device_output_is_one_error_and_stays_a_device(tmp_path, recorded):
    device = tmp_path / "full"
    try:  # a private copy of /dev/full (char 1:7), so that a failure cannot harm the real one
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except (PermissionError, AttributeError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    res = sk("export", "-o", str(device))
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    if "Permission denied" in res.stderr or "Operation not permitted" in res.stderr:
        pytest.skip(f"device nodes do not work in {tmp_path}: {res.stderr.strip()}")
    assert res.returncode == 1
    assert res.stderr.strip() == f"Error: cannot write {device}: no space left on device"


def test_regular_file_output_is_replaced_whole(tmp_path, recorded):
    out = tmp_path / "h.md"
    out.write_text("old\n")
    inode = out.stat().st_ino
    assert sk("history", "-o", str(out)).returncode == 0
    assert out.read_text() != "old\n" and out.stat().st_ino != inode  # a new file, renamed in place


@pytest.mark.parametrize("args", [("sessions", "--json"), ("export",), ("report",), ("show", "1")])
def test_printing_to_a_full_disk_is_one_error(tmp_path, recorded, args):
    """stdout on a full disk (a copy of /dev/full): one Error line, exit 1, no traceback, and
    nothing written again at exit."""
    device = tmp_path / "full"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except (PermissionError, AttributeError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    with open(device, "w") as full:
        res = subprocess.run([sys.executable, "-m", "sessionkit", *args], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    if "Permission denied" in res.stderr or "Operation not permitted" in res.stderr:
        pytest.skip(f"device nodes do not work in {tmp_path}: {res.stderr.strip()}")
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == "Error: No space left on device"



def test_a_step_printing_to_a_full_disk_still_runs_and_is_recorded(tmp_path, recorded):
    """`sessionkit step run X -- CMD > file-on-a-full-disk`: the command runs to its end, the step
    is recorded with its own status and output tail, and stderr says once that output was
    dropped."""
    device = tmp_path / "full"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except (PermissionError, AttributeError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    marker = tmp_path / "marker"
    with open(device, "w") as full:
        res = subprocess.run([sys.executable, "-m", "sessionkit", "step", "run", "onfull", "--",
                              sys.executable, "-c",
                              f"print('hello'); open({str(marker)!r}, 'w').write('done')"],
                             stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    if "Permission denied" in res.stderr or "Operation not permitted" in res.stderr:
        pytest.skip(f"device nodes do not work in {tmp_path}: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    assert marker.read_text() == "done"
    assert res.stderr.count("output dropped (no space left on device)") == 1, res.stderr
    row = open_db().execute("SELECT status, output_tail FROM steps WHERE name = 'onfull'").fetchone()
    assert row[0] == "passed" and "hello" in row[1]


@pytest.mark.parametrize("command", [["report"], ["export"], ["history"], ["patterns"]])
@pytest.mark.parametrize("how", ["same", "link", "hardlink", "wal"])
def test_no_output_is_written_over_the_database(tmp_path, recorded, command, how):
    """`report -o sessions.db` renamed the report over every recorded session."""
    db = os.path.realpath(os.environ["SESSIONKIT_DB"])
    target = {"same": db, "wal": db + "-wal", "link": str(tmp_path / "link.md"),
              "hardlink": str(tmp_path / "hard.md")}[how]
    if how == "link":
        os.symlink(db, target)
    if how == "hardlink":
        os.link(db, target)
    counts = "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM steps)"
    before = open_db(db).execute(counts).fetchone()
    res = sk(*command, "-o", target)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.strip() == (f"Error: will not write {target}: it is the session database "
                                  "(or one of its files); give another output path")
    with open(db, "rb") as fh:
        assert fh.read(16) == b"SQLite format 3\x00"
    conn = open_db(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute(counts).fetchone() == before
    assert sk("sessions").returncode == 0
    assert os.path.islink(target) if how == "link" else True


def test_a_link_in_a_loop_is_refused_and_kept(tmp_path, recorded):
    """`export -o` a link that is part of a loop replaced the link with a file; a link given to
    -o stays a link."""
    a, b = tmp_path / "a", tmp_path / "b"
    os.symlink(b, a)
    os.symlink(a, b)
    res = sk("export", "-o", str(a))
    assert res.returncode == 1
    assert res.stderr.strip() == f"Error: cannot write {a}: its symbolic links form a loop"
    assert os.path.islink(a) and os.readlink(a) == str(b)


# `-o -` (and `--csv -`): `-` is standard output, as in click.File and most Unix tools, where the
# command prints what it writes; where standard output already carries a step's progress, it is
# refused in one line. It used to write a file named `-`.
DASH_PRINTS = {
    "report": (["report", "1"], "# "), "report --json": (["report", "1", "--json"], "{"),
    "history": (["history"], "# Session history"), "history --json": (["history", "--json"], "{"),
    "patterns": (["patterns"], "# "), "patterns --json": (["patterns", "--json"], "{"),
    "export": (["export", "1"], "{"),
}


@pytest.mark.parametrize("case", sorted(DASH_PRINTS))
def test_dash_output_prints_to_standard_output(tmp_path, recorded, case):
    args, start = DASH_PRINTS[case]
    before = sorted(os.listdir(tmp_path))
    res = sk(*args, "-o", "-")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(start) and "Wrote" not in res.stdout, res.stdout[:200]
    if start == "{":
        json.loads(res.stdout)
    if case == "export":
        assert json.loads(res.stdout)["session"]["objective"] == "outputs"
    assert not os.path.lexists(tmp_path / "-")
    assert sorted(os.listdir(tmp_path)) == before  # no file named '-', no plots beside it


@pytest.mark.parametrize("args", [
    ["run", "--objective", "refused", "--plan", "preflight", "--no-hooks", "--force", "-o", "-"],
    ["step", "bench", "--csv", "-"],
])
def test_dash_output_is_refused_where_standard_output_carries_progress(tmp_path, recorded, args):
    """`run -o -` and `step bench --csv -` keep a file (the report with its plots, a CSV the step
    records among its files) while progress goes to standard output: `-` is one usage error that
    says why, before any session is opened or step recorded."""
    before = sorted(os.listdir(tmp_path))
    res = sk(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == "" and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith("Error: Invalid value for ")
    assert "'-' (standard output) is not taken here" in res.stderr
    assert "(./- for a file named '-')" in res.stderr
    assert sorted(os.listdir(tmp_path)) == before
    conn = open_db()
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 1


def test_a_file_named_dash_is_written_as_dot_slash_dash(tmp_path, recorded):
    res = sk("export", "-o", "./-")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "-").read_text())["session"]["objective"] == "outputs"


def test_every_output_option_reads_dash_as_standard_output():
    """Each command's -o is an OutputPath, so that a command added later reads '-' as the others
    do (prints, or refuses in one line)."""
    import click

    from sessionkit.cli import cli
    from sessionkit.paramtypes import OutputPath

    ctx = click.Context(cli, info_name="sessionkit")
    for name in OUTPUT_COMMANDS:
        option = next(p for p in cli.get_command(ctx, name).params if "-o" in p.opts)
        assert isinstance(option.type, OutputPath), name
        assert option.type.stdout == (name != "run"), name
        assert "'-'" in option.help, name
