"""FSDP2 for the DiT: one `fully_shard` unit per block, one for the output head, and the root
for the rest (embeddings, mask-state MLP, time embedder). Blocks gather their parameters in
`param_dtype` (bf16 by default: their matmuls run in bf16 under autocast anyway, but their
LayerNorm weights are then applied rounded to bf16; `param_dtype = fp32` keeps them float32,
as on one GPU). The root and the head always gather in float32: the token embedding and the
mask-state parameters feed the float32 residual stream directly, and the fused loss accumulates
the head's weight gradient in float32, as on one GPU. Gradients are reduced in float32 and
averaged over the data-parallel ranks (FSDP2's default, which works on NCCL and gloo), so the
loop scales its loss by the world size to obtain the gradient of the global-token-count-normalised
loss. Forward inputs are not cast: the residual stream, the mask-state noise and the loss weights
stay float32, as on one GPU (autocast decides the matmul dtype)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

try:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # torch < 2.6 kept FSDP2 under _composable
    from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype | None,
               reshard_after_forward: bool) -> nn.Module:
    """Shard `model` (a DiT) in place over `mesh` and return it."""
    blocks = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    float32 = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=blocks, reshard_after_forward=reshard_after_forward)
    fully_shard(model.head, mesh=mesh, mp_policy=float32, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=float32, reshard_after_forward=reshard_after_forward)
    return model


def reshard_all(model: nn.Module) -> None:
    """Free the parameters a forward without backward (evaluation) left gathered: FSDP2 keeps
    the root unit's, and every unit's when reshard_after_forward is off, until a backward. Until
    then the module holds full parameters instead of its shards. A no-op without FSDP."""
    for module in model.modules():
        if hasattr(module, "reshard") and hasattr(module, "set_requires_gradient_sync"):
            module.reshard()
