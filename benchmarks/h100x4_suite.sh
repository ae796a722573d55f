#!/usr/bin/env bash
# Scaling on a 4 x H100 host (device tool, kind nvidia-h100-x4), in two calls:
#   bash benchmarks/h100x4_suite.sh part1   # small: 1 GPU vs FSDP over 4; large: 1 GPU
#   bash benchmarks/h100x4_suite.sh part2   # large: FSDP over 4; HSDP 2 "nodes" x 2 GPUs trains, then resumes
# Carried: .whl/ (the imdm wheel under test in .whl/new/, torchdata) and .bench/ (GPT-2 files, local-corpus token store).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/new/*.whl .whl/torchdata-*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
REPO=$PWD; WORK=$(mktemp -d); cp -r benchmarks "$WORK"; cd "$WORK"
STORE=$(ls -d "$REPO"/.bench/stores/train-wrap1024-*)
DATA="algorithm.name=imdm data.source=store data.store=$STORE tokenizer.path=$REPO/.bench/gpt2 data.num_workers=2"
bench() {  # bench TIMEOUT NPROC LABEL RECIPE overrides...
  local t=$1 n=$2 label=$3 recipe=$4; shift 4
  if [ "$n" = 1 ]; then launch="python3"; else launch="python3 -m torch.distributed.run --standalone --nproc_per_node=$n"; fi
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) timeout "$t" $launch benchmarks/train_throughput.py --warmup 3 --steps 10 \
    --results-dir "$OUT" --label "$label" --recipe "$REPO/recipes/$recipe" "$@" $DATA 2>&1 | grep -E "tokens/s|Error|error" | tail -3
}
case "${1:-part1}" in
part1)
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
  bench 170 1 small-1gpu owt.toml train.global_batch=128 train.micro_batch=32
  bench 200 4 small-4gpu-fsdp owt.toml train.global_batch=512 train.micro_batch=32
  bench 170 1 large-1gpu owt_large.toml train.global_batch=64 train.micro_batch=16
  ;;
small|rest)
  bench 170 1 small-1gpu owt.toml train.global_batch=128 train.micro_batch=32
  bench 200 4 small-4gpu-fsdp owt.toml train.global_batch=512 train.micro_batch=32
  ;;&
part2|rest)
  bench 230 4 large-4gpu-fsdp owt_large.toml train.global_batch=256 train.micro_batch=16
  PORT=29611
  hsdp() {  # two rendezvous "nodes" of 2 GPUs, large model, HSDP replicate=2
    for node in 0 1; do
      CUDA_VISIBLE_DEVICES=$((2 * node)),$((2 * node + 1)) timeout 200 python3 -m torch.distributed.run --nnodes=2 --node_rank=$node \
        --nproc_per_node=2 --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:$PORT --rdzv_id=hsdp$1 -m imdm train \
        "$REPO/recipes/owt_large.toml" $DATA parallelism.replicate=2 parallelism.compile=off train.global_batch=64 \
        train.micro_batch=16 train.steps=$1 checkpoint.every_steps=2 logging.every_steps=1 logging.progress=false \
        run.output_dir=/tmp/hsdp train.eval_batches=1 > "$OUT/hsdp_${1}_node$node.log" 2>&1 &
    done
    wait
  }
  hsdp 3; hsdp 5
  grep -h '"loss"\|event' /tmp/hsdp/owt-large-mdlm/metrics.jsonl | cut -c1-160 | tee "$OUT/hsdp_metrics.txt"
  ls /tmp/hsdp/owt-large-mdlm/checkpoints | tee -a "$OUT/hsdp_metrics.txt"
  ;;
esac
echo "== summary"
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob(os.environ["OUT"] + "/train_throughput/*.json")):
    r = json.load(open(f)); m = r["metrics"]
    print(f"{r['config']['label']:<18} ws {r['world_size']} {m['tokens_per_s_per_gpu']:>10,.0f} tok/s/GPU  mfu {m['mfu']:.3f}  "
          f"mem {m['peak_mem_gib']:.1f} GiB  wait {m['data_wait_share']:.4f}  stall {m.get('checkpoint_stall_s')}")
PY
