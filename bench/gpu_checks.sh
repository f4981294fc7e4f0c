#!/usr/bin/env bash
# The GPU checks, in one short script (a lent GPU machine's time is scarce):
#   1. the Phase 1 throughput benchmark (static batches against the engine) on a random model with
#      gemma-2-2b's exact shapes, bf16, every row forced to 512 tokens (random weights rarely stop),
#      with the engine's tokens/s against the memory-bandwidth bound;
#   2. `run.py test-gpu` and a short `run.py phase 1` on a tiny local model on CUDA (bf16),
#      i.e. the CUDA code paths of loading, batched generation, capture and labelling;
#   3. the steering hooks in bf16 on CUDA, and the launcher with one GPU worker;
#   4. batch invariance in float32 on CUDA: the same prompts in fixed batches of 16 and through the
#      engine at 64 rows (other neighbours, other shapes) must give the same greedy tokens.
# Usage, from the repository root: bash bench/gpu_checks.sh MODEL_DIR DATA_DIR OUT_DIR
# DATA_DIR must hold a Phase 0 output for demo/problems.jsonl (phase 0 needs radon).
set -u
MODEL_DIR=$1; DATA_DIR=$2; OUT_DIR=$3
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT_DIR/gpu.txt"
echo "=== throughput (gemma-2-2b shapes, bf16, static batches against the engine)"
timeout 420 python3 -m bench.phase1_throughput --gemma-2-2b-shapes --device cuda --forced --n-prompts 128 \
  --max-new-tokens 512 2>&1 | tee "$OUT_DIR/throughput.log"
echo "=== test-gpu on the tiny model"
timeout 60 python3 run.py test-gpu --model "$MODEL_DIR" --device cuda 2>&1 | tail -n 12 | tee "$OUT_DIR/test_gpu.log"
echo "=== phase 1 on the tiny model, 20 tasks, CUDA bf16"
timeout 90 python3 run.py phase 1 --model "$MODEL_DIR" --data-dir "$DATA_DIR" --mbpp-path demo/problems.jsonl \
  --start 0 --end 19 --max-new-tokens 32 --batch-size 8 --workers 4 2>&1 | tail -n 5 | tee "$OUT_DIR/phase1.log"
ls -R "$DATA_DIR/phase1_0" | head -n 20 >> "$OUT_DIR/phase1.log"
echo "=== steering hooks on CUDA bf16"
timeout 120 python3 -m bench.gpu_steering_check "$MODEL_DIR" --device cuda 2>&1 | tail -n 8 | tee "$OUT_DIR/steering.log"
echo "=== launcher, one GPU worker"
timeout 120 python3 multi_gpu_launcher.py --phase 1 --start 0 --end 15 --model "$MODEL_DIR" --data-dir "$DATA_DIR" \
  --mbpp-path demo/problems.jsonl --max-new-tokens 16 --batch-size 8 2>&1 | tail -n 6 | tee "$OUT_DIR/launcher.log"
echo "=== batch invariance, gemma-2-2b shapes, float32, fixed batches of 16 against the engine at 64"
timeout 240 python3 -m bench.phase1_throughput --gemma-2-2b-shapes --device cuda --dtype float32 --forced \
  --n-prompts 64 --max-new-tokens 64 --batch-size 16 --engine-batch-size 64 2>&1 | tail -n 8 | tee "$OUT_DIR/invariance.log"
