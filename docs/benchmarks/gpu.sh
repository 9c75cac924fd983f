#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md in one go, each stage with its own time limit and log in
# OUT_DIR (a failing stage does not stop the next):
#
#   bash docs/benchmarks/gpu.sh OUT_DIR [STAGE ...]
#
# Stages (default: cuda-tests enginebench throughput):
#   cuda-tests     tests/test_cuda.py
#   tp-one-rank    what tensor parallelism costs a one-GPU target (tp_size 1): the forward as
#                  shipped against the forward before it landed, alternating (tp_one_rank.py)
#   enginebench    batch-1 plain decoding against generate(), CUDA-graph step overhead, throughput
#                  by batch size (add --random-weights as a stage to use random weights instead)
#   throughput     `specdec bench --batch-size 1 8 32` with prompt lookup
#   training-free  `specdec bench` at batch 1 in bfloat16: prompt lookup (n-gram index, suffix automaton),
#                  Token Recycling, lookahead auto, merge, against plain decoding
#   serve          `specdec serve` with prompt lookup under the load test, speculation on/off
#   selfspec       `specdec bench` with low_precision (a bfloat16 copy of a float32 target) and
#                  layer_skip (few questions: their draft forwards run eagerly)
#   eagle          `specdec bench` in bfloat16, greedy: the shipped EAGLE draft model against Medusa
#   eagle-t07      the same at temperature 0.7: sampled drafts and top-k drafts (`sample: false`)
#   profile        where EAGLE's and the low-precision copy's drafting time goes on the GPU
#                  (profile_pipeline.py: Python functions and torch operators)
#
# Expects specdec and its plugins installed (`.ci/setup` with SPECDEC_TORCH set to a CUDA build,
# or `pip install -e . plugins/*`). SPECDEC_QUESTIONS names the question file, SPECDEC_DEADLINE
# the seconds the whole script may take (a stage is cut to what is left, and skipped under 30 s);
# SPECDEC_LIMIT (questions per task, default 10) and SPECDEC_TOKENS (new tokens, default 128)
# shrink a dry run.
set -uo pipefail
out=${1:?usage: gpu.sh OUT_DIR [STAGE ...]}
shift
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(cuda-tests enginebench throughput)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
questions=${SPECDEC_QUESTIONS:-../shared/data/spec_bench/dev.jsonl}
limit=${SPECDEC_LIMIT:-10}
tokens=${SPECDEC_TOKENS:-128}
deadline=$((SECONDS + ${SPECDEC_DEADLINE:-3600}))
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  local left=$((deadline - SECONDS))
  [ "$seconds" -le "$left" ] || seconds=$left
  if [ "$seconds" -lt 30 ]; then echo "== $name: skipped, ${left} s left"; return; fi
  echo "== $name (limit $seconds s)"; local start=$SECONDS
  timeout "$seconds" "$@" > "$out/$name.log" 2>&1; local rc=$?
  tail -n 30 "$out/$name.log"; echo "== $name: exit $rc, $((SECONDS - start)) s"
}

serve_under_load() {  # the load test against a server started here, stopped at the end
  local port=8123
  specdec serve docs/benchmarks/prompt_lookup_cuda.yaml --port "$port" --max-batch 64 > "$out/server.log" 2>&1 &
  local server=$!
  for _ in $(seq 240); do
    python3 -c "import httpx; httpx.get('http://127.0.0.1:$port/health').raise_for_status()" 2> /dev/null && break
    kill -0 "$server" 2> /dev/null || { echo "server died:"; tail -n 30 "$out/server.log"; return 1; }
    sleep 1
  done
  local rc=0 concurrency
  for concurrency in 1 4 16 64; do  # one run each, so that a cut-off stage keeps what finished
    python3 -m specdec_plugin_serve.loadtest --url "http://127.0.0.1:$port" --questions "$questions" \
      --limit "$limit" --concurrency "$concurrency" --max-tokens "$tokens" --output "$out/loadtest-c$concurrency" || rc=$?
  done
  python3 -m specdec_plugin_serve.loadtest --url "http://127.0.0.1:$port" --questions "$questions" \
    --limit "$limit" --max-tokens "$tokens" --offline docs/benchmarks/prompt_lookup_cuda.yaml \
    --output "$out/loadtest-offline" || rc=$?
  kill -INT "$server"; wait "$server"
  return $rc
}

bench=(specdec bench -q "$questions" --limit "$limit" -n "$tokens" --no-progress)
for name in "${stages[@]}"; do
  case $name in
    cuda-tests) stage cuda-tests 120 python3 -m pytest -q -p no:cacheprovider --durations=15 tests/test_cuda.py ;;
    tp-one-rank) stage tp-one-rank 150 python3 docs/benchmarks/tp_one_rank.py --questions "$questions" \
        --device cuda --dtype bfloat16 --prompts 3 --tokens 48 --rounds 6 ;;
    enginebench) stage enginebench 400 python3 -m specdec_plugin_bench.enginebench --questions "$questions" \
        --device cuda --dtype bfloat16 --prompts "$limit" --max-new-tokens "$tokens" --repeats 1 --hf-static --batch-sizes 1 8 32 ;;
    --random-weights) stage enginebench 400 python3 -m specdec_plugin_bench.enginebench --random-weights \
        --device cuda --dtype bfloat16 --prompts "$limit" --max-new-tokens "$tokens" --repeats 1 --hf-static \
        --batch-sizes 1 8 32 ;;
    throughput) stage throughput 400 "${bench[@]}" -p docs/benchmarks/prompt_lookup_cuda.yaml \
        --batch-size 1 8 32 -o "$out/throughput" ;;
    training-free) stage training-free 280 "${bench[@]}" --device cuda --dtype bfloat16 --hf-baselines none \
        -o "$out/training-free" \
        -p plugins/specdec-plugin-retrieval/examples/prompt_lookup.yaml \
           plugins/specdec-plugin-retrieval/examples/prompt_lookup_sam.yaml \
           plugins/specdec-plugin-recycling/examples/token_recycling.yaml \
           plugins/specdec-plugin-lookahead/examples/lookahead-auto.yaml \
           docs/pipelines/merge-prompt-lookup-recycling.yaml ;;
    serve) export -f serve_under_load; export out questions limit tokens
        stage serve 300 bash -c serve_under_load; pkill -f "specdec serve" ;;
    selfspec) stage selfspec 200 specdec bench -q "$questions" --limit 2 -n "$tokens" --no-progress \
        --device cuda --dtype float32 --hf-baselines none -o "$out/selfspec" \
        -p plugins/specdec-plugin-selfspec/examples/low-precision.yaml \
           plugins/specdec-plugin-selfspec/examples/layer-skip-auto.yaml ;;
    eagle) stage eagle 300 "${bench[@]}" --device cuda --dtype bfloat16 --hf-baselines none -o "$out/eagle" \
        -p plugins/specdec-plugin-eagle/examples/eagle-greedy.yaml plugins/specdec-plugin-medusa/examples/medusa-greedy.yaml ;;
    eagle-t07) stage eagle-t07 300 "${bench[@]}" --device cuda --dtype bfloat16 --hf-baselines none \
        --temperature 0.7 --seed 0 -o "$out/eagle-t07" \
        -p plugins/specdec-plugin-eagle/examples/eagle-sampling.yaml \
           plugins/specdec-plugin-eagle/examples/eagle-sampling-topk.yaml ;;
    profile) stage profile 150 bash -c "python3 docs/benchmarks/profile_pipeline.py \
        plugins/specdec-plugin-eagle/examples/eagle-greedy.yaml --questions '$questions' --device cuda \
        --dtype bfloat16 --prompts 2 --tokens 64 && python3 docs/benchmarks/profile_pipeline.py \
        plugins/specdec-plugin-selfspec/examples/low-precision.yaml --questions '$questions' --device cuda \
        --dtype float32 --prompts 2 --tokens 64" ;;
    *) echo "unknown stage $name"; exit 2 ;;
  esac
done
