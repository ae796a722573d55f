#!/usr/bin/env bash
# Multi-node training under SLURM: one torchrun per node, c10d rendezvous on the first node.
#   sbatch --nodes=2 --gpus-per-node=8 tools/slurm_train.sh recipes/owt_large.toml parallelism.replicate=2
# HSDP: parallelism.replicate = number of nodes shards within each node and replicates across them.
# A job requeued after preemption resumes from the newest complete checkpoint of the run.
#SBATCH --job-name=imdm
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=TERM@120
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
srun --kill-on-bad-exit=1 python -m torch.distributed.run \
  --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$HEAD:29500" --rdzv_id="$SLURM_JOB_ID" \
  --max-restarts="${MAX_RESTARTS:-3}" \
  -m imdm train "$@"
