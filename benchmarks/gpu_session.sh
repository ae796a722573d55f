#!/usr/bin/env bash
# Every GPU measurement of the open issues, on a 4-GPU host (device tool, kind nvidia-h100-x4 or
# nvidia-h200-x4; phases k, b, h, x and v on one GPU, phase e on eight), in consecutive calls on
# the warm machine. Each task runs once (a marker in /tmp/done), only if the call has time left
# for it, so repeating a phase finishes what a call left undone. Results come back as one
# archive, $OUT/PHASE.tgz (the tool returns at most 8 files).
#   a  synthetic reproduction (issue 6) as branches on GPUs 1-3, one GPU each, while GPU 0 runs
#      the GPU tests and the kernel and sampling-latency benchmarks (issue 5); then, once every
#      stage has finished, the synthetic evaluation
#   k  one GPU: the GPU tests, the kernel and sampling-latency benchmarks (issue 5)
#   b  quiet machine: end-to-end training on one GPU, kernels wheel against the pre-kernel wheel,
#      small (with the asynchronous-checkpoint stall) and large (issues 4 and 5; the new wheel's
#      large also at the recipe's global batch of 512, in its micro-batches of 32 and in 16, and
#      small at 512), then the small model in micro-batches of 64
#   h  one H100: the new-wheel runs of b first (and the small model at the recipe's global batch),
#      then k, then b's baselines (most needed first), then the small model with micro-batch 64, then
#      the profiled large step of phase o
#   c  FSDP over 4 GPUs, small (micro-batch 32 and 64) and large (also the pre-kernel wheel, which
#      synchronised every step, with parameters kept to backward), with their 1-GPU baselines in
#      the same call; HSDP as 2 rendezvous "nodes" x 2 GPUs trains, then resumes
#   p  profiles (op tables, Chrome traces) of the small model on 1 and 4 GPUs, large on 4
#   x  one GPU: Inductor settings (multi-kernel reductions, coordinate-descent tuning) and the
#      recipes' own global batch of 512, against the default, large and small
#   s  FSDP over 4 GPUs against 1 GPU at the recipes' own global batch (512), and at the per-GPU
#      batch of phase c (large: 64 per GPU); then the 4-GPU runs of the wheel in .whl/prev
#   e  8 GPUs (issue 7), large model: 1-GPU baselines, FSDP over 8 and HSDP 2 x 4 (with the
#      asynchronous-checkpoint stall), a rank killed and resumed (benchmarks/kill_resume.py), then
#      HSDP as two rendezvous "nodes" of 4 GPUs trains and resumes
#   v  one GPU: the GPU tests, then small and large against the wheel in .whl/prev (BASE_SHA names
#      it), then a profile of the large model
#   f  one GPU: the residual + LayerNorm kernel's benchmark; the GPU tests; one block's forward +
#      backward and its kernels (benchmarks/block_breakdown.py), large and small, against the wheel
#      in .whl/prev; then end-to-end training against .whl/prev (large, small, then large at the
#      recipe's own global batch of 512)
#   r  one GPU: end-to-end training as in f; then the residual + LayerNorm kernel's benchmark at
#      the small model's shape
#   t  one GPU: the GPU tests, then one block's forward + backward and its kernels, large and small
#   w  one GPU: the GPU tests, then end-to-end training as in f
#   y  one GPU: weight-gradient accumulation in both layouts, then profiles of the large model, new and
#      .whl/prev
#   d  2 GPUs (nvidia-h200-x2): FSDP over 2, large then small, new and .whl/prev; then the GPU tests
#   z  one GPU: the GELU-epilogue GEMMs' GPU tests (nothing else runs if they fail), its benchmark, a
#      large block with and without it, end-to-end training against .whl/prev as in w, the small
#      block, then all GPU tests
#   q  one GPU: cuBLASLt's epilogues at the block MLP's shapes, up to 8 algorithms each
#   m  one GPU: the GPU tests; a large block with kept weight gradients, without and with frozen bf16
#      weight copies; end-to-end training against .whl/prev as in w; then the large model in
#      micro-batches of 32 at the recipe's global batch
#   n  one GPU: the large model at the recipe's global batch in micro-batches of 16 and 32, the 32 also
#      with the allocator capped at 78.5 GiB (an 80 GB H100's memory less its CUDA context)
#   o  one GPU: where the large model's step goes at the recipe's micro-batch (a profiled step of 4
#      micro-batches, its trace summarised by benchmarks/trace_summary.py, the trace itself kept
#      gzipped beside the archive if under 15 MiB), one large block's kernels at that micro-batch, and
#      benchmarks/weight_copies_identity.py
#   j  one GPU: the residual + LayerNorm kernel's GPU tests and its benchmark (backward settings
#      swept), large and small at micro-batch 32; the rotary layouts (benchmarks/rotary_layouts.py),
#      large and small
#   l  one GPU: the GPU tests; the fused masked loss's benchmark, new and .whl/prev; the large model
#      at the recipe's batch, new and .whl/prev; then the small model likewise
#   i  one GPU: the small model at the recipe's batch, .whl/prev and new alternating, twice each
#   g  one GPU: the large block's kernels (block_breakdown --profile) and its variants: bf16
#      parameters, SDPA backends alone, Inductor's max-autotune GEMM templates
# Carried: .whl/ (new/ = code under test, base/ = pre-kernel wheel, prev/ = any earlier wheel,
# torchdata) and .bench/ (GPT-2 files, local-corpus token store).
# Usage: bash benchmarks/gpu_session.sh a|d|k|b|h|c|p|x|s|e|v|f|g|i|j|l|m|n|o|r|t|w|y|z|q NEW_SHA BASE_SHA [SECONDS_AVAILABLE, default 580]
set -uo pipefail
PHASE=$1 NEW_SHA=$2 BASE_SHA=$3 LIMIT=${4:-580}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
for w in .whl/*/; do   # every folder holding a wheel: new, base, prev
  v=$(basename "$w")
  ls "$w"*.whl > /dev/null 2>&1 || continue
  [ -d /tmp/$v/imdm ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/$v \
    "$w"*.whl .whl/torchdata-*.whl || exit 1
done
REPO=$PWD WORK=/tmp/work SYN=/tmp/syn DONE=/tmp/done
rm -rf $WORK; mkdir -p $WORK $SYN $DONE; cp -r benchmarks tests recipes pyproject.toml $WORK; cd $WORK
STORE=$(ls -d "$REPO"/.bench/stores/train-wrap1024-*)
DATA="algorithm.name=imdm data.source=store data.store=$STORE tokenizer.path=$REPO/.bench/gpt2 data.num_workers=2"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus_$PHASE.txt"

new() { PYTHONPATH=/tmp/new IMDM_GIT_SHA=$NEW_SHA "$@"; }
task() {  # task NAME SECONDS COMMAND...: run once, under `timeout SECONDS`, if the call has that long left
  local name=$1; T=$2; shift 2
  if [ -e $DONE/$name ]; then echo "$name: done in an earlier call"; return; fi
  if [ $((LIMIT - SECONDS)) -lt "$T" ]; then echo "$name: not started, $((LIMIT - SECONDS)) s left"; return; fi
  "$@" && touch $DONE/$name || echo "$name: FAILED or timed out (log in \$OUT)"
}
bench() {  # bench WHEEL NPROC LABEL RECIPE overrides...  (under task: timeout $T); 6 warm-up steps see most
           # of the loss row-count buckets, each a new cuBLAS shape the first time ($WARMUP, $STEPS override)
  local v=$1 n=$2 label=$3 recipe=$4; shift 4
  local sha=$NEW_SHA launch=python3; [ "$v" = new ] || sha=$BASE_SHA
  [ "$n" = 1 ] || launch="python3 -m torch.distributed.run --standalone --nproc_per_node=$n"
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) PYTHONPATH=/tmp/$v IMDM_GIT_SHA=$sha timeout "$T" $launch \
    benchmarks/train_throughput.py --warmup "${WARMUP:-6}" --steps "${STEPS:-12}" --results-dir "$OUT" --label "$label" \
    --recipe "$REPO/recipes/$recipe" "$@" $DATA > "$OUT/bench_$label.log" 2>&1
  grep -E "tokens/s|Error" "$OUT/bench_$label.log" | tail -2; grep -q "tokens/s" "$OUT/bench_$label.log"
}
gpu_all() {  # gpu_all LOG COMMAND...: on every GPU, under timeout $T, output to $OUT/LOG and its tail here;
            # the code of .whl/$WHEEL (default new)
  local log=$1 v=${WHEEL:-new} sha=$NEW_SHA; shift
  [ "$v" = new ] || sha=$BASE_SHA
  PYTHONPATH=/tmp/$v IMDM_GIT_SHA=$sha timeout "$T" "$@" > "$OUT/$log" 2>&1; local rc=$?
  tail -4 "$OUT/$log"; return $rc
}
gpu0() { CUDA_VISIBLE_DEVICES=0 gpu_all "$@"; }   # gpu0 LOG COMMAND...: gpu_all on GPU 0 only
branch() {  # branch GPU PART: run part PART of the GPU synthetic pipeline on one GPU
  [ -e $SYN/$2.done ] && return
  (cd $SYN && export CUDA_VISIBLE_DEVICES=$1 && new python3 -m imdm pipeline "p_$2.toml") >> "$OUT/syn_$2.log" 2>&1 \
    && touch $SYN/$2.done
}
hsdp() {  # hsdp STEPS [GPUS_PER_NODE, default 2]: two rendezvous "nodes", large model, HSDP replicate=2,
          # 16 sequences per GPU and step, to step STEPS
  local per=${2:-2}
  for node in 0 1; do
    CUDA_VISIBLE_DEVICES=$(seq -s, $((per * node)) $((per * node + per - 1))) new timeout 150 python3 -m torch.distributed.run \
      --nnodes=2 --node_rank=$node --nproc_per_node=$per --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:29611 \
      --rdzv_id=hsdp$1 -m imdm train "$REPO/recipes/owt_large.toml" $DATA parallelism.replicate=2 parallelism.compile=off \
      train.global_batch=$((32 * per)) train.micro_batch=16 train.steps=$1 checkpoint.every_steps=2 logging.every_steps=1 \
      logging.progress=false run.output_dir=/tmp/hsdp train.eval_batches=1 > "$OUT/hsdp_${1}_node$node.log" 2>&1 &
  done
  wait
}
kernel_tasks() {  # GPU tests, kernel benchmarks and sampling latency, on GPU 0
  task gpu-tests 200 gpu0 gpu_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests
  task kernel-masked-loss 60 gpu0 kernel_masked_loss.log python3 benchmarks/kernel_masked_loss.py --results-dir "$OUT"
  task kernel-sampler 45 gpu0 kernel_sampler.log python3 benchmarks/kernel_sampler.py --results-dir "$OUT"
  task kernel-masking 60 gpu0 kernel_masking.log python3 benchmarks/kernel_masking.py --results-dir "$OUT" --iters 50
  task sampling-latency 200 gpu0 sampling_latency.log python3 benchmarks/sampling_latency.py --results-dir "$OUT"
}
new_wheel_runs() {  # one GPU, the code under test
  task small-kernels 170 bench new 1 small-kernels owt.toml --checkpoint-stall train.global_batch=128 train.micro_batch=32
  task large-kernels 160 bench new 1 large-kernels owt_large.toml train.global_batch=64 train.micro_batch=16
  WARMUP=2 STEPS=4 task large-kernels-g512 160 bench new 1 large-kernels-g512 owt_large.toml   # the recipe's batch
  WARMUP=2 STEPS=4 task large-kernels-g512-mb16 160 bench new 1 large-kernels-g512-mb16 owt_large.toml \
    train.micro_batch=16   # the recipe's micro-batch before the 11th session
  WARMUP=3 STEPS=6 task small-kernels-g512 100 bench new 1 small-kernels-g512 owt.toml   # the recipe's batch
}
profile_large_mb32() {  # one GPU: a profiled large step of 4 micro-batches of 32, its trace kept (see the end)
  mkdir -p /tmp/traces
  task prof-large-mb32 200 bench new 1 large-mb32-profile owt_large.toml --profile 1 --trace /tmp/traces/large_mb32.json \
    train.global_batch=128
}
baseline_runs() {  # one GPU, the pre-kernel wheel
  task small-baseline 150 bench base 1 small-baseline owt.toml train.global_batch=128 train.micro_batch=32
  task large-baseline 160 bench base 1 large-baseline owt_large.toml train.global_batch=64 train.micro_batch=16
}
micro64_run() {  # one GPU, the small model in micro-batches of 64
  task small-micro64 150 bench new 1 small-micro64 owt.toml train.global_batch=128 train.micro_batch=64
}
runs_against_prev() {  # one GPU, the code under test then .whl/prev: large, small, then large at the recipe's
                       # own global batch (512)
  for v in new prev; do task large-$v 100 bench $v 1 large-$v owt_large.toml train.global_batch=64 train.micro_batch=16; done
  for v in new prev; do task small-$v 90 bench $v 1 small-$v owt.toml train.global_batch=128 train.micro_batch=32; done
  for v in new prev; do WARMUP=2 STEPS=4 task large-$v-g512 160 bench $v 1 large-$v-g512 owt_large.toml; done
}
hsdp_train_resume() {  # [GPUS_PER_NODE]
  rm -rf /tmp/hsdp; hsdp 3 "${1:-2}"; hsdp 5 "${1:-2}"
  grep -h '"loss"\|event' /tmp/hsdp/*/metrics.jsonl | cut -c1-200 | tee "$OUT/hsdp_metrics.txt"
  ls /tmp/hsdp/*/checkpoints | tee -a "$OUT/hsdp_metrics.txt"
  grep -q '"step": 5' /tmp/hsdp/*/metrics.jsonl
}

case $PHASE in
a)
  new python3 - "$REPO/recipes/pipelines/synthetic_repro_gpu.toml" "$SYN" <<'PY'
import json, sys, tomllib
def name(stage):
    return next(o.split("=", 1)[1] for o in stage["overrides"] if o.startswith("run.name="))
stages = {name(s): s for s in tomllib.load(open(sys.argv[1], "rb"))["stage"]}
parts = {"mdlm-sdtt": ["mdlm", "sdtt"], "imdm": ["imdm"], "imsdtt-redi": ["imsdtt", "imsdtt-couplings", "imsdtt-redi"],
         "imredi": ["imdm-couplings", "imredi"], "k16": ["imdm-k16", "imsdtt-k16"],
         "allmask": ["imdm-allmask-couplings", "imredi-allmask"]}
assert sorted(sum(parts.values(), [])) == sorted(stages), "parts must cover the pipeline"
for part, names in parts.items():
    with open(f"{sys.argv[2]}/p_{part}.toml", "w") as f:
        f.write('[pipeline]\noutput_dir = "runs/synthetic_repro_gpu"\n')
        for n in names:
            s = stages[n]
            extra = [] if s.get("command") == "couplings" else ["checkpoint.every_steps=1000"]
            f.write(f'\n[[stage]]\nrecipe = {json.dumps(s["recipe"])}\ncommand = {json.dumps(s.get("command", "train"))}\n'
                    f'overrides = {json.dumps(s["overrides"] + extra)}\n')
PY
  (branch 1 mdlm-sdtt; until [ -e $SYN/imdm.done ]; do sleep 2; done; branch 1 imredi) & pids=($!)
  (branch 2 imdm && branch 2 imsdtt-redi) & pids+=($!)
  (branch 3 k16; until [ -e $SYN/imdm.done ]; do sleep 2; done; branch 3 allmask) & pids+=($!)
  kernel_tasks
  while kill -0 "${pids[@]}" 2>/dev/null && [ $((LIMIT - SECONDS)) -gt 100 ]; do sleep 2; done
  pkill -f "imdm pipeline"; kill "${pids[@]}" 2>/dev/null
  for p in mdlm-sdtt imdm imsdtt-redi imredi k16 allmask; do
    echo "== $p $([ -e $SYN/$p.done ] && echo finished)"; grep -E "stage |Error|error" "$OUT/syn_$p.log" | tail -3
  done
  if ls $SYN/{mdlm-sdtt,imdm,imsdtt-redi,imredi,k16,allmask}.done > /dev/null 2>&1; then
    (cd $SYN && T=95 gpu0 synthetic_eval.log python3 $WORK/benchmarks/synthetic_repro.py \
       --pipeline builtin:pipelines/synthetic_repro_gpu --device cuda --results-dir "$OUT")
    cat "$OUT/synthetic_eval.log" | tail -40
  fi
  ;;
k)
  kernel_tasks
  ;;
b)
  new_wheel_runs; baseline_runs; micro64_run
  ;;
h)
  new_wheel_runs; kernel_tasks; baseline_runs; micro64_run; profile_large_mb32
  ;;
c)
  task small-1gpu 90 bench new 1 small-1gpu owt.toml train.global_batch=128 train.micro_batch=32
  task small-4gpu 120 bench new 4 small-4gpu-fsdp owt.toml train.global_batch=512 train.micro_batch=32
  task large-1gpu 100 bench new 1 large-1gpu owt_large.toml train.global_batch=64 train.micro_batch=16
  task large-4gpu 140 bench new 4 large-4gpu-fsdp owt_large.toml train.global_batch=256 train.micro_batch=16
  task large-4gpu-base 140 bench base 4 large-4gpu-fsdp-base owt_large.toml train.global_batch=256 \
    train.micro_batch=16 parallelism.reshard_after_forward=false
  task small-4gpu-micro64 120 bench new 4 small-4gpu-micro64 owt.toml train.global_batch=512 train.micro_batch=64
  task small-1gpu-micro64 90 bench new 1 small-1gpu-micro64 owt.toml train.global_batch=128 train.micro_batch=64
  task hsdp 300 hsdp_train_resume
  ;;
x)
  G64="train.global_batch=64 train.micro_batch=16" G128="train.global_batch=128 train.micro_batch=32"
  task large-default 100 bench new 1 large-default owt_large.toml $G64
  TORCHINDUCTOR_MULTI_KERNEL=1 task large-multikernel 120 bench new 1 large-multikernel owt_large.toml $G64
  TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 task large-cdtuning 150 bench new 1 large-cdtuning owt_large.toml $G64
  WARMUP=2 STEPS=4 task large-batch512 120 bench new 1 large-batch512 owt_large.toml train.global_batch=512
  task small-default 90 bench new 1 small-default owt.toml $G128
  TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 task small-cdtuning 120 bench new 1 small-cdtuning owt.toml $G128
  WARMUP=3 STEPS=6 task small-batch512 100 bench new 1 small-batch512 owt.toml train.global_batch=512
  ;;
s)
  WARMUP=3 STEPS=6 task small-1gpu-g512 100 bench new 1 small-1gpu-g512 owt.toml
  WARMUP=3 STEPS=8 task small-4gpu-g512 120 bench new 4 small-4gpu-g512 owt.toml
  WARMUP=2 STEPS=4 task large-1gpu-g512 120 bench new 1 large-1gpu-g512 owt_large.toml
  WARMUP=3 STEPS=8 task large-4gpu-g512 140 bench new 4 large-4gpu-g512 owt_large.toml
  task large-1gpu-g64 100 bench new 1 large-1gpu-g64 owt_large.toml train.global_batch=64
  task large-4gpu-g256 140 bench new 4 large-4gpu-g256 owt_large.toml train.global_batch=256
  WARMUP=3 STEPS=8 task small-4gpu-g512-prev 120 bench prev 4 small-4gpu-g512-prev owt.toml
  task large-4gpu-g256-prev 140 bench prev 4 large-4gpu-g256-prev owt_large.toml train.global_batch=256
  ;;
e)
  WARMUP=2 STEPS=4 task large-1gpu-g512 120 bench new 1 large-1gpu-g512 owt_large.toml
  task large-1gpu-g64 100 bench new 1 large-1gpu-g64 owt_large.toml train.global_batch=64
  WARMUP=3 STEPS=8 task large-8gpu-fsdp 180 bench new 8 large-8gpu-fsdp owt_large.toml --checkpoint-stall
  WARMUP=3 STEPS=8 task large-8gpu-hsdp 180 bench new 8 large-8gpu-hsdp-2x4 owt_large.toml --checkpoint-stall \
    parallelism.replicate=2
  rm -rf /tmp/kill_resume   # a retry starts both runs afresh
  task kill-resume 420 gpu_all kill_resume.log python3 benchmarks/kill_resume.py --recipe "$REPO/recipes/owt_large.toml" \
    --nproc 8 --fail-step 5 --fail-rank 3 --max-loss-diff 1e-3 --label large-8gpu-fsdp --results-dir "$OUT" \
    --work-dir /tmp/kill_resume $DATA train.steps=8 checkpoint.every_steps=2 train.global_batch=128 train.micro_batch=16 \
    train.eval_batches=1
  task hsdp 300 hsdp_train_resume 4
  ;;
v)
  task gpu-tests 200 gpu0 gpu_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests
  task small-new 90 bench new 1 small-new owt.toml train.global_batch=128 train.micro_batch=32
  task small-prev 90 bench prev 1 small-prev owt.toml train.global_batch=128 train.micro_batch=32
  task large-new 100 bench new 1 large-new owt_large.toml train.global_batch=64 train.micro_batch=16
  task prof-large-1gpu 150 bench new 1 large-1gpu-profile owt_large.toml --profile 1 --trace "$OUT/large1.json" \
    train.global_batch=64 train.micro_batch=16
  ;;
d)
  for v in new prev; do
    task large-2gpu-$v 140 bench $v 2 large-2gpu-$v owt_large.toml train.global_batch=128 train.micro_batch=16
  done
  for v in new prev; do
    task small-2gpu-$v 120 bench $v 2 small-2gpu-$v owt.toml train.global_batch=256 train.micro_batch=32
  done
  task gpu-tests 200 gpu0 gpu_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests
  ;;
f)
  task kernel-residual-norm 90 gpu0 kernel_residual_norm.log python3 benchmarks/kernel_residual_norm.py --results-dir "$OUT"
  task gpu-tests 200 gpu0 gpu_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests
  for model in large:16 small:32; do   # size:micro-batch
    size=${model%:*} batch=${model#*:}
    task blocks-$size-new 100 gpu0 blocks_${size}_new.log python3 benchmarks/block_breakdown.py --size $size \
      --batch $batch --profile --results-dir "$OUT"
    WHEEL=prev task blocks-$size-prev 100 gpu0 blocks_${size}_prev.log python3 benchmarks/block_breakdown.py \
      --size $size --batch $batch --variants block --profile --results-dir "$OUT"
  done
  runs_against_prev
  ;;
r)
  runs_against_prev
  task kernel-residual-norm-small 60 gpu0 kernel_residual_norm_small.log python3 benchmarks/kernel_residual_norm.py \
    --batch 32 --d 768 --results-dir "$OUT"
  ;;
t)
  task gpu-tests 200 gpu0 gpu_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests
  task blocks-large-new 100 gpu0 blocks_large_new.log python3 benchmarks/block_breakdown.py --size large --batch 16 \
    --variants block --profile --results-dir "$OUT"
  task blocks-small-new 100 gpu0 blocks_small_new.log python3 benchmarks/block_breakdown.py --size small --batch 32 \
    --variants block --profile --results-dir "$OUT"
  ;;
w)
  task gpu-tests 200 gpu0 gpu_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests
  runs_against_prev
  ;;
y)
  for layout in rows transposed; do
    task wgrad-$layout 60 gpu0 wgrad_$layout.log python3 benchmarks/wgrad_accumulation.py --layout $layout --results-dir "$OUT"
  done
  for v in new prev; do
    task prof-large-$v 150 bench $v 1 large-$v-profile owt_large.toml --profile 1 --trace "$OUT/large_$v.json" \
      train.global_batch=64 train.micro_batch=16
  done
  ;;
z)
  CUBLASLT_LOG_MASK=5 task gelu-ops 60 gpu0 gelu_ops.log python3 -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_gelu_mlp.py -k "cublaslt_epilogues or run_the_references"
  if [ -e $DONE/gelu-ops ]; then
    task gelu-mlp 90 gpu0 gelu_mlp.log python3 benchmarks/gelu_mlp.py --results-dir "$OUT"
    task blocks-large-gelu 90 gpu0 blocks_large_gelu.log python3 benchmarks/block_breakdown.py --size large \
      --batch 16 --variants block,inductor_mlp --results-dir "$OUT"
    runs_against_prev
    task blocks-small-gelu 90 gpu0 blocks_small_gelu.log python3 benchmarks/block_breakdown.py --size small \
      --batch 32 --variants block,inductor_mlp --results-dir "$OUT"
    task gpu-tests 200 gpu0 gpu_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests
  fi
  ;;
m)
  task gpu-tests 200 gpu0 gpu_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests
  task blocks-large-copies 100 gpu0 blocks_large_copies.log python3 benchmarks/block_breakdown.py --size large \
    --batch 16 --variants kept_grads,weight_copies --results-dir "$OUT"
  runs_against_prev
  WARMUP=2 STEPS=4 task large-new-mb32-g512 160 bench new 1 large-new-mb32-g512 owt_large.toml train.micro_batch=32
  ;;
n)
  WARMUP=2 STEPS=4 task large-g512 160 bench new 1 large-g512 owt_large.toml train.micro_batch=16
  WARMUP=2 STEPS=4 task large-mb32-g512-cap 160 bench new 1 large-mb32-g512-cap78.5 owt_large.toml \
    --memory-cap-gib 78.5 train.micro_batch=32
  WARMUP=2 STEPS=4 task large-mb32-g512 160 bench new 1 large-mb32-g512 owt_large.toml train.micro_batch=32
  ;;
o)
  profile_large_mb32
  task blocks-large-mb32 100 gpu0 blocks_large_mb32.log python3 benchmarks/block_breakdown.py --size large --batch 32 \
    --variants block --profile --results-dir "$OUT"
  task copies-identity 60 gpu0 copies_identity.log python3 benchmarks/weight_copies_identity.py --results-dir "$OUT"
  ;;
j)
  task rn-tests 120 gpu0 rn_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernel_residual_norm.py
  task rn-large 90 gpu0 rn_large.log python3 benchmarks/kernel_residual_norm.py --batch 32 --results-dir "$OUT"
  task rn-small 90 gpu0 rn_small.log python3 benchmarks/kernel_residual_norm.py --batch 32 --d 768 --results-dir "$OUT"
  task rotary-large 90 gpu0 rotary_large.log python3 benchmarks/rotary_layouts.py --results-dir "$OUT"
  task rotary-small 90 gpu0 rotary_small.log python3 benchmarks/rotary_layouts.py --d 768 --heads 12 --results-dir "$OUT"
  ;;
l)
  task gpu-tests 200 gpu0 gpu_tests.log python3 -m pytest -q -p no:cacheprovider -m gpu tests
  for v in new prev; do
    WHEEL=$v task masked-loss-$v 60 gpu0 masked_loss_$v.log python3 benchmarks/kernel_masked_loss.py --results-dir "$OUT"
  done
  for v in new prev; do WARMUP=2 STEPS=4 task large-$v-g512 160 bench $v 1 large-$v-g512 owt_large.toml; done
  for v in new prev; do WARMUP=3 STEPS=6 task small-$v-g512 100 bench $v 1 small-$v-g512 owt.toml; done
  ;;
i)
  for round in 1 2; do
    for v in prev new; do WARMUP=3 STEPS=6 task small-$v-g512-$round 100 bench $v 1 small-$v-g512-$round owt.toml; done
  done
  ;;
q)
  task cublaslt-epilogues 150 gpu0 cublaslt_epilogues.log python3 benchmarks/cublaslt_epilogues.py --results-dir "$OUT"
  ;;
g)
  task blocks-large-kernels 200 gpu0 blocks_large_kernels.log python3 benchmarks/block_breakdown.py --size large \
    --batch 16 --profile --variants block,bf16_params,matmuls_attention,attention_cudnn,attention_flash,attention_efficient \
    --results-dir "$OUT"
  task blocks-large-autotune 300 gpu0 blocks_large_autotune.log python3 benchmarks/block_breakdown.py --size large \
    --batch 16 --profile --variants max_autotune --results-dir "$OUT"
  ;;
p)
  task prof-small-1gpu 150 bench new 1 small-1gpu-profile owt.toml --profile 2 --trace "$OUT/small1.json" train.global_batch=128 train.micro_batch=32
  task prof-small-4gpu 200 bench new 4 small-4gpu-profile owt.toml --profile 2 --trace "$OUT/small4.json" train.global_batch=512 train.micro_batch=32
  task prof-large-4gpu 200 bench new 4 large-4gpu-profile owt_large.toml --profile 1 train.global_batch=256 train.micro_batch=16
  ;;
esac
echo "== summary $PHASE"
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob(os.environ["OUT"] + "/*/*.json")):
    r = json.load(open(f)); m = r["metrics"]
    if r["benchmark"] == "train_throughput":
        print(f"{r['config']['label']:<18} ws {r['world_size']} {m['tokens_per_s_per_gpu']:>10,.0f} tok/s/GPU  "
              f"mfu {m['mfu']:.3f}  mem {m['peak_mem_gib']:.1f} GiB  wait {m['data_wait_share']:.4f}")
    elif r["benchmark"] != "synthetic_repro":
        print(r["benchmark"], {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()
                               if not isinstance(v, (dict, list))})
PY
cd "$OUT" && tar czf /tmp/$PHASE.tgz --exclude="$PHASE.tgz" . && find . -mindepth 1 -delete && mv /tmp/$PHASE.tgz .
for t in /tmp/traces/*.json; do   # traces (phases o, h) come back beside the archive, gzipped, if small enough
  [ -e "$t" ] || continue
  gzip -f "$t" && [ "$(stat -c %s "$t.gz")" -lt $((15 << 20)) ] && cp "$t.gz" "$OUT/" || echo "$t.gz: not kept"
done
