"""The build step and the kernels' Python side, without a GPU: log parsing, cache keys, manifests,
argument checks on CPU tensors, and the step's skip path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionkit.kernels import build
from sessionkit.kernels.ptxas import first_compile_error, parse_ptxas
from sessionkit.steps.build import BuildStep

# Captured from a ninja build of csrc/ with nvcc 13.0 (-Xptxas=-v), trimmed to two kernels, plus a
# made-up third kernel with static smem and spills to cover those fields.
PTXAS_LOG = """\
[1/10] /usr/local/cuda/bin/nvcc  -DTORCH_EXTENSION_NAME=sessionkit_flash_cc49c0e909ce -I/src/csrc -O3 -Xptxas=-v -gencode=arch=compute_90a,code=sm_90a -c /src/csrc/flash_fwd_bf16_hdim128_causal.cu -o flash_fwd_bf16_hdim128_causal.cuda.o
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'flash_fwd_bf16_hdim128_causal' for 'sm_90a'
ptxas info    : Function properties for flash_fwd_bf16_hdim128_causal
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 210 registers, used 1 barriers
ptxas info    : Compile time = 326.677 ms
[2/10] /usr/local/cuda/bin/nvcc  -DTORCH_EXTENSION_NAME=sessionkit_flash_cc49c0e909ce -c /src/csrc/flash_fwd_fp16_hdim64_noncausal.cu -o flash_fwd_fp16_hdim64_noncausal.cuda.o
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'flash_fwd_fp16_hdim64_noncausal' for 'sm_90a'
ptxas info    : Function properties for flash_fwd_fp16_hdim64_noncausal
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 196 registers, used 1 barriers
ptxas info    : Compile time = 303.837 ms
[3/10] nvcc -c made_up.cu
ptxas info    : Function properties for _Z6helperPf
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'spilly' for 'sm_90a'
ptxas info    : (C7514) Potential Performance Loss: wgmma.mma_async instructions are serialized due to non wgmma instructions reading accumulator registers of  a wgmma between start and end of the pipeline stage in the function 'spilly'
ptxas info    : Function properties for spilly
    40 bytes stack frame, 36 bytes spill stores, 28 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 380 bytes cmem[0]
"""


def test_parse_ptxas_reads_each_kernel():
    kernels = parse_ptxas(PTXAS_LOG)
    assert sorted(kernels) == ["flash_fwd_bf16_hdim128_causal", "flash_fwd_fp16_hdim64_noncausal",
                               "spilly"]
    k = kernels["flash_fwd_bf16_hdim128_causal"]
    assert (k.registers, k.static_smem_bytes, k.spill_store_bytes, k.spill_load_bytes) == (210, 0, 0, 0)
    assert kernels["flash_fwd_fp16_hdim64_noncausal"].registers == 196
    s = kernels["spilly"]
    assert (s.registers, s.static_smem_bytes, s.stack_frame_bytes) == (255, 4096, 40)
    assert (s.spill_store_bytes, s.spill_load_bytes) == (36, 28)
    assert s.wgmma_serialized == ("C7514: due to non wgmma instructions reading accumulator "
                                  "registers of a wgmma between start and end of the pipeline stage")
    assert k.wgmma_serialized is None


def test_parse_ptxas_ignores_device_functions_and_noise():
    assert "_Z6helperPf" not in parse_ptxas(PTXAS_LOG)
    assert parse_ptxas("ninja: no work to do.\n") == {}


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=400))
def test_parse_ptxas_never_raises(text):
    result = parse_ptxas(text)
    assert all(r.registers is not None for r in result.values())


@pytest.mark.parametrize("log,expected", [
    ("[1/9] nvcc ...\n/src/csrc/flash_fwd_kernel.cuh(212): error: identifier \"acc\" is undefined\n"
     "1 error detected", "/src/csrc/flash_fwd_kernel.cuh:212: identifier \"acc\" is undefined"),
    ("In file included from x.cpp:3:\n/src/csrc/flash_api.cpp:41:7: error: 'foo' was not declared\n",
     "/src/csrc/flash_api.cpp:41: 'foo' was not declared"),
    ("/src/csrc/flash_api.cpp:13:10: fatal error: c10/cuda/CUDAGuard.h: No such file or directory\n",
     "/src/csrc/flash_api.cpp:13: c10/cuda/CUDAGuard.h: No such file or directory"),
    ("ptxas /tmp/tmpxft_1.ptx, line 88; error   : Unknown symbol 'x'\n",
     "/tmp/tmpxft_1.ptx:88: Unknown symbol 'x'"),
    ("[10/10] c++ flash_api.o -o lib.so\n/usr/bin/ld: cannot find -lc10_cuda: No such file or directory\n",
     "link: cannot find -lc10_cuda: No such file or directory"),
])
def test_first_compile_error(log, expected):
    assert first_compile_error(log) == expected


def test_first_compile_error_none_on_clean_log():
    assert first_compile_error(PTXAS_LOG) is None


def test_sources_are_found_and_named():
    root = build.csrc_dir()
    names = build.kernel_names(root)
    # sm80: D 64, 128; sm90: D 64, 96, 128, 256; x {fp16, bf16} x {causal, not}; plus, in both
    # dtypes, the sm90 short-keys variants (D=64 causal and non-causal, D=128 causal), D=64
    # causal's mid-keys variant, a split-KV variant per sm90 head dim and the D=128 non-causal
    # long-keys variant
    assert len(names) == 8 + 16 + 6 + 2 + 8 + 2
    assert "flash_fwd_sm90_fp16_hdim128_causal_shortkeys" in names
    assert "flash_fwd_sm90_fp16_hdim64_noncausal_shortkeys" in names
    assert "flash_fwd_sm90_bf16_hdim128_noncausal_longkeys" in names
    assert "flash_fwd_sm90_bf16_hdim64_causal_shortkeys" in names
    assert "flash_fwd_sm90_fp16_hdim64_causal_midkeys" in names
    assert "flash_fwd_sm90_fp16_hdim256_noncausal_splitkv" in names
    assert "flash_fwd_sm90_bf16_hdim128_causal" in names
    assert "flash_fwd_sm80_fp16_hdim64_noncausal" in names
    files = {str(p.relative_to(root)) for p in build.source_files(root)}
    assert {"flash_api.cpp", "flash_fwd.h", "sm80/kernel.cuh", "sm90/kernel.cuh", "sm90/ptx.cuh",
            "common/softmax.cuh", "common/mask.cuh",
            "instantiations/flash_fwd_sm90_bf16_hdim128_causal.cu", "common/combine.cuh",
            "instantiations/flash_combine_bf16.cu"} <= files


def _key(**over):
    facts = dict(sources_sha256="a" * 64, torch_version="2.11.0+cu130", torch_cuda="13.0",
                 python="3.12.3", arch="sm_90a", flags=["-O3"], nvcc_version="13.0")
    facts.update(over)
    return build.build_key(**facts)


def test_build_key_changes_with_every_input():
    base = _key()
    assert base == _key()
    changed = [_key(sources_sha256="b" * 64), _key(torch_version="2.12.0"), _key(torch_cuda="12.8"),
               _key(python="3.11.7"), _key(arch="sm_80"), _key(flags=["-O2"]), _key(nvcc_version="12.9")]
    assert len({base, *changed}) == 1 + len(changed)


def test_sources_digest_follows_content(tmp_path):
    (tmp_path / "a.cu").write_text("x")
    (tmp_path / "b.h").write_text("y")
    files = build.source_files(tmp_path)
    first = build.sources_digest(files, tmp_path)
    (tmp_path / "b.h").write_text("z")
    assert build.sources_digest(files, tmp_path) != first


def test_sources_digest_covers_headers_in_subfolders(tmp_path):
    """An edit to a header two folders down must give a new build key (it used to keep the old
    build)."""
    (tmp_path / "sm90").mkdir()
    (tmp_path / "common" / "deep").mkdir(parents=True)
    (tmp_path / "api.cpp").write_text("x")
    (tmp_path / "sm90" / "kernel.cuh").write_text("y")
    (tmp_path / "common" / "deep" / "softmax.cuh").write_text("z")
    (tmp_path / "generate_kernels.py").write_text("not a source")
    files = build.source_files(tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in files] == [
        "api.cpp", "common/deep/softmax.cuh", "sm90/kernel.cuh"]
    first = build.sources_digest(files, tmp_path)
    (tmp_path / "common" / "deep" / "softmax.cuh").write_text("z2")
    assert build.sources_digest(build.source_files(tmp_path), tmp_path) != first


def test_manifest_needs_the_library(tmp_path):
    lib = tmp_path / "lib.so"
    (tmp_path / "manifest.json").write_text(json.dumps({"key": "k", "library": str(lib)}))
    assert build.read_manifest(tmp_path) is None  # library missing: rebuild
    lib.write_bytes(b"\x7fELF")
    assert build.read_manifest(tmp_path)["key"] == "k"
    (tmp_path / "manifest.json").write_text("{not json")
    assert build.read_manifest(tmp_path) is None


def test_ninja_progress():
    assert build.ninja_progress("") is None
    assert build.ninja_progress(PTXAS_LOG) == (3, 10)


def test_step_skips_without_cuda(make_context, monkeypatch):
    def no_cuda():
        raise build.NoCudaError("no CUDA GPU is visible to torch")

    monkeypatch.setattr(build, "_torch_cuda", no_cuda)
    result = BuildStep().run(make_context(name="build"))
    assert result.status == "skipped"
    assert "no CUDA GPU" in result.message


def test_step_skips_when_torch_missing(make_context, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    result = BuildStep().run(make_context(name="build"))
    assert result.status == "skipped"
    assert "torch is not installed" in result.message


def test_step_fails_with_first_error_and_log(make_context, monkeypatch, tmp_path, db):
    log = tmp_path / "build.log"
    log.write_text("/src/csrc/flash_fwd_kernel.cuh(7): error: expected a \";\"\n")

    def broken(**_kw):
        raise build.BuildError("kernel build failed", first_error="/src/csrc/flash_fwd_kernel.cuh:7: "
                               "expected a \";\"", log_path=log)

    monkeypatch.setattr(build, "_torch_cuda", lambda: None)
    monkeypatch.setattr(build, "build_extension", broken)
    context = make_context(name="build")
    result = BuildStep().run(context)
    assert result.status == "failed"
    assert result.message == "/src/csrc/flash_fwd_kernel.cuh:7: expected a \";\""
    rows = list(db.query("SELECT path, kind FROM artifacts WHERE step_id = ?", [context.step_id]))
    assert rows == [{"path": str(log), "kind": "log"}]


def test_importing_kernels_does_not_import_torch():
    code = ("import sys, sessionkit.kernels, sessionkit.kernels.build, sessionkit.steps; "
            "sessionkit.steps.get_step('build'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- argument checks on CPU tensors (torch CPU build in CI) ---------------------------------------

def _torch():
    return pytest.importorskip("torch")


def _qkv(torch, shape_q=(1, 2, 8, 64), shape_k=(1, 2, 8, 64), dtype=None):
    dtype = dtype or torch.float16
    return (torch.zeros(shape_q, dtype=dtype), torch.zeros(shape_k, dtype=dtype),
            torch.zeros(shape_k, dtype=dtype))


@pytest.mark.parametrize("mutate,exc,words", [
    (lambda t, q, k, v: (q.float(), k.float(), v.float()), TypeError, "dtype float32"),
    (lambda t, q, k, v: (q, k.bfloat16(), v), TypeError, "share one dtype"),
    (lambda t, q, k, v: (q[..., :32], k[..., :32], v[..., :32]), ValueError, "head_dim 32"),
    (lambda t, q, k, v: (q[0], k, v), ValueError, "4-D"),
    (lambda t, q, k, v: (q, t.cat([k, k]), v), ValueError, "batch sizes differ"),
    (lambda t, q, k, v: (q, k[:, :1], v[:, :1]), ValueError, "head counts differ"),
    (lambda t, q, k, v: (q, k, v[:, :, :4]), ValueError, "sequence lengths differ"),
    (lambda t, q, k, v: (q, k[:, :, :0], v[:, :, :0]), ValueError, "no keys"),
    (lambda t, q, k, v: (t.zeros(1, 2, 64, 8, dtype=t.float16).transpose(2, 3), k, v), ValueError,
     "contiguous"),
    (lambda t, q, k, v: (q, k, v), ValueError, "needs CUDA tensors"),
    (lambda t, q, k, v: ([1.0], k, v), TypeError, "torch.Tensor"),
])
def test_bad_inputs_are_named(mutate, exc, words):
    torch = _torch()
    from sessionkit.kernels import flash_attention

    q, k, v = mutate(torch, *_qkv(torch))
    with pytest.raises(exc, match=words):
        flash_attention(q, k, v)


def test_bad_scale_and_causal():
    torch = _torch()
    from sessionkit.kernels.api import _resolve_causal, resolve_scale

    assert resolve_scale(None, 64) == pytest.approx(0.125)
    assert resolve_scale(2, 64) == 2.0
    with pytest.raises(ValueError, match="finite"):
        resolve_scale(float("nan"), 64)
    with pytest.raises(TypeError, match="number"):
        resolve_scale("0.1", 64)
    with pytest.raises(TypeError, match="bool"):
        _resolve_causal("yes")
    q, k, v = _qkv(torch)
    from sessionkit.kernels.api import check_outputs

    with pytest.raises(ValueError, match=r"lse must have shape .* = \(1, 2, 8\); got \(1, 2, 9\)"):
        check_outputs(q, torch.zeros_like(q), torch.zeros(1, 2, 9))
    with pytest.raises(TypeError, match="lse must be float32"):
        check_outputs(q, torch.zeros_like(q), torch.zeros(1, 2, 8, dtype=torch.float16))
    with pytest.raises(TypeError, match="out must have dtype float16"):
        check_outputs(q, torch.zeros_like(q, dtype=torch.float32), torch.zeros(1, 2, 8))


@settings(max_examples=80, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=5), min_size=3, max_size=3),
    dims=st.lists(st.sampled_from([16, 64, 96, 128]), min_size=3, max_size=3),
    dtypes=st.lists(st.sampled_from(["float16", "bfloat16", "float32"]), min_size=3, max_size=3),
)
def test_checks_fuzzed(shapes, dims, dtypes):
    """Any CPU input gets a TypeError or ValueError (never another exception), with a message."""
    torch = _torch()
    from sessionkit.kernels.api import check_inputs

    tensors = [torch.zeros(*s[:-1], d, dtype=getattr(torch, dt)) if len(s) > 1 else
               torch.zeros(d, dtype=getattr(torch, dt)) for s, d, dt in zip(shapes, dims, dtypes)]
    with pytest.raises((TypeError, ValueError)) as info:
        check_inputs(*tensors)
    assert str(info.value).startswith("flash_attention: ")


def test_fakes_are_registered_when_the_build_step_loaded_the_library_first(monkeypatch):
    from sessionkit.kernels import api, build

    calls = []
    monkeypatch.setattr(build, "loaded", lambda: "already loaded by the build step")
    monkeypatch.setattr(api, "_register_fakes", lambda: calls.append("fakes"))
    assert api.load_extension() == "already loaded by the build step"
    assert calls == ["fakes"]


def test_step_names_spilled_and_serialized_kernels(make_context, monkeypatch, tmp_path):
    """The build step's message names the kernels that spill and those whose wgmma ptxas
    serialized (both read from the build log by parse_ptxas)."""
    table = {name: {**res.to_dict(), "smem_bytes": 0} for name, res in parse_ptxas(PTXAS_LOG).items()}

    def built(**_kw):
        return build.BuildInfo(key="k", folder=str(tmp_path), library=str(tmp_path / "lib.so"),
                               cached=False, arch="sm_90a", flags=[], nvcc=None, nvcc_version=None,
                               torch="2", torch_cuda=None, python="3", build_time_s=1.5,
                               load_time_s=0.1, built_at="now", kernels=table)

    monkeypatch.setattr(build, "_torch_cuda", lambda: None)
    monkeypatch.setattr(build, "build_extension", built)
    result = BuildStep().run(make_context(name="build"))
    assert result.status == "passed"
    assert "SPILLS in spilly" in result.message
    assert "WGMMA SERIALIZED in spilly" in result.message
    assert "flash_fwd_bf16_hdim128_causal" not in result.message


@pytest.mark.parametrize("flags, macros", [
    (["-DSK_A=1", "-Xptxas=-v", "-USK_B"], ["-DSK_A=1", "-USK_B"]),
    (["-D", "SK_A=1", "-O3", "-U", "SK_B"], ["-D", "SK_A=1", "-U", "SK_B"]),
    (["--expt-relaxed-constexpr", "-D"], []),
    ([], []),
])
def test_macro_flags_reach_the_host_compile(flags, macros):
    from sessionkit.kernels.build import macro_flags

    assert macro_flags(flags) == macros
