"""Start a run from another run's weights, found by run name: the EMA weights of its newest
complete checkpoint. An MDLM run loads into an IMDM model (the mask-state keys are new and
keep their initialisation, whose zero last layer makes IMDM compute what MDLM computes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from imdm.models.dit import DiTConfig
from imdm.run_loading import load_named_run
from imdm.parallel.checkpoint import CheckpointError
from imdm.parallel.ema import named_parameters

SHAPE_FIELDS = ("d_model", "n_blocks", "n_heads", "cond_dim", "padded_vocab", "qk_norm")


@dataclass(frozen=True)
class InitSource:
    step: int
    new_keys: tuple[str, ...]     # parameters the source lacks (kept at their initialisation)


def check_compatible(source: DiTConfig, target: DiTConfig, run_name: str) -> None:
    """Raise unless `source` weights fit a model of config `target` (MDLM -> IMDM allowed)."""
    if (source.vocab_size, source.mask_id) != (target.vocab_size, target.mask_id):
        raise CheckpointError(f"init.from_run: run '{run_name}' has a vocabulary of {source.vocab_size} outputs "
                              f"(mask id {source.mask_id}); this recipe's model has {target.vocab_size} "
                              f"(mask id {target.mask_id})")
    differ = [f"{f} {getattr(source, f)} vs {getattr(target, f)}" for f in SHAPE_FIELDS
              if getattr(source, f) != getattr(target, f)]
    if differ:
        raise CheckpointError(f"init.from_run: run '{run_name}' has another model shape ({'; '.join(differ)})")
    if source.mask_state is not None and source.mask_state != target.mask_state:
        raise CheckpointError(f"init.from_run: run '{run_name}' has mask states {source.mask_state}; this recipe's "
                              f"model has {target.mask_state} (an IMDM run loads only into the same IMDM)")


def load_ema_weights(run_name: str, output_dir: str | Path, model: nn.Module) -> InitSource:
    """Load the EMA weights of the newest complete checkpoint of run `output_dir/run_name` into
    `model` (a DiT, plain or FSDP-sharded; every rank calls this). Raises CheckpointError when
    the run or its checkpoint is missing or the model's vocabulary or shape differs."""
    source = load_named_run(output_dir, run_name, "init.from_run", torch.device("cpu"))
    check_compatible(source.model.cfg, model.cfg, run_name)
    weights, names = source.model.state_dict(), set(named_parameters(model))
    new, unexpected = sorted(names - set(weights)), sorted(set(weights) - names)
    if unexpected or any(not k.startswith("mask_state.") for k in new):
        raise CheckpointError(f"init.from_run: run '{run_name}' does not fit this model (missing {new[:5]}, "
                              f"unexpected {unexpected[:5]})")
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    return InitSource(source.step, tuple(new))
