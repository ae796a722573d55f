"""Turn a validated Recipe into objects: dataset, vocabulary, model, and through the algorithm
registry the process, the training objective and the sampler settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imdm.algorithms import registry
from imdm.algorithms.protocol import Objective, Process
from imdm.data.synthetic import SyntheticRepeat
from imdm.models.dit import DiT, DiTConfig
from imdm.recipe import Recipe

STREAM_INIT = 11


def build_dataset(recipe: Recipe, split: str = "train", is_main: bool = True):
    """The recipe's data split: the synthetic task, or packed text sequences (anything with
    __len__, seq_len, mask_id, model_vocab and rows(index) -> (tokens, valid))."""
    d = recipe.data
    if d.source == "synthetic":
        return SyntheticRepeat(d.vocab_size, d.seq_len, d.num_sequences, d.seed)
    if d.source == "couplings":
        from imdm.data.coupling_store import open_coupling_set
        return open_coupling_set(recipe)
    from imdm.data.text_dataset import open_text_dataset
    return open_text_dataset(recipe, split, is_main)


def has_validation_split(recipe: Recipe) -> bool:
    d = recipe.data
    return d.source in ("synthetic", "hub") or (d.source == "local" and d.holdout_documents > 0)


@dataclass(frozen=True)
class Vocabulary:
    """What the model and sampler need of the data: outputs, mask id, and a decoder for text."""
    model_vocab: int
    mask_id: int
    tokenizer: object | None = None


def data_origin(recipe: Recipe) -> str:
    """data.source, or for a coupling set the source its training sequences came from."""
    if recipe.data.source != "couplings":
        return recipe.data.source
    return build_dataset(recipe).manifest["data"]["source"]


def build_vocabulary(recipe: Recipe) -> Vocabulary:
    if recipe.data.source == "couplings":
        m = build_dataset(recipe).manifest
        tok = None
        if m["tokenizer"] is not None:
            from imdm.data.tokenizer import load_tokenizer
            tok = load_tokenizer(m["tokenizer"]["kind"], m["tokenizer"]["path"])
        return Vocabulary(m["model_vocab"], m["mask_id"], tok)
    if recipe.data.source == "synthetic":
        synthetic = build_dataset(recipe)
        return Vocabulary(synthetic.model_vocab, synthetic.mask_id)
    from imdm.data.tokenizer import load_tokenizer
    tok = load_tokenizer(recipe.tokenizer.kind, recipe.tokenizer.path)
    return Vocabulary(tok.vocab_size, tok.mask_id, tok)


def model_config(recipe: Recipe, vocab_size: int, mask_id: int) -> DiTConfig:
    """The network's configuration: the recipe's [model], and what the algorithm sets."""
    m, a = recipe.model, recipe.algorithm
    d_model, n_blocks, n_heads = m.dims()
    return DiTConfig(vocab_size=vocab_size, mask_id=mask_id, d_model=d_model, n_blocks=n_blocks,
                     n_heads=n_heads, cond_dim=m.cond_dim, dropout=m.dropout, attention=m.attention,
                     softcap=m.softcap, qk_norm=m.qk_norm, vocab_pad_multiple=m.vocab_pad_multiple,
                     time_conditioning=a.time_conditioning, **registry.process_spec(recipe).model_options(recipe))


def build_model(recipe: Recipe, vocab_size: int, mask_id: int, device: torch.device | str = "cpu") -> DiT:
    """The DiT with weights initialised from the run seed (identical on every rank)."""
    cfg = model_config(recipe, vocab_size, mask_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.run.seed * 1_000_003 + STREAM_INIT)
        model = DiT(cfg)
    return model.to(device)


def build_process(recipe: Recipe, mask_id: int, device: torch.device | str = "cpu") -> Process:
    """The recipe's generative process (algorithm.name): sampling and its own bound."""
    return registry.process_spec(recipe).build(registry.ProcessContext(recipe, mask_id, device))


def build_objective(recipe: Recipe, process: Process, make_teacher) -> Objective:
    """The recipe's training objective (algorithm.objective) around `process`; `make_teacher()`
    builds a frozen model like the student, for objectives that distil."""
    spec = registry.process_spec(recipe)
    return registry.objective_spec(recipe).build(registry.ObjectiveContext(recipe, process, spec, make_teacher))


def sampler_settings(recipe: Recipe, steps: int):
    """The settings the process's `sample` takes for `steps` reverse steps."""
    return registry.process_spec(recipe).sampler_settings(recipe, steps)


def autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """bf16 under `train.precision` bf16, or auto on a GPU; None: no autocast."""
    p = recipe.train.precision
    if p == "bf16" or (p == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None
