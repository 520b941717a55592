#!/usr/bin/env bash
# One pass over the kernels on a GPU machine: clean build (timed), cached reload (timed), the build
# step through the CLI, the GPU tests, compute-sanitizer memcheck, racecheck and synccheck on a small
# run of each kernel family, and the speed table. Logs go to $OUT (default /tmp/sessionkit-gpu-check); a short summary prints last.
#
#   bash benchmarks/gpu_check.sh [build] [tests] [cppchecks] [sanitize] [bench] [variants] [ab] [validate]
#   (no argument: build tests sanitize bench)
# variants: rebuilds with each set of -D flags in $VARIANTS (separated by ';') and times them.
# ab: the same A/B through sessionkit itself, in one session: for the plain build and each set of
#   flags in $VARIANTS, `step correctness` (64 configs) and then `step bench` on the configs in
#   $AB_CONFIGS (space-separated B,H,Sq,Sk,D,dtype,causal specs), SDPA timed in every bench step;
#   the session's report (one column per bench step) lands in $OUT/ab.md, its database in $OUT/ab.db.
#   With $AB_GUARD (pytest arguments, e.g. "tests/test_kernel_gpu.py -k causal"), each variant
#   first runs those GPU tests under `timeout $AB_GUARD_S` (default 150 s): a variant that fails
#   them or hangs is not checked or timed, and the run goes on with the next one. Each build is
#   compiled first, by `step build`, outside that limit; the plain build (the shipped kernels) is
#   not guarded.
# validate: the kernel issue's checks as one sessionkit session (the standard grid first, on a rested
#   GPU, and the timing tests alone after it; then `step correctness --configs 200` on the
#   dispatcher's family and on sm80 forced, next to the rest of `pytest -m gpu` in four processes
#   and the sanitizers on both families); its report and database
#   land in $OUT/validate/, the session ends failed if anything failed or ran out of time, and
#   everything is bounded to end within $VALIDATE_BUDGET seconds (default 520: one 10-minute call).
#
# Builds into $SESSIONKIT_BUILD_DIR (default ./.skbuild) so that a run starts from a clean cache.
set -u
# Every stage needs a CUDA GPU.
source "$(dirname "$0")/needs_gpu.sh"
OUT=${OUT:-/tmp/sessionkit-gpu-check}
mkdir -p "$OUT"
export SESSIONKIT_BUILD_DIR=${SESSIONKIT_BUILD_DIR:-$PWD/.skbuild}
export PYTHONUNBUFFERED=1
STAGES=${*:-build tests sanitize bench}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }

note "gpu: $(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu \
  --format=csv,noheader 2>&1)"
note "torch: $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)')"
note "nvcc: $(nvcc --version | grep -o 'release [0-9.]*')"

if has build; then
  rm -rf "$SESSIONKIT_BUILD_DIR"
  python3 - <<'EOF' 2>&1 | tee "$OUT/build.txt"
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from sessionkit.kernels.build import build_extension

class P:
    def note(self, text): print("  ", text, flush=True)
    def update(self, done, total, label=""): pass

info = build_extension(progress=P())
t2 = time.perf_counter()
print(f"clean build: compile {info.build_time_s:.1f} s, build_extension {t2 - t1:.1f} s, "
      f"import torch {t1 - t0:.1f} s, cached={info.cached}")
for name, row in sorted(info.kernels.items()):
    print(f"   {name:<34} regs {row['registers']:>3}  smem {row['smem_bytes']:>6}  "
          f"spills {row['spill_store_bytes']}/{row['spill_load_bytes']}  stack {row['stack_frame_bytes']}")
EOF
  grep "clean build" "$OUT/build.txt" >> "$SUMMARY"
  grep "regs" "$OUT/build.txt" >> "$SUMMARY"
  cp "$SESSIONKIT_BUILD_DIR"/*/build.log "$OUT/ninja_build.log" 2>/dev/null
  # Nothing changed: a fresh process must only load the library.
  python3 - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from sessionkit.kernels import load_extension
info = load_extension()
t2 = time.perf_counter()
print(f"rebuild (nothing changed): load_extension {t2 - t1:.2f} s (library load {info.load_time_s:.2f} s), "
      f"import torch {t1 - t0:.2f} s, cached={info.cached}")
EOF
  # The step through the CLI, on a scratch database.
  export SESSIONKIT_DB=/tmp/sk-gpu-check.db
  rm -f "$SESSIONKIT_DB"
  { python3 -m sessionkit start --objective "gpu check" && python3 -m sessionkit step build; } \
    > /tmp/cli_build.txt 2>&1
  note "cli step build: exit $? | $(grep -E 'build (passed|failed|skipped)' /tmp/cli_build.txt | tail -n 1)"
  cat /tmp/cli_build.txt >> "$OUT/build.txt"
fi

if has tests; then
  python3 -m pytest -m gpu tests/test_kernel_gpu.py -q -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
  note "pytest: $(tail -n 1 "$OUT/pytest.txt")"
  grep -E "^(FAILED|ERROR)" "$OUT/pytest.txt" | head -n 15 | tee -a "$SUMMARY"
fi

if has cppchecks; then
  # The C++ argument checks in a process of their own, under cuda-gdb so that a crash leaves a stack.
  python3 -c "import tests.test_kernel_gpu as t; print(t.CPP_CHECKS)" > /tmp/sk_cpp_checks.py
  timeout 200 cuda-gdb -batch -ex run -ex bt --args python3 /tmp/sk_cpp_checks.py > "$OUT/diag.txt" 2>&1
  note "cpp checks under cuda-gdb: exit $? | $(grep -c '^ERROR' "$OUT/diag.txt") errors raised, $(grep -c 'SIGSEGV' "$OUT/diag.txt") SIGSEGV"
fi

if has sanitize; then
  # Both kernel families: the one the dispatcher picks (sm90 on Hopper) and the sm80 fallback
  # ($SANITIZE_FAMILIES narrows the list, $SANITIZE_TIMEOUT bounds each run in seconds).
  for family in ${SANITIZE_FAMILIES:-auto sm80}; do
    for tool in memcheck racecheck synccheck; do
      log=/tmp/sanitizer_${family}_$tool.txt
      if [ "$family" = sm80 ]; then export SESSIONKIT_KERNEL_FAMILY=sm80; else unset SESSIONKIT_KERNEL_FAMILY; fi
      nocache=$([ "$tool" = memcheck ] && echo 1 || echo 0)  # memcheck sees overruns between tensors
      PYTORCH_NO_CUDA_MEMORY_CACHING=$nocache timeout -k 10 "${SANITIZE_TIMEOUT:-240}" \
        compute-sanitizer --tool "$tool" --error-exitcode 3 python3 benchmarks/sanitize_run.py > "$log" 2>&1
      note "compute-sanitizer $tool ($family): exit $? | $(grep -E 'sanitize run|ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tr '\n' ' ')"
      cat "$log" >> "$OUT/sanitizer.txt"
    done
  done
  unset SESSIONKIT_KERNEL_FAMILY
fi

if has bench; then
  python3 benchmarks/attention_speed.py --reps 40 > "$OUT/speed.txt" 2>&1
  note "speed: exit $?"
  sed -n '/^B=/,$p' "$OUT/speed.txt" >> "$SUMMARY"
  tail -n 5 "$OUT/speed.txt" | grep -i -E "error|Traceback" >> "$SUMMARY"
fi

if has variants; then
  IFS=';' read -ra SETS <<< "${VARIANTS:-}"
  for flags in "${SETS[@]}"; do
    note "variant [$flags]:"
    SESSIONKIT_NVCC_FLAGS="$flags" python3 benchmarks/attention_speed.py --reps 30 ${VARIANT_ONLY:+--only $VARIANT_ONLY} \
      > /tmp/variant.txt 2>&1
    grep -E "^(fp16|bf16)-" /tmp/variant.txt | tee -a "$SUMMARY"
    { echo "== variant [$flags]"; cat /tmp/variant.txt; } >> "$OUT/variants.txt"
  done
fi

if has ab; then
  # The database and the report's figures stay outside $OUT (a report draws a few figures per
  # bench step); only ab.md and ab.db are copied there at the end.
  AB_DIR=$(mktemp -d /tmp/sessionkit-ab.XXXXXX)
  export SESSIONKIT_DB="$AB_DIR/ab.db"
  read -ra CONFIGS <<< "${AB_CONFIGS:-32,32,512,512,64,bf16,1 8,32,2048,2048,64,bf16,1 1,32,16384,16384,64,bf16,0}"
  CONFIG_ARGS=()
  for c in "${CONFIGS[@]}"; do CONFIG_ARGS+=(--config "$c"); done
  # its own plan: without one it takes pyproject's (preflight first), and `end` would call it failed
  python3 -m sessionkit start "A/B of experiment switches" --plan build,correctness,bench \
    -m "plain build against: ${VARIANTS:-(no variants)}" > /dev/null
  IFS=';' read -ra SETS <<< ";${VARIANTS:-}"  # the empty first set is the plain build
  for flags in "${SETS[@]}"; do
    label=${flags:-plain}
    build_t0=$(date +%s)
    export SESSIONKIT_NVCC_FLAGS="$flags"
    # Every build's correctness output, one after the other (a later build overwrote the first's).
    echo "== ab [$label]" >> "$OUT/ab_correctness.txt"
    # The build first, as its own step: the guard's and the checks' time limits then cover the
    # tests alone (a guard that also compiled 32 kernels ran out of time on a healthy build).
    if ! timeout -k 10 300 python3 -m sessionkit step build > "$AB_DIR/build.txt" 2>&1; then
      note "ab [$label]: build failed, not timed: $(tail -n 1 "$AB_DIR/build.txt")"
      continue
    fi
    if [ -n "${AB_GUARD:-}" ] && [ -n "$flags" ]; then
      # A hang in a variant's kernel costs the guard's time limit, not the whole run. The plain
      # build is the shipped one, which the GPU tests cover; it is not guarded.
      guard_log="$OUT/ab_guard_$(echo "$label" | tr -c 'A-Za-z0-9_-' '_').txt"
      # Through a shell, so that quoted -k expressions in $AB_GUARD keep their spaces.
      timeout -k 10 "${AB_GUARD_S:-150}" bash -c \
        "python3 -m pytest -q -x -p no:cacheprovider -m gpu $AB_GUARD" > "$guard_log" 2>&1
      guard_rc=$?
      if [ $guard_rc -ne 0 ]; then
        note "ab [$label]: guard tests $([ $guard_rc -ge 124 ] && echo "timed out (a hang?)" || echo "failed (exit $guard_rc)"), not timed: $(tail -n 1 "$guard_log")"
        continue
      fi
    fi
    # Bounded too: a variant that hangs on a shape the guard did not cover costs 240 s, not the run.
    if timeout -k 10 240 python3 -m sessionkit step correctness --configs 64 --max-seq-len 2048 \
        > "$AB_DIR/correctness.txt" 2>&1; then
      cat "$AB_DIR/correctness.txt" >> "$OUT/ab_correctness.txt"
      bench_line=$(python3 -m sessionkit step bench --preheat 10s "${CONFIG_ARGS[@]}" 2>&1 | tail -n 1)
      # The build's whole cost (build, correctness, bench), to size the next A/B to its time limit.
      note "ab [$label] ($(( $(date +%s) - build_t0 )) s): $bench_line"
      # Each config's figures so far, rewritten after every build: a run cut short by its time
      # limit keeps the table of the builds it finished.
      python3 benchmarks/ab_table.py "$SESSIONKIT_DB" --clocks > "$OUT/ab_table.txt" 2>&1
    else
      cat "$AB_DIR/correctness.txt" >> "$OUT/ab_correctness.txt"
      note "ab [$label]: correctness did not pass, not timed: $(tail -n 1 "$AB_DIR/correctness.txt")"
    fi
  done
  unset SESSIONKIT_NVCC_FLAGS
  python3 -m sessionkit end --outcome "A/B done" > /dev/null
  python3 -m sessionkit report -o "$AB_DIR/ab.md" > /dev/null
  cp "$AB_DIR/ab.md" "$AB_DIR/ab.db" "$OUT/" && note "ab report: $OUT/ab.md (database $OUT/ab.db)"
  python3 benchmarks/ab_table.py "$AB_DIR/ab.db" --clocks 2>&1 | tee -a "$SUMMARY"
fi

if has validate; then
  VDIR="$OUT/validate"
  rm -rf "$VDIR"
  mkdir -p "$VDIR"
  export SESSIONKIT_DB="$VDIR/validate.db"
  # Everything must end within $VALIDATE_BUDGET seconds of this point (default 520: one 10-minute
  # call with the machine's start-up); each background run gets what is left, less a margin.
  V0=$(date +%s)
  left() { local t=$(( ${VALIDATE_BUDGET:-520} - ($(date +%s) - V0) - ${1:-0} )); echo $(( t > 5 ? t : 5 )); }
  failures=0
  sk() { python3 -m sessionkit "$@"; }
  # A step: its full output in $VDIR/step_<name>.txt, its last line in the summary; a failed one
  # counts against the verdict.
  step() {
    local name=$1; shift
    sk step "$@" > "$VDIR/step_$name.txt" 2>&1
    local rc=$?
    note "validate $name: exit $rc | $(tail -n 1 "$VDIR/step_$name.txt")"
    [ $rc -eq 0 ] || failures=$((failures + 1))
    return $rc
  }
  sk start "validate" -m "the kernel issue's checks: standard grid, correctness on both families, GPU tests, sanitizers" > /dev/null
  step preflight preflight
  if ! step build build; then
    sk end --outcome "the build failed: nothing else ran" --status failed > /dev/null
    sk report -o "$VDIR/report.md" > /dev/null
    note "validate: FAILED (build)"
  else
    step grid bench --grid standard
    # The timing tests compare two timers on the same configs; next to the other GPU processes
    # below they measured the contention (do_bench's own repeats spread 11 %), so they run first,
    # with the GPU to themselves.
    timing_tests="test_sdpa_medians_agree_with_do_bench"
    # (It leaves the parallel phase 150 s: that phase took about 125 s in v21's validation, where
    # a reserve of 200 s under a budget of 390 left this test 20 s, and it timed out.)
    timeout -k 10 "$(left 150)" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_bench_gpu.py \
      -k "$timing_tests" > "$VDIR/pytest_timing.txt" 2>&1
    echo "pytest exit $?" >> "$VDIR/pytest_timing.txt"
    pids=()
    # Four processes: test_kernel_gpu_variants.py alone ran past 240 s next to the others, so its
    # two largest tests (b1) run apart from the rest of it (b2).
    big="gqa_and_alignments or decode_shapes_with_grouped_heads"
    for part in a b1 b2 c; do
      select=()
      case $part in
        a) files="tests/test_kernel_gpu.py" ;;
        b1) files="tests/test_kernel_gpu_variants.py"; select=(-k "$big") ;;
        b2) files="tests/test_kernel_gpu_variants.py"; select=(-k "not ($big)") ;;
        c) files="tests/test_bench_gpu.py tests/test_correctness_step.py tests/test_preflight.py tests/test_profile.py tests/test_profile_source_step.py"
           select=(-k "not ($timing_tests)") ;;
      esac
      ( timeout -k 10 "$(left 30)" python3 -m pytest -q -p no:cacheprovider -m gpu $files "${select[@]}" > "$VDIR/pytest_$part.txt" 2>&1
        echo "pytest exit $?" >> "$VDIR/pytest_$part.txt" ) &
      pids+=($!)
    done
    # The sanitizers, one chain per family (side by side, so both fit the budget): memcheck without
    # PyTorch's caching allocator, so that an overrun into a neighbouring tensor is seen.
    for family in auto sm80; do
      ( if [ "$family" = sm80 ]; then fam=sm80; else fam=; fi
        for tool in memcheck racecheck synccheck; do
          log="$VDIR/sanitizer_${family}_$tool.txt"
          nocache=$([ "$tool" = memcheck ] && echo 1 || echo 0)
          SESSIONKIT_KERNEL_FAMILY=$fam PYTORCH_NO_CUDA_MEMORY_CACHING=$nocache timeout -k 10 "$(left 40)" \
            compute-sanitizer --tool "$tool" --error-exitcode 3 python3 benchmarks/sanitize_run.py > "$log" 2>&1
          echo "compute-sanitizer $tool ($family): exit $? | $(grep -E 'sanitize run done|ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tr '\n' ' ')" >> "$VDIR/sanitizers_$family.txt"
        done ) &
      pids+=($!)
    done
    step correctness correctness --configs 200
    SESSIONKIT_KERNEL_FAMILY=sm80 step correctness_sm80 correctness --configs 200
    wait "${pids[@]}"
    for part in timing a b1 b2 c; do
      note "validate pytest $part: $(grep -E '[0-9]+ (passed|failed|error|skipped)' "$VDIR/pytest_$part.txt" | tail -n 1) | $(tail -n 1 "$VDIR/pytest_$part.txt")"
      grep -E "^(FAILED|ERROR)" "$VDIR/pytest_$part.txt" | head -n 10 | tee -a "$SUMMARY"
      tail -n 1 "$VDIR/pytest_$part.txt" | grep -q "pytest exit 0" || failures=$((failures + 1))
    done
    for family in auto sm80; do
      touch "$VDIR/sanitizers_$family.txt"
      tee -a "$SUMMARY" < "$VDIR/sanitizers_$family.txt"
      # All three tools ran and each exited 0 (--error-exitcode makes a finding a non-zero exit).
      if [ "$(grep -c ": exit 0 |" "$VDIR/sanitizers_$family.txt")" -ne 3 ]; then failures=$((failures + 1)); fi
    done
    if [ $failures -eq 0 ]; then
      sk end --outcome "validated: every step, GPU test and sanitizer run passed" --status passed > /dev/null
      note "validate: PASSED"
    else
      sk end --outcome "not validated: $failures of the steps, GPU test processes and sanitizer chains failed or ran out of time" --status failed > /dev/null
      note "validate: FAILED ($failures failed or timed out; see $VDIR)"
    fi
    sk report -o "$VDIR/report.md" > /dev/null && note "validate report: $VDIR/report.md (database $VDIR/validate.db)"
    python3 benchmarks/ab_table.py "$SESSIONKIT_DB" --clocks > "$VDIR/grid_table.txt" 2>&1
  fi
  unset SESSIONKIT_DB
fi

echo
echo "==== summary ===="
cat "$SUMMARY"
