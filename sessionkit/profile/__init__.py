"""Nsight Compute on one call of a kernel, and what to change next (the step
``sessionkit step profile`` is :mod:`sessionkit.steps.profile`).

The step runs ``ncu`` (found like nvcc, never changing the card's clocks: ``--clock-control none``) on
``python -m sessionkit.profile.target`` (:mod:`~sessionkit.profile.target`), which warms the kernel
up and then brackets exactly one call with cudaProfilerStart/Stop (``--profile-from-start off``). It
collects a small fixed set of numbers -- SM, DRAM and tensor-pipe throughput, occupancy, registers and
shared memory per block, the top warp stall reasons, L2 hit rate, duration, DRAM bytes -- and keeps
the ``.ncu-rep`` and a CSV of it (:mod:`~sessionkit.profile.ncu`). With ``--source`` it also takes
ncu's per-instruction warp samples and reads them per SASS instruction and per opcode
(:mod:`~sessionkit.profile.source`).

From those numbers and the ceilings (the bench step's measured bf16 matmul TFLOP/s; for DRAM, the copy
bandwidth measured on an H100, 2.96 TB/s, used as a labelled default) it computes a verdict --
compute-bound, memory-bound or latency-bound -- and the next moves (:mod:`~sessionkit.profile.tree`).
Verdicts, thresholds and moves are data, in ``patterns/profile-tree.toml``; every move names the
pattern it comes from. The profiled config and the implementations are those of
:mod:`sessionkit.attention`.

Nothing here imports torch at module level; the step imports it only to ask whether a GPU is there.
The package does not import :mod:`~sessionkit.profile.target`, which runs as ``__main__``.
"""

from __future__ import annotations

from .ncu import (DEFAULT_CONFIG, EXTRA_METRICS, MAX_LAUNCHES, NCU_TIMEOUT_S, PERMISSION_FIX, SECTIONS,
                  SOURCE_SECTION, KernelNumbers, KernelRecord, ProfileError, choose_metrics, gpu_facts,
                  kernel_numbers, main_kernel, ncu_command, ncu_failure, parse_ncu_csv, parse_number,
                  parse_profile_config, permission_denied, query_metric_names, run_logged, scaled,
                  stall_shares, target_command, target_info)
from .source import (REASON_NAMES, SOURCE_TIMEOUT_S, UNLISTED, OpcodeStalls, SassInstruction,
                     SourceError, SourceProfile, export_source, hottest_rows, opcode_of, opcode_rows,
                     parse_source_csv, pick_kernel, source_command, top_reasons)
from .tree import (FACT_TYPES, H100_COPY_SOURCE, H100_COPY_TBS, TREE_FILE, Ceilings, Classification,
                   Condition, Leaf, Tree, Verdict, classify, find_ceilings, fmt_value, load_tree,
                   make_facts, numbers_table, parse_condition, tree_path)

__all__ = [
    "DEFAULT_CONFIG", "EXTRA_METRICS", "FACT_TYPES", "H100_COPY_SOURCE", "H100_COPY_TBS",
    "MAX_LAUNCHES", "NCU_TIMEOUT_S", "PERMISSION_FIX", "REASON_NAMES", "SECTIONS", "SOURCE_SECTION",
    "SOURCE_TIMEOUT_S", "TREE_FILE", "UNLISTED",
    "Ceilings", "Classification", "Condition", "KernelNumbers", "KernelRecord", "Leaf",
    "OpcodeStalls", "ProfileError", "SassInstruction", "SourceError", "SourceProfile", "Tree",
    "Verdict",
    "choose_metrics", "classify", "export_source", "find_ceilings", "fmt_value", "gpu_facts",
    "hottest_rows", "kernel_numbers", "load_tree", "main_kernel", "make_facts", "ncu_command",
    "ncu_failure", "numbers_table", "opcode_of", "opcode_rows", "parse_condition", "parse_ncu_csv",
    "parse_number", "parse_profile_config", "parse_source_csv", "permission_denied", "pick_kernel",
    "query_metric_names", "run_logged", "scaled", "source_command", "stall_shares",
    "target_command", "target_info", "top_reasons", "tree_path",
]
