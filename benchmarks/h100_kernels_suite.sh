#!/usr/bin/env bash
# One call on the lent H100 (device tool): end-to-end training throughput with the Triton
# kernels against the pre-kernel baseline, both installed as wheels and run on the same card in
# the same call; then the GPU tests and the kernel benchmarks, as far as the call's time allows.
# Carried: .whl/ (new/ and base/ imdm wheels, torchdata) and .bench/ (GPT-2 files and a token
# store of the local corpus). Usage: bash benchmarks/h100_kernels_suite.sh NEW_SHA BASE_SHA
set -uo pipefail
NEW_SHA=$1 BASE_SHA=$2
for v in new base; do
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/$v .whl/$v/*.whl .whl/torchdata-*.whl || exit 1
done
export PYTHONUNBUFFERED=1
REPO=$PWD; WORK=$(mktemp -d); cp -r benchmarks tests pyproject.toml "$WORK"; cd "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
STORE=$(ls -d "$REPO"/.bench/stores/train-wrap1024-*)
DATA="algorithm.name=imdm data.source=store data.store=$STORE tokenizer.path=$REPO/.bench/gpt2 data.num_workers=2"
bench() {  # bench new|base LABEL RECIPE overrides...
  local v=$1 label=$2 recipe=$3; shift 3
  local sha=$NEW_SHA; [ "$v" = base ] && sha=$BASE_SHA
  PYTHONPATH=/tmp/$v IMDM_GIT_SHA=$sha timeout 150 python3 benchmarks/train_throughput.py --warmup 3 --steps 6 \
    --results-dir "$OUT" --label "$label" --recipe "$REPO/recipes/$recipe" "$@" $DATA 2>&1 | grep -E "tokens/s|Error" | tail -2
}
bench new small-kernels owt.toml train.global_batch=128 train.micro_batch=32
bench base small-baseline owt.toml train.global_batch=128 train.micro_batch=32
bench new large-kernels owt_large.toml train.global_batch=64 train.micro_batch=16
bench base large-baseline owt_large.toml train.global_batch=64 train.micro_batch=16
export PYTHONPATH=/tmp/new IMDM_GIT_SHA=$NEW_SHA
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
timeout 60 python3 benchmarks/kernel_masked_loss.py --results-dir "$OUT" 2>&1 | tail -3
timeout 45 python3 benchmarks/kernel_sampler.py --results-dir "$OUT" 2>&1 | tail -3
timeout 30 python3 benchmarks/kernel_masking.py --results-dir "$OUT" --iters 50 2>&1 | tail -6
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob(os.environ["OUT"] + "/train_throughput/*.json")):
    r = json.load(open(f)); m = r["metrics"]
    print(f"{r['config']['label']:<16} {m['tokens_per_s_per_gpu']:>10,.0f} tok/s/GPU  mfu {m['mfu']:.3f}  "
          f"mem {m['peak_mem_gib']:.1f} GiB  wait {m['data_wait_share']:.4f}")
PY
