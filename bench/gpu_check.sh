#!/usr/bin/env bash
# One command for the GPU machine shared/GPU.md describes (one H200, 16 cores, torch 2.11 preinstalled,
# no package index): the CUDA tests, the bare step's MFU, jointspace against open_clip_train, and the loader.
# Everything it writes goes under OUT (the first argument); it ends inside 8 minutes: the stages'
# timeouts add up to 480 s (each stage has its own timeout, so a slow stage loses its own figures, not the others').
#
#   bash bench/gpu_check.sh "$OUT"                 # from the repository root
#
# The packages jointspace needs that the machine lacks (shared/GPU.md: open_clip_torch, webdataset,
# pydantic, faiss-cpu, ...) are cp312 wheels in $WHEELS (default .gpu-wheels, an ignored folder the
# device tool carries); they are installed with --no-deps into OUT-side scratch and put on PYTHONPATH
# before src. torch itself is the machine's (2.11); `pip install -e .` is not used (the 2.14.1 pin).
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WHEELS=${WHEELS:-.gpu-wheels}
SITE=${SITE:-/tmp/jointspace-gpu-site}
PY=${PY:-python3}
START=$(date +%s)

stage() {  # stage NAME SECONDS COMMAND...: run with a timeout, output to OUT/NAME.log, status to OUT/stages.txt
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s (limit ${limit}s)" | tee -a "$OUT/stages.txt"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  nvidia-smi | head -5
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name())"
  git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null || echo "commit: (no git here)"
  nproc
} > "$OUT/machine.txt" 2>&1

if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  stage wheels 30 $PY -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
fi
export PYTHONPATH="$SITE:$ROOT/src:$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline

# 1. the tests that mean a GPU (AMP steps, fused AdamW, retrieval on the device, pinned batches, no host
#    reads in a bf16 step), and the torchrun tests (pinned to gloo on the CPU: one GPU here)
stage cuda_tests 45 $PY -m pytest -q -rA -m cuda --junitxml="$OUT/cuda_tests.xml" tests/engine/test_cuda.py
stage ddp_tests 40 $PY -m pytest -q -rA --junitxml="$OUT/ddp_tests.xml" tests/engine/test_distributed.py

# 2. the bare open_clip step, eager and compiled: samples/s and MFU against the 790 TFLOP/s measured bf16 peak
stage mfu_256 45 $PY bench/step_mfu.py --device cuda --arch ViT-B-32 --batch-size 256 --peak-tflops 790 \
  --seconds 6 --work-dir "$OUT/work_mfu"
stage mfu_1024 35 $PY bench/step_mfu.py --device cuda --arch ViT-B-32 --batch-size 1024 --peak-tflops 790 \
  --seconds 6 --no-compile --work-dir "$OUT/work_mfu"

# 3. jointspace (in memory, streamed with 8 and 16 workers, compiled) against open_clip_train (8, 16
#    workers) on the same shards, batch 256, 15 s of training each, R@1 after that budget
stage train_256 210 $PY bench/train_vs_openclip.py --device cuda --arch ViT-B-32 --batch-size 256 --rounds 0 \
  --budget-seconds 15 --n-samples 3000 --threads 8 --oc-workers 8 16 --skip jointspace-streaming \
  --variant "stream8:data.streaming=true,data.num_workers=8" \
  --variant "stream16:data.streaming=true,data.num_workers=16" \
  --variant "compile:train.compile=true" --work-dir "$OUT/work_train"
# batch 1024, in memory only (the step, not the loader)
stage train_1024 30 $PY bench/train_vs_openclip.py --device cuda --arch ViT-B-32 --batch-size 1024 --rounds 0 \
  --budget-seconds 15 --n-samples 3000 --threads 8 --skip open_clip jointspace-streaming \
  --work-dir "$OUT/work_train_1024"


# 4. the streamed loader alone (no model) against open_clip_train's pipeline, 8 and 16 workers, JPEG shards
stage loader 45 $PY bench/loader.py --rounds 1 --n-samples 2000 --formats jpg --workers 8 16 --threads 8

rm -rf "$OUT"/work_*/shards "$OUT"/work_*/runs 2> /dev/null  # keep the logs and tables, not the data
echo "total $(( $(date +%s) - START ))s" | tee -a "$OUT/stages.txt"
