"""python -m sessionkit.kernels.digest: the build step's digest of the kernel sources, for any
csrc/ folder, and a one-line error where there are none."""

from __future__ import annotations

import subprocess
import sys

from sessionkit.kernels.build import csrc_dir, source_files, sources_digest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "sessionkit.kernels.digest", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_digest_of_the_package_sources_is_the_build_key_input():
    root = csrc_dir()
    out = _run()
    assert out.returncode == 0, out.stderr
    digest, count = out.stdout.split()[:2]
    assert digest == sources_digest(source_files(root), root)
    assert int(count) == len(source_files(root)) > 0


def test_digest_changes_with_a_header_in_a_subfolder(tmp_path):
    (tmp_path / "sm90").mkdir()
    header = tmp_path / "sm90" / "kernel.cuh"
    header.write_text("// one\n")
    (tmp_path / "api.cpp").write_text("int x;\n")
    first = _run(tmp_path).stdout.split()[0]
    header.write_text("// two\n")
    second = _run(tmp_path).stdout.split()[0]
    assert first != second


def test_no_sources_is_one_line_and_exit_2(tmp_path):
    for folder in (tmp_path, tmp_path / "missing"):
        out = _run(folder)
        assert out.returncode == 2
        assert out.stdout == "" and "Traceback" not in out.stderr
        assert out.stderr.strip().startswith("error: no kernel sources under")
