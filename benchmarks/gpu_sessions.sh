#!/usr/bin/env bash
# Two real sessions on a GPU machine, run through the CLI the way an engineer runs them:
#   1. `sessionkit run`: preflight, build, correctness, quick bench, report, in one command;
#   2. by hand: preflight, build, correctness, the standard bench grid, a profile of our kernel, report;
# then `sessionkit compare` and `sessionkit history`. The database, the reports and their plots are
# packed into $OUT/sessions.tgz (default OUT=/tmp/sessionkit-sessions).
#
#   bash benchmarks/gpu_sessions.sh [GPU_RATE_USD_PER_HOUR]
set -u
# Every stage needs a CUDA GPU.
source "$(dirname "$0")/needs_gpu.sh"
OUT=${OUT:-/tmp/sessionkit-sessions}
mkdir -p "$OUT"
WORK=$(mktemp -d)
RATE=${1:-}
export SESSIONKIT_DB=$WORK/.sessionkit/sessions.db
export SESSIONKIT_BUILD_DIR=${SESSIONKIT_BUILD_DIR:-$PWD/.skbuild}
export PYTHONUNBUFFERED=1
sk() { python3 -m sessionkit "$@"; }
rate=()
[ -n "$RATE" ] && rate=(--gpu-rate "$RATE")

sk run "one-command session" --objective "Baseline of the attention kernel: build, check, quick bench" \
  "${rate[@]}" --grid quick -o "$WORK/reports/session-1.md" 2>&1 | tee "$OUT/session1.txt"
echo "session 1 exit: ${PIPESTATUS[0]}" | tee -a "$OUT/session1.txt"

{
  sk start "standard grid" --objective "Standard-grid TFLOP/s against SDPA, and a profile of our D=128 kernel" \
    "${rate[@]}" --plan preflight,build,correctness,bench,profile
  sk pattern apply baseline-first --note "SDPA default and each backend timed in the same run"
  sk pattern apply profile-first --note "profile of bf16 D=128 S=4096 before the next change"
  sk step preflight
  sk step build
  sk step correctness
  sk step bench --grid standard --csv "$WORK/reports/standard.csv"
  sk step profile --kernel ours --config 4,16,4096,4096,128,bf16,0
  sk status
  sk end --outcome "standard grid and profile recorded" --status passed
  sk report 2 -o "$WORK/reports/session-2.md"
  sk compare 1 2
  sk history -o "$WORK/reports/history.md"
  sk sessions
} > "$OUT/session2.txt" 2>&1
echo "session 2 done"
tar czf "$OUT/sessions.tgz" -C "$WORK" --exclude='*.ncu-rep' .
ls -la "$OUT"
