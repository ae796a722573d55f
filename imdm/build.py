"""Turn a validated Recipe into objects: dataset, model, algorithm, sampler settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imdm.algorithms.masked_diffusion import ROW_BUCKET_CUDA, MaskedDiffusion
from imdm.algorithms.redi import Rectification
from imdm.algorithms.sdtt import Distillation, Rounds
from imdm.data.synthetic import SyntheticRepeat
from imdm.diffusion.schedule import make_schedule
from imdm.models.dit import DiT, DiTConfig
from imdm.models.mask_state import MaskStateConfig
from imdm.recipe import Recipe
from imdm.sampling.ancestral import SamplerSettings

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
    m, a = recipe.model, recipe.algorithm
    d_model, n_blocks, n_heads = m.dims()
    mask_state = None
    if a.name == "imdm":
        mask_state = MaskStateConfig(a.noise_dim, a.noise_kind, a.noise_scale, a.num_masks)
    return DiTConfig(vocab_size=vocab_size, mask_id=mask_id, d_model=d_model, n_blocks=n_blocks,
                     n_heads=n_heads, cond_dim=m.cond_dim, dropout=m.dropout, attention=m.attention,
                     softcap=m.softcap, qk_norm=m.qk_norm, vocab_pad_multiple=m.vocab_pad_multiple,
                     time_conditioning=a.time_conditioning, mask_state=mask_state)


def build_model(recipe: Recipe, vocab_size: int, mask_id: int, device: torch.device | str = "cpu") -> DiT:
    """The DiT with weights initialised from the run seed (identical on every rank)."""
    cfg = model_config(recipe, vocab_size, mask_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.run.seed * 1_000_003 + STREAM_INIT)
        model = DiT(cfg)
    return model.to(device)


def build_algorithm(recipe: Recipe, mask_id: int, device: torch.device | str = "cpu") -> MaskedDiffusion:
    a = recipe.algorithm
    cuda = torch.device(device).type == "cuda"
    return MaskedDiffusion(make_schedule(a.noise_schedule, a.schedule_eps), mask_id, recipe.run.seed, a.antithetic,
                           fused_loss=cuda, row_bucket=ROW_BUCKET_CUDA if cuda else 1)


def build_distillation(recipe: Recipe, base: MaskedDiffusion, teacher: torch.nn.Module) -> Distillation:
    """SDTT / IM-SDTT around `base` with `teacher`, a frozen model built like the student."""
    d = recipe.distill
    return Distillation(base, teacher, Rounds(d.round_steps, d.teacher_steps), d.divergence)


def build_rectification(recipe: Recipe, base: MaskedDiffusion) -> Rectification:
    """ReDi / IM-ReDi around `base`: the loss on coupling batches."""
    return Rectification(base, recipe.algorithm.ignore_seed)


def sampler_settings(recipe: Recipe, steps: int) -> SamplerSettings:
    s = recipe.sampling
    posterior = s.posterior if s.posterior != "auto" else recipe.algorithm.name
    return SamplerSettings(steps=steps, posterior=posterior, fix_eps=s.fix_eps,
                           cached=s.cached and not recipe.algorithm.time_conditioning,
                           temperature=s.temperature, top_p=s.top_p, kernel=s.kernel)
