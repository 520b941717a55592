# Sourced by the GPU-only shell drivers (gpu_check.sh, gpu_sessions.sh): without a CUDA GPU, say so
# in one line and exit 2 (not 0 after a page of tracebacks).
if ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "$(basename "$0"): needs a CUDA GPU and torch with CUDA (torch.cuda.is_available() is false here, or torch is missing)" >&2
  exit 2
fi
