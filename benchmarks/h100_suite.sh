#!/usr/bin/env bash
# One call on the lent H100 (device tool): GPU tests, then training throughput of the small and
# large OpenWebText-shaped IMDM recipes (compiled and eager), with the async-checkpoint stall.
# Expects, carried: .whl/ (the imdm wheel of the code under test in .whl/new/, and torchdata) and .bench/ (GPT-2 files and a token
# store of the local corpus built by benchmarks/data_pipeline.py's recipe). Results go to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/new/*.whl .whl/torchdata-*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# run from a copy without the source package, so `import imdm` finds the installed wheel
REPO=$PWD; WORK=$(mktemp -d); cp -r benchmarks tests pyproject.toml "$WORK"; cd "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
STORE=$(ls -d "$REPO"/.bench/stores/train-wrap1024-*)
DATA="algorithm.name=imdm data.source=store data.store=$STORE tokenizer.path=$REPO/.bench/gpt2 data.num_workers=2"
run() { timeout "$1" python3 benchmarks/train_throughput.py --results-dir "$OUT" "${@:2}" $DATA 2>&1 | tail -3; }
run 200 --recipe $REPO/recipes/owt.toml --label small-compiled --checkpoint-stall train.global_batch=128 train.micro_batch=32
run 120 --recipe $REPO/recipes/owt.toml --label small-eager parallelism.compile=off train.global_batch=128 train.micro_batch=32
run 240 --recipe $REPO/recipes/owt_large.toml --label large-compiled train.global_batch=64 train.micro_batch=16
echo "== summary"; cat "$OUT"/gpu_tests.txt | tail -1
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob(os.environ["OUT"] + "/train_throughput/*.json")):
    r = json.load(open(f)); m = r["metrics"]
    print(f"{r['config']['label']:<16} {m['tokens_per_s_per_gpu']:>10,.0f} tok/s/GPU  mfu {m['mfu']:.3f}  "
          f"mem {m['peak_mem_gib']:.1f} GiB  wait {m['data_wait_share']:.4f}  stall {m.get('checkpoint_stall_s')}")
PY
