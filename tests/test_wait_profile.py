"""benchmarks/wait_profile.py: reading the "sk_wait" lines of a diagnostic build
(-DSK_SM90_WAIT_PROFILE=1) into shares of the consumers' time. The build itself is covered by the
experiment-switch compile test (no spills, no serialized wgmma)."""

from __future__ import annotations

import pytest
from scripts import ROOT, load_script

SCRIPT = ROOT / "benchmarks" / "wait_profile.py"


def _module():
    return load_script(SCRIPT)


def _line(cta, consumer, tiles, total, **kinds):
    values = " ".join(f"{k} {kinds.get(k, 0)}" for k in ("tile", "q", "k", "v", "turn", "s", "pv",
                                                           "epilogue", "ostore", "osync", "efinal",
                                                           "estore"))
    return f"sk_wait cta {cta} consumer {consumer} tiles {tiles} total {total} {values}"


def test_only_the_last_run_counts_and_shares_add_up():
    wp = _module()
    text = "\n".join([
        f"{wp.MARKER} 0", _line(0, 0, 9, 999_999, q=999_999),  # the warm-up run: ignored
        f"{wp.MARKER} 1",
        _line(0, 0, 4, 10_000, q=1_000, k=500, turn=2_000, s=1_500, pv=500, epilogue=1_000,
              ostore=300, osync=200, efinal=150, estore=250),
        _line(0, 1, 4, 10_000, q=1_000, k=500, turn=2_000, s=1_500, pv=500, epilogue=1_000,
              ostore=300, osync=200, efinal=150, estore=250),
        _line(1, 0, 0, 50, tile=50),  # a consumer that ran no tile is left out
    ])
    rows = wp.parse(text)
    assert len(rows) == 3 and rows[0]["q"] == 1_000 and rows[2]["tiles"] == 0
    table = wp.summarize(rows)
    assert "2 consumer warpgroups ran 8 tiles" in table
    assert "2,500 cycles per tile" in table
    shares = {line.split()[0]: line.split()[-1] for line in table.splitlines()[2:]}
    assert shares["q"] == "10.0%" and shares["turn"] == "20.0%" and shares["epilogue"] == "10.0%"
    assert shares["ostore"] == "3.0%" and shares["osync"] == "2.0%"
    assert shares["efinal"] == "1.5%" and shares["estore"] == "2.5%"
    assert shares["own"] == "26.0%"  # 100 - (10 + 5 + 20 + 15 + 5 + 10 + 3 + 2 + 1.5 + 2.5)


def test_no_profile_lines_is_an_error_that_names_the_switch():
    wp = _module()
    with pytest.raises(ValueError, match="SK_SM90_WAIT_PROFILE"):
        wp.summarize(wp.parse("== wait_profile run 0\nnothing here\n"))


def test_the_diagnostic_build_compiles_and_links_like_the_extension(tmp_path):
    """The extension's build compiles each instantiation for the host too (nvcc -c), where the
    print kernel needs printf declared, and links several instantiations into one library, where
    the print kernel and its table must not be defined twice. Both failed on the GPU machine once
    ('identifier "printf" is undefined', then 'ld returned 1 exit status'); a device-only compile
    of one file sees neither."""
    import subprocess

    from sessionkit import toolchain
    from sessionkit.kernels.build import csrc_dir

    nvcc = toolchain.find_cuda_tool("nvcc").path
    if not nvcc:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda*): cannot compile the kernels")
    root = csrc_dir()
    objects = []
    for name in ("flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "flash_fwd_sm90_fp16_hdim64_causal"):
        obj = tmp_path / f"{name}.o"
        proc = subprocess.run([nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr",
                               *toolchain.arch_flags((9, 0)), "-DSK_SM90_WAIT_PROFILE=1",
                               "-Xcompiler", "-fPIC", "-I", str(root), "-c", "-o", str(obj),
                               str(root / "instantiations" / f"{name}.cu")],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        objects.append(str(obj))
    proc = subprocess.run([nvcc, "-shared", *toolchain.arch_flags((9, 0)), "-o",
                           str(tmp_path / "wait_profile.so"), *objects],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    symbols = subprocess.run(["nm", "-C", str(tmp_path / "wait_profile.so")], capture_output=True,
                             text=True).stdout
    assert symbols.count("print_wait_profile") >= 2, "each object keeps its own print kernel"


def _script(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


def test_help_describes_the_script_in_whole_sentences():
    out = _script("--help")
    assert out.returncode == 0
    description = " ".join(out.stdout.split("\n\n")[1].split())
    assert description.endswith(".") and "each kind of wait" in description, description


@pytest.mark.parametrize("args, said", [
    (["--config", "1,2"], "bad config '1,2'"),
    (["--config", "1,8,1024,1024,64,fp16,0", "--runs", "0"], "--runs"),
    (["--config", "1,8,1024,1024,64,fp16,0", "--runs", "-3"], "--runs"),
])
def test_bad_arguments_are_usage_errors_before_anything_is_built(args, said):
    out = _script(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "sessionkit.errors" not in out.stderr
    assert said in out.stderr.strip().splitlines()[-1]


def test_without_a_cuda_build_of_torch_one_plain_error_line():
    torch = pytest.importorskip("torch")
    if torch.version.cuda is not None and torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would build and run")
    out = _script("--config", "1,8,1024,1024,64,fp16,0", "--runs", "1")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "NoCudaError" not in lines[0] and "sessionkit." not in lines[0], lines  # no class name
    assert "CUDA" in lines[0]
