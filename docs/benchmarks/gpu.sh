#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md in one go: CUDA tests, then the engine benchmark (batch-1
# plain decoding against generate(), CUDA-graph step overhead, throughput by batch size), then
# `specdec bench --batch-size` with prompt lookup when the default model's weights are present.
#
#   bash docs/benchmarks/gpu.sh OUT_DIR [--random-weights]
#
# Expects specdec and its plugins installed (`.ci/setup` with SPECDEC_TORCH set to a CUDA build,
# or `pip install -e . plugins/*`). Each stage has its own time limit and log in OUT_DIR; a
# failing stage does not stop the next.
set -uo pipefail
out=${1:?usage: gpu.sh OUT_DIR [--random-weights]}
random=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
questions=${SPECDEC_QUESTIONS:-../shared/data/spec_bench/dev.jsonl}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  echo "== $name"; local start=$SECONDS
  timeout "$seconds" "$@" > "$out/$name.log" 2>&1; local rc=$?
  tail -n 40 "$out/$name.log"; echo "== $name: exit $rc, $((SECONDS - start)) s"
}

stage cuda-tests 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
if [ "$random" = "--random-weights" ]; then
  stage enginebench 400 python3 -m specdec_plugin_bench.enginebench --random-weights --device cuda \
    --dtype bfloat16 --prompts 10 --max-new-tokens 128 --repeats 1 --hf-static --batch-sizes 1 8 32
else
  stage enginebench 400 python3 -m specdec_plugin_bench.enginebench --questions "$questions" --device cuda \
    --dtype bfloat16 --prompts 10 --max-new-tokens 128 --repeats 1 --hf-static --batch-sizes 1 8 32
  stage throughput 400 specdec bench -q "$questions" -p docs/benchmarks/prompt_lookup_cuda.yaml \
    --batch-size 1 8 32 --limit 10 -n 128 --no-progress -o "$out/throughput"
fi
