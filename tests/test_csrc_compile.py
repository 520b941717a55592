"""Each kernel file compiles for sm_90a with no spills and runs on the tensor cores (no GPU needed).

Compiles every ``csrc/instantiations/flash_fwd_*.cu`` to a cubin with nvcc (device code only, in
parallel), reads ``-Xptxas -v`` and, where cuobjdump is installed, checks the SASS: the sm80 family
must show mma.sync (HMMA), ldmatrix and cp.async; the sm90 family wgmma (HGMMA), TMA loads
(UTMALDG), mbarrier transactions (SYNCS) and the setmaxnreg register split.

Spill budget: zero bytes. Every register array in the kernel is indexed by compile-time constants
after unrolling, so any spill or stack frame means a code change pushed state to local memory, which
costs far more than it saves in this kernel; such a change should be looked at, not tolerated.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sessionkit import toolchain
from sessionkit.kernels.build import csrc_dir, kernel_names
from sessionkit.kernels.ptxas import parse_ptxas

MAX_REGISTERS = 255  # the hardware limit per thread; the kernels are launched with 1 CTA per SM
SPILL_BUDGET_BYTES = 0


def _nvcc() -> str:
    found = toolchain.find_cuda_tool("nvcc")
    if not found.path:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda*): cannot compile the kernels")
    return found.path


@pytest.fixture(scope="module")
def compiled():
    nvcc = _nvcc()
    root = csrc_dir()
    names = kernel_names(root)
    out_dir = Path(tempfile.mkdtemp(prefix="sk-csrc-"))

    def one(name):
        cubin = out_dir / f"{name}.cubin"
        cmd = [nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xptxas=-v", "-cubin",
               *toolchain.arch_flags((9, 0)), "-D__CUDA_NO_HALF_OPERATORS__",
               "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-D__CUDA_NO_HALF2_OPERATORS__", "-I", str(root), "-o", str(cubin),
               str(root / "instantiations" / f"{name}.cu")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return name, proc, cubin

    import os

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, names))
    yield results
    shutil.rmtree(out_dir, ignore_errors=True)


def _generator():
    from scripts import load_script

    return load_script(csrc_dir() / "generate_kernels.py")


def _families():
    return _generator().FAMILIES


def _per_family(family: str) -> int:
    # head dims x {fp16, bf16} x {causal, non-causal}, plus each dtype's extra tile variants
    generator = _generator()
    variants = sum(len(names) for (fam, _d, _m), names in generator.VARIANTS.items()
                   if fam == family)
    return (len(generator.FAMILIES[family]) * 2 + variants) * 2


def test_every_kernel_compiles_without_spills(compiled):
    # each family x {fp16, bf16} x its head dims x {causal, non-causal}
    assert len(compiled) == sum(_per_family(f) for f in _families())
    for name, proc, _cubin in compiled:
        assert proc.returncode == 0, f"{name} failed to compile:\n{proc.stderr[-3000:]}"
        res = parse_ptxas(proc.stdout + proc.stderr).get(name)
        assert res is not None, f"no ptxas report for {name}"
        assert res.registers is not None and res.registers <= MAX_REGISTERS
        spilled = res.spill_store_bytes + res.spill_load_bytes
        assert spilled <= SPILL_BUDGET_BYTES, f"{name} spills {spilled} bytes"
        assert res.stack_frame_bytes == 0, f"{name} uses a {res.stack_frame_bytes}-byte stack frame"
        assert res.wgmma_serialized is None, f"{name}: ptxas serialized its wgmma ({res.wgmma_serialized})"


def _compile_kernel(tmp_path: Path, name: str, flags: str | None = None) -> tuple[Path, str]:
    """Compiles csrc/instantiations/NAME.cu for sm_90a with the experiment -D ``flags`` (space-
    separated, or None) into a cubin under tmp_path, ptxas verbose; returns the cubin and the
    compiler's output. Fails the test when it does not compile."""
    nvcc = _nvcc()
    root = csrc_dir()
    cubin = tmp_path / f"{name}.cubin"
    proc = subprocess.run([nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xptxas=-v",
                           "-cubin", *toolchain.arch_flags((9, 0)), *(flags.split() if flags else []),
                           "-I", str(root), "-o", str(cubin),
                           str(root / "instantiations" / f"{name}.cu")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cubin, proc.stdout + proc.stderr


def _assert_builds_clean(output: str, name: str) -> None:
    """The ptxas report of ``name`` in ``output``: no spills, no serialized wgmma."""
    res = parse_ptxas(output).get(name)
    assert res is not None and res.spill_store_bytes + res.spill_load_bytes == 0, res
    assert res.wgmma_serialized is None, f"ptxas serialized the wgmma: {res.wgmma_serialized}"


def _sass(cuobjdump: str, cubin: Path) -> str:
    sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True,
                          timeout=120)
    if sass.returncode != 0 and "nvdisasm" in sass.stderr:
        pytest.skip("cuobjdump needs nvdisasm, which is not installed")
    assert sass.returncode == 0, sass.stderr
    return sass.stdout


def _cuobjdump() -> str:
    cuobjdump = shutil.which("cuobjdump") or toolchain.find_cuda_tool("cuobjdump").path
    if not cuobjdump:
        pytest.skip("cuobjdump not installed: cannot read the SASS")
    return cuobjdump


def test_sm80_kernels_use_mma_sync(compiled):
    cuobjdump = _cuobjdump()
    family = [c for c in compiled if "_sm80_" in c[0]]
    assert len(family) == _per_family("sm80")
    for name, proc, cubin in family:
        assert proc.returncode == 0
        sass = _sass(cuobjdump, cubin)
        hmma = sum(1 for line in sass.splitlines() if "HMMA.16816.F32" in line)
        # QK^T and PV per key tile: (D/16)*(BlockN/8) + (BlockN/16)*(D/8) mma = 128 for both dims
        assert hmma >= 128, f"{name}: {hmma} HMMA.16816.F32 instructions"
        assert "LDSM" in sass, f"{name}: no ldmatrix in SASS"
        assert "LDGSTS" in sass, f"{name}: no cp.async in SASS"


def test_sm90_kernels_use_wgmma_tma_and_register_split(compiled):
    cuobjdump = _cuobjdump()
    family = [c for c in compiled if "_sm90_" in c[0]]
    assert len(family) == _per_family("sm90")
    for name, proc, cubin in family:
        assert proc.returncode == 0
        sass = _sass(cuobjdump, cubin)
        lines = sass.splitlines()
        hgmma = [line for line in lines if "HGMMA.64x" in line]
        # per key block: D/16 HGMMA for Q K^T (both operands in shared memory) and BlockN/16 for
        # P V (P from registers, V transposed); the smallest key block is 64, so at least D/16 + 4
        head_dim = int(name.split("_hdim")[1].split("_")[0])
        assert len(hgmma) >= head_dim // 16 + 4, f"{name}: {len(hgmma)} HGMMA instructions"
        assert any("tnspB" in line for line in hgmma), f"{name}: no HGMMA reading V transposed"
        assert not any("HMMA." in line for line in lines), f"{name}: mma.sync in a wgmma kernel"
        assert any("UTMALDG" in line for line in lines), f"{name}: no TMA load in SASS"
        assert any("SYNCS" in line for line in lines), f"{name}: no mbarrier in SASS"
        # setmaxnreg: two consumers take 240 registers and leave the producer 24; three take 160
        # and leave it 32 (csrc/sm90/traits.cuh)
        regs = [line for line in lines if "USETMAXREG" in line]
        consumer = [r for r in regs if "TRY_ALLOC" in r]
        producer = [r for r in regs if "DEALLOC" in r]
        splits = {("0xf0", "0x18"), ("0xa0", "0x20")}
        assert any(a in consumer[0] and b in producer[0] for a, b in splits) if consumer and producer \
            else False, f"{name}: no 240/24 or 160/32 register split: {regs}"


def test_generated_files_are_current():
    """The instantiation files and wgmma wrappers match what generate_kernels.py writes."""
    import sys

    script = csrc_dir() / "generate_kernels.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


# Experiment switches that the kernel notes name as the next A/B runs: each must still build without
# spills, so that a GPU call can time it straight away (docs/kernel-notes.md, "Next hypotheses").
EXPERIMENTS = [
    ("-DSK_SM90_CONSUMERS_D64_CAUSAL=1", "flash_fwd_sm90_bf16_hdim64_causal", "0xe8", "0x18"),
    ("-DSK_SM90_CONSUMERS_D64_CAUSAL_SHORT=1", "flash_fwd_sm90_fp16_hdim64_causal_shortkeys",
     "0xe8", "0x18"),
    # the mid-keys kernel on two consumers: the short-keys kernel's tile (v22's A/B, in reverse)
    ("-DSK_SM90_CONSUMERS_D64_CAUSAL_MID=2", "flash_fwd_sm90_bf16_hdim64_causal_midkeys",
     "0xf0", "0x18"),
    # D64 causal of long keys in v20's shape: two consumers, 192-key blocks, the softmax fence
    ("-DSK_SM90_CONSUMERS_D64_CAUSAL=2 -DSK_SM90_BLOCK_N_D64_CAUSAL=192",
     "flash_fwd_sm90_bf16_hdim64_causal", "0xf0", "0x18"),
    # the three-consumer D=64 tiles with plain stores of O (v20's D64 full)
    ("-DSK_SM90_TMA_STORE_O=0", "flash_fwd_sm90_fp16_hdim64_noncausal_shortkeys", "0xa0", "0x20"),
    ("-DSK_SM90_CONSUMERS_D64_FULL=1", "flash_fwd_sm90_bf16_hdim64_noncausal", "0xe8", "0x18"),
    ("-DSK_SOFTMAX_POLY_EXP2_EIGHTHS=2", "flash_fwd_sm90_bf16_hdim64_noncausal", "0xa0", "0x20"),
    ("-DSK_SOFTMAX_POLY_EXP2_EIGHTHS=2", "flash_fwd_sm90_bf16_hdim128_causal", "0xf0", "0x18"),
    # half-width Q K^T on a consumer's first block when its second half is all masked
    ("-DSK_SM90_CAUSAL_HALF_FIRST=1", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_CAUSAL_HALF_FIRST=1", "flash_fwd_sm90_fp16_hdim128_causal", "0xf0", "0x18"),
    # the softmax of the first half alone on a consumer's diagonal block whose second half is masked
    ("-DSK_SM90_CAUSAL_HALF_SOFTMAX=1", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0",
     "0x18"),
    ("-DSK_SM90_CAUSAL_HALF_SOFTMAX=1", "flash_fwd_sm90_fp16_hdim128_causal", "0xf0", "0x18"),
    ("-DSK_SM90_CAUSAL_HALF_SOFTMAX=1", "flash_fwd_sm90_bf16_hdim256_causal", "0xf0", "0x18"),
    # two Q slots where they are off by default
    ("-DSK_SM90_Q_STAGES=2", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    # deeper K/V rings at D=64 and D=128 (docs/kernel-notes.md, "Next hypotheses")
    ("-DSK_SM90_STAGES_D64=4", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_STAGES_D64=4", "flash_fwd_sm90_fp16_hdim64_noncausal", "0xa0", "0x20"),
    ("-DSK_SM90_STAGES_D128=3", "flash_fwd_sm90_bf16_hdim128_noncausal", "0xf0", "0x18"),
    # the softmax kept ahead of the wait for P V in the SASS
    ("-DSK_SM90_SOFTMAX_FENCE=1", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_SOFTMAX_FENCE=1", "flash_fwd_sm90_fp16_hdim128_noncausal", "0xf0", "0x18"),
    ("-DSK_SM90_SOFTMAX_FENCE=1", "flash_fwd_sm90_bf16_hdim256_noncausal", "0xf0", "0x18"),
    ("-DSK_SM90_SOFTMAX_FENCE=1", "flash_fwd_sm90_fp16_hdim64_noncausal", "0xa0", "0x20"),
    # the row max as four FMNMX chains; warp-uniform tile indices and wgmma descriptors
    ("-DSK_SOFTMAX_TREE_MAX=1", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_UNIFORM=1", "flash_fwd_sm90_bf16_hdim64_causal", "0xa0", "0x20"),
    ("-DSK_SM90_UNIFORM=1", "flash_fwd_sm90_fp16_hdim64_noncausal", "0xa0", "0x20"),
    ("-DSK_SM90_UNIFORM=1", "flash_fwd_sm90_bf16_hdim128_noncausal_splitkv", "0xf0", "0x18"),
    ("-DSK_SM90_UNIFORM=0", "flash_fwd_sm90_bf16_hdim256_noncausal", "0xf0", "0x18"),
    # D64 full (three consumers) on the vector-register loop, which also turns its tail split off,
    # with plain stores of O (v19's shipped build; with v21's TMA store that loop spills 76 bytes),
    # short and long keys
    ("-DSK_SM90_UNIFORM=0 -DSK_SM90_TMA_STORE_O=0", "flash_fwd_sm90_bf16_hdim64_noncausal_shortkeys",
     "0xa0", "0x20"),
    ("-DSK_SM90_UNIFORM=0 -DSK_SM90_TMA_STORE_O=0", "flash_fwd_sm90_fp16_hdim64_noncausal", "0xa0",
     "0x20"),
    # D64 causal short keys' second consumer in step with the first, or two pingpong turns behind
    ("-DSK_SM90_STAGGER=0", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_STAGGER=2", "flash_fwd_sm90_fp16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    # each consumer's rows of Q in a slot of their own (the stagger then with one Q slot)
    ("-DSK_SM90_Q_PER_CONSUMER=1", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_Q_PER_CONSUMER=1", "flash_fwd_sm90_fp16_hdim64_noncausal_shortkeys", "0xa0", "0x20"),
    ("-DSK_SM90_Q_PER_CONSUMER=1", "flash_fwd_sm90_bf16_hdim128_noncausal", "0xf0", "0x18"),
    # D128 full's consumers one turn apart, O staged in each one's Q rows, three stages
    ("-DSK_SM90_STAGGER_D128=1", "flash_fwd_sm90_bf16_hdim128_noncausal", "0xf0", "0x18"),
    ("-DSK_SM90_STAGGER_D128=1", "flash_fwd_sm90_fp16_hdim128_noncausal", "0xf0", "0x18"),
    # each warp's rows of O stored by their own TMA store
    ("-DSK_SM90_WARP_STORE_O=1 -DSK_SM90_STMATRIX_O=1",
     "flash_fwd_sm90_fp16_hdim128_noncausal", "0xf0", "0x18"),
    # O into its TMA staging by stmatrix.x4
    ("-DSK_SM90_STMATRIX_O=1", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_STMATRIX_O=1", "flash_fwd_sm90_fp16_hdim128_noncausal", "0xf0", "0x18"),
    # O's plain stores 16 bytes wide where they are off by default, and 4 bytes where on
    ("-DSK_SM90_WIDE_STORE_O=1", "flash_fwd_sm90_bf16_hdim128_noncausal_longkeys", "0xf0", "0x18"),
    ("-DSK_SM90_WIDE_STORE_O=0", "flash_fwd_sm90_bf16_hdim256_noncausal", "0xf0", "0x18"),
    # the diagnostic build of benchmarks/wait_profile.py (clock reads around every wait)
    ("-DSK_SM90_PREFETCH_NEXT=1", "flash_fwd_sm90_bf16_hdim64_noncausal_shortkeys", "0xa0", "0x20"),
    ("-DSK_SM90_PREFETCH_NEXT=1", "flash_fwd_sm90_bf16_hdim128_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_PREFETCH_NEXT=2", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x20"),
    ("-DSK_SM90_PREFETCH_NEXT=2", "flash_fwd_sm90_fp16_hdim128_causal", "0xf0", "0x20"),
    ("-DSK_SM90_EARLY_FINALIZE=1", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_EARLY_FINALIZE=2", "flash_fwd_sm90_bf16_hdim128_causal", "0xf0", "0x18"),
    ("-DSK_SM90_WAIT_PROFILE=1", "flash_fwd_sm90_bf16_hdim64_causal_shortkeys", "0xf0", "0x18"),
    ("-DSK_SM90_WAIT_PROFILE=1", "flash_fwd_sm90_fp16_hdim128_noncausal", "0xf0", "0x18"),
]


@pytest.mark.parametrize("flag, name, consumer_regs, producer_regs", EXPERIMENTS)
def test_experiment_switches_build_without_spills(tmp_path, flag, name, consumer_regs,
                                                  producer_regs):
    cubin, output = _compile_kernel(tmp_path, name, flag)
    _assert_builds_clean(output, name)
    assert parse_ptxas(output)[name].stack_frame_bytes == 0
    cuobjdump = _cuobjdump()
    sass = _sass(cuobjdump, cubin)
    regs = [line for line in sass.splitlines() if "USETMAXREG" in line]
    assert any("TRY_ALLOC" in r and consumer_regs in r for r in regs), regs
    assert any("DEALLOC" in r and producer_regs in r for r in regs), regs
    if "PREFETCH_NEXT=1" in flag:  # the L2 prefetches are really issued (TMA prefetch)
        assert "UTMAPF" in sass, f"{name}: no UTMAPF with {flag}"


def _exponentials_between_the_waits(sass: str) -> list[int]:
    """For each wait for a block's Q K^T (``WARPGROUP.DEPBAR.LE gsb0, 0x1``: one wgmma group, the
    P V, may stay in flight), the number of MUFU.EX2 before the next wait for everything
    (``... 0x0``): the exponentials that run while the warpgroup's own P V is in flight."""
    counts, open_count = [], None
    for line in sass.splitlines():
        if "WARPGROUP.DEPBAR.LE gsb0, 0x1" in line:
            open_count = 0
        elif "WARPGROUP.DEPBAR.LE gsb0, 0x0" in line and open_count is not None:
            counts.append(open_count)
            open_count = None
        elif "MUFU.EX2" in line and open_count is not None:
            open_count += 1
    return counts


@pytest.mark.parametrize("name, exponentials", [
    ("flash_fwd_sm90_bf16_hdim64_causal_shortkeys", 64),  # 64 rows x 128 keys per warpgroup
    ("flash_fwd_sm90_fp16_hdim128_noncausal", 64),
    ("flash_fwd_sm90_bf16_hdim256_noncausal", 40),  # 80 keys
    ("flash_fwd_sm90_bf16_hdim128_noncausal_longkeys", 88),  # 176 keys
])
def test_softmax_fence_keeps_the_softmax_under_the_pv_in_the_sass(tmp_path, name, exponentials):
    """With -DSK_SM90_SOFTMAX_FENCE=1 the key-block loop's softmax (its MUFU.EX2) lies between the
    wait for Q K^T and the wait for P V, as in the source: the warpgroup's own P V runs under it.
    (In the default build ptxas moves the wait for P V ahead of the softmax; docs/kernel-notes.md,
    v13.)"""
    cuobjdump = _cuobjdump()
    cubin, _ = _compile_kernel(tmp_path, name, "-DSK_SM90_SOFTMAX_FENCE=1")
    counts = _exponentials_between_the_waits(_sass(cuobjdump, cubin))
    assert counts, f"{name}: no wait for Q K^T with P V in flight"
    assert max(counts) >= exponentials, (name, counts)


# The softmax's finalize (shuffles, float math and MUFU on the row sums), which ptxas interleaves
# with the HGMMA issue of a tile's last P V since v18 (Traits::kEarlyFinalize), and its moves of
# constants (0, -inf) into the results: not descriptor work.
_FINALIZE_OPS = ("FADD", "FMUL", "FFMA", "FSETP", "FSEL", "MUFU", "SHFL", "PLOP3")


def _largest_gap_between_pv_hgmmas(sass: str) -> int:
    """The most instructions between two consecutive P V HGMMAs (B N-major: ``.tnspB``) of one
    group (a group ends at the HGMMA that carries ``gsb0``), not counting the finalize's
    floating-point and shuffle instructions (_FINALIZE_OPS)."""
    gap, largest, inside = 0, 0, False
    for line in sass.splitlines():
        if "HGMMA" in line and "tnspB" in line:
            if inside:
                largest = max(largest, gap)
            inside, gap = "gsb0" not in line, 0
        elif inside and re.search(r"/\*[0-9a-f]{4}\*/", line):
            op = re.sub(r"^@!?U?P\w+\s+", "", line.split("*/", 1)[1].strip()).split(" ")[0]
            if op.split(".")[0] not in _FINALIZE_OPS and not op.startswith("IMAD.MOV"):
                gap += 1
    return largest


@pytest.mark.parametrize("name, flag, most", [
    ("flash_fwd_sm90_bf16_hdim128_noncausal", None, 3),
    ("flash_fwd_sm90_fp16_hdim256_causal", None, 3),
    ("flash_fwd_sm90_bf16_hdim64_causal_shortkeys", None, 3),
    ("flash_fwd_sm90_fp16_hdim96_noncausal", None, 3),
    ("flash_fwd_sm90_bf16_hdim64_noncausal_shortkeys", None, 3),  # three consumers (v20)
    # the vector-register loop, for contrast: the same check must fail there
    ("flash_fwd_sm90_bf16_hdim128_noncausal", "-DSK_SM90_UNIFORM=0", None),
])
def test_uniform_descriptors_issue_pv_back_to_back(tmp_path, name, flag, most):
    """Where Traits::kUniform is on, the P V HGMMAs of a key block are issued back to back (at most
    a uniform add for the next descriptor and an independent instruction or two between two of
    them), so that the tensor cores are not starved by the integer work of building descriptors
    (docs/kernel-notes.md, v14); the finalize that v18 runs under a tile's last P V is left out
    of the count. Built with -DSK_SM90_UNIFORM=0 the same kernel builds each descriptor in vector registers and moves it to
    a uniform register (R2UR) between the HGMMAs: the check fails there."""
    cuobjdump = _cuobjdump()
    cubin, _ = _compile_kernel(tmp_path, name, flag)
    sass = _sass(cuobjdump, cubin)
    gap = _largest_gap_between_pv_hgmmas(sass)
    if most is None:
        assert gap >= 5 and "R2UR" in sass, gap
    else:
        assert gap <= most, f"{name}: {gap} instructions between two P V HGMMAs"


@pytest.mark.parametrize("flag, stmatrix", [("-DSK_SM90_STMATRIX_O=1", 8), (None, 0)])
def test_stmatrix_switch_stores_o_by_stsm(tmp_path, flag, stmatrix):
    """With SK_SM90_STMATRIX_O=1 the D=128 epilogue stages O by kDTiles / 2 = 8 stmatrix.x4 (STSM)
    instead of 32 four-byte shared stores per thread; the shipped build has no STSM (the switch is
    off until timed). The addresses are checked on the host in test_o_stage.py."""
    cuobjdump = _cuobjdump()
    cubin, _ = _compile_kernel(tmp_path, "flash_fwd_sm90_bf16_hdim128_noncausal", flag)
    sass = _sass(cuobjdump, cubin)
    assert sum("STSM" in line for line in sass.splitlines()) == stmatrix


@pytest.mark.parametrize("flag, barriers", [("-DSK_SM90_WARP_STORE_O=1", 0), (None, 2)])
def test_warp_store_switch_drops_the_epilogue_barriers(tmp_path, flag, barriers):
    """With SK_SM90_WARP_STORE_O=1 each warp stores its own 16 rows of O by TMA (lane 0 issues it
    after a __syncwarp), so the D64 causal short-keys epilogue has none of the two 128-thread named
    barriers (`BAR.SYNC ..., 0x80`) around the warpgroup's store that the shipped build has; the
    build has no spills and no serialized wgmma."""
    cuobjdump = _cuobjdump()
    name = "flash_fwd_sm90_bf16_hdim64_causal_shortkeys"
    cubin, output = _compile_kernel(tmp_path, name, flag)
    _assert_builds_clean(output, name)
    sass = _sass(cuobjdump, cubin).splitlines()
    epilogue_barriers = [line for line in sass if re.search(r"BAR\.SYNC\S*\s+\S+,\s*0x80\s*;", line)]
    assert len(epilogue_barriers) == barriers, epilogue_barriers
    assert any("UTMASTG" in line for line in sass)
