#!/usr/bin/env bash
# The accelerator benchmarks in one command, one markdown report, about 5 minutes on one GPU:
#   1. attention kernels (pallas / cudnn / xla, or splash on TPU): time, TFLOP/s and temp memory,
#      head dim 64, lengths 1k-8k, forward and forward + backward (benchmarks/attention.py);
#   2. the `configs/small.py` train step in bf16: samples/s, achieved TFLOP/s and MFU against the
#      device's dense bf16 peak (benchmarks/train_step.py; --peak_tflops for an unlisted device);
#   3. Y-decoder generation with the KV cache, greedy and beam 4, demo and paper decoders
#      (benchmarks/decoding.py).
#
#   bash benchmarks/accelerator_suite.sh                      # writes benchmarks/results/accelerator_<device>_<time>.md
#   bash benchmarks/accelerator_suite.sh /tmp/report.md
#   EXTRA_TRAIN_FLAGS="--peak_tflops=312" bash benchmarks/accelerator_suite.sh
#
# ATTENTION_FLAGS, TRAIN_FLAGS and DECODING_FLAGS replace each part's arguments (the tests run the
# suite on CPU that way, at toy sizes). PYTHON picks the interpreter (default: `python` on PATH).
#
# Each part has its own time limit (PART_TIMEOUT seconds, default 150), so one slow or failing part
# cannot eat the others' time; a part that fails or times out is reported as such and the suite goes
# on. It exits non-zero if any part failed. On a CPU it runs too (a dry run of the plumbing), but the
# figures mean nothing there: the Pallas kernels run in interpret mode.
set -uo pipefail
cd "$(dirname "$0")/.."
PART_TIMEOUT=${PART_TIMEOUT:-150}
PYTHON=${PYTHON:-python}
device=$("$PYTHON" -c "import jax; print(jax.devices()[0].device_kind.replace(' ', '_'))" 2>/dev/null || echo unknown)
out=${1:-benchmarks/results/accelerator_${device}_$(date +%Y%m%d_%H%M%S).md}
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

part() {  # part <title> <command...>: runs the command with a time limit, its output fenced in the report
  local title=$1
  shift
  echo "== $title" >&2
  local start=$SECONDS rc=0
  timeout "$PART_TIMEOUT" "$@" >"$tmp/part.txt" 2>"$tmp/part.err" || rc=$?
  {
    echo "## $title"
    echo
    echo "\`$*\` ($((SECONDS - start)) s, exit $rc)"
    echo
    echo '```'
    cat "$tmp/part.txt"
    if [ "$rc" -ne 0 ]; then
      echo "--- FAILED (exit $rc; 124 = timed out after ${PART_TIMEOUT} s); last lines of stderr:"
      tail -n 20 "$tmp/part.err"
    fi
    echo '```'
    echo
  } >>"$tmp/report.md"
  cat "$tmp/part.txt" >&2
  [ "$rc" -eq 0 ] || failed=1
}

{
  echo "# Accelerator suite"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo '```'
  "$PYTHON" - <<'EOF'
import platform, sys
import jax
devices = jax.devices()
print(f"device: {devices[0].device_kind} x {len(devices)} ({jax.default_backend()}), host {platform.processor() or platform.machine()}")
print(f"python {sys.version.split()[0]}, jax {jax.__version__}")
EOF
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true
  echo '```'
  echo
} >"$tmp/report.md"

# Word splitting of the *_FLAGS variables is intended: each holds several flags.
# shellcheck disable=SC2086
part "Attention kernels (bf16, head dim 64)" \
  "$PYTHON" benchmarks/attention.py ${ATTENTION_FLAGS:---head_dims=64 --lengths=1024,2048,4096,8192 --repeats=5}
# shellcheck disable=SC2086
part "Train step: configs/small.py in bf16 (TFLOP/s, MFU)" \
  "$PYTHON" benchmarks/train_step.py ${TRAIN_FLAGS:---configs=configs/small.py --dtype=bfloat16 --steps=20 --matmul_size=0} \
  ${EXTRA_TRAIN_FLAGS:-}
# shellcheck disable=SC2086
part "Y-decoder generation (KV cache, greedy and beam 4)" \
  "$PYTHON" benchmarks/decoding.py ${DECODING_FLAGS:---decoders=demo,paper --beams=1,4 --repeats=3}

cp "$tmp/report.md" "$out"
echo "report: $out" >&2
exit "$failed"
