#!/usr/bin/env bash
# The GPU rows of docs/performance.md, on one NVIDIA GPU (H100/H200 peaks are known).
#
#   bash bench/gpu.sh [PART ...]      PART: mfu (default first), fp32, sampling; "all" = all three
#
#   mfu       train step of `paper` and `res256` in bf16 at the presets' batch sizes (64, 32), with
#             and without remat at 256 px, against the published torch network (float32, CUDA);
#             model FLOPs, TFLOP/s and MFU (H200, 2026-12-04: `paper` alone 134 s with a 64-s compile;
#             `paper,res256` together ran past 9.5 min: give res256 a call of its own)
#   fp32      the same JAX rows in float32 (TF32 tensor cores; not yet timed)
#   sampling  DDPM 1000, DDIM 50, DPM-Solver++ 20 with CFG (w = 3), batch 64 in bf16, against the
#             published Python loop (not yet timed)
#
# Tables go to the terminal and to $OUT/gpu_<part>.md ($OUT defaults to bench/out). PRESETS, BATCH
# (0: each preset's), SAMPLE_STEPS (0: full counts) and SAMPLE_BATCH override the sizes. Needs a
# Python with jax[cuda], flax and optax (torch for the reference rows). Where ml_collections is missing
# (the offline GPU image has none) it installs from .whl/: fetch it first where pip works with
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-bench/out}
mkdir -p "$OUTDIR"
PRESETS=${PRESETS:-paper,res256}
BATCH=${BATCH:-0}
SAMPLE_STEPS=${SAMPLE_STEPS:-0}
SAMPLE_BATCH=${SAMPLE_BATCH:-64}
THREADS=$(nproc)  # Host threads for compiling and dispatch (the CPU benchmarks pin 2).
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# JAX preallocates 75 % of the GPU by default; the float32 and XLA-attention paper steps at batch 64
# need more than that on an 80 GB H100 (one case per process, so nothing else shares the device).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}

if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/bench_site .whl/*.whl \
      && export PYTHONPATH="/tmp/bench_site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "ml_collections is not installed and .whl/ holds no wheel (see the header of $0)" >&2
    exit 1
  fi
fi

"$PY" - <<'EOF' | tee "$OUTDIR/gpu_env.txt"
import jax, flax, optax
print("jax", jax.__version__, "| flax", flax.__version__, "| optax", optax.__version__, "|",
      jax.devices())
try:
  import torch
  print("torch", torch.__version__, "|", torch.cuda.get_device_name() if torch.cuda.is_available()
        else "no CUDA")
except ImportError as e:
  print("torch:", e)
EOF
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total,power.limit \
  --format=csv 2>&1 | tee -a "$OUTDIR/gpu_env.txt"

train() {  # train NAME ARGS...: bench_train rows, one preset at a time so that a part cut short
  local name=$1; shift  #   keeps the presets it finished; a JAX row that fails with cuDNN
  : > "$OUTDIR/gpu_$name.md"  #   attention is run again with XLA's attention.
  local preset part_file
  for preset in ${PRESETS//,/ }; do
    part_file="$OUTDIR/gpu_${name}_$preset.md"
    "$PY" bench/bench_train.py --presets "$preset" --batch "$BATCH" --attention auto \
      --cpu_convolutions eigen --threads "$THREADS" --timeout 300 "$@" 2>&1 | tee "$part_file"
    if grep -q "| jax (auto.*| exit" "$part_file"; then
      "$PY" bench/bench_train.py --presets "$preset" --batch "$BATCH" --attention xla \
        --cpu_convolutions eigen --threads "$THREADS" --timeout 300 "$@" --frameworks jax 2>&1 \
        | tee -a "$part_file"
    fi
    cat "$part_file" >> "$OUTDIR/gpu_$name.md" && rm -f "$part_file"
  done
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(mfu)
[ "${parts[0]}" = all ] && parts=(mfu fp32 sampling)
for part in "${parts[@]}"; do
  case $part in
    mfu) train mfu --dtype bfloat16 --steps 10 --remat preset,off --frameworks jax,torch ;;
    fp32) train fp32 --dtype float32 --steps 5 --frameworks jax ;;
    sampling)
      "$PY" bench/bench_sampling.py --steps "$SAMPLE_STEPS" --batch "$SAMPLE_BATCH" \
        --dtype bfloat16 --frameworks jax,torch --threads "$THREADS" --timeout 300 2>&1 \
        | tee "$OUTDIR/gpu_sampling.md" ;;
    *) echo "unknown part $part (mfu, fp32, sampling, all)" >&2; exit 2 ;;
  esac
done
