"""Build the model a training run uses: initialised from the seed on the CPU (identical for
every layout), then activation checkpointing, per-block compile, the device, and FSDP2/HSDP
sharding when several ranks train."""

from __future__ import annotations

import torch

from imdm.build import build_model
from imdm.parallel.compile import apply_activation_checkpointing, compile_blocks
from imdm.parallel.distributed import DistInfo
from imdm.parallel.fsdp import apply_fsdp
from imdm.parallel.mesh import data_parallel_mesh
from imdm.recipe import Recipe


def compile_enabled(recipe: Recipe, device: torch.device) -> bool:
    return recipe.parallelism.compile == "on" or (recipe.parallelism.compile == "auto" and device.type == "cuda")


def training_model(recipe: Recipe, vocab_size: int, mask_id: int, dist: DistInfo) -> torch.nn.Module:
    p = recipe.parallelism
    model = build_model(recipe, vocab_size, mask_id, "cpu")
    apply_activation_checkpointing(model, p.activation_checkpointing, p.ac_every)
    if compile_enabled(recipe, dist.device):
        compile_blocks(model)
    model.to(dist.device)
    if dist.world_size > 1:
        mesh = data_parallel_mesh(dist.device.type, dist.world_size, p.replicate)
        param_dtype = torch.bfloat16 if p.param_dtype == "bf16" and dist.device.type == "cuda" else None
        apply_fsdp(model, mesh, param_dtype, p.reshard_after_forward)
    return model
