"""Per-block activation checkpointing and torch.compile (fullgraph), applied before sharding
as torchtitan does; `Module.compile` keeps parameter names, so checkpoints do not change."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 2) -> None:
    """'full': recompute every block in backward; 'selective': every `every`-th block; 'none'."""
    if mode == "none":
        return
    for i, block in enumerate(model.blocks):
        if mode == "full" or i % every == 0:
            model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=True)


def compile_blocks(model: nn.Module) -> None:
    """Compile each transformer block on its own (fullgraph): two graphs per mode and shape, one for
    the first block (no pending residual branch comes in) and one reused by every other block."""
    for block in model.blocks:
        block.compile(fullgraph=True)
