"""The autoregressive baseline (docs/method.md section 5), registered as the process `ar`: the
DiT's blocks with causal attention and no time conditioning, trained by next-token prediction.
The start symbol is the mask id (the model's extra token, never a target): the network reads
[mask, x_0 .. x_{L-2}] and position i predicts x_i. Its loss is the exact NLL, so the
validation NELBO is the model's perplexity; it also scores text offline (a judge)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imdm import rng
from imdm.algorithms.masked_diffusion import ROW_BUCKET_CUDA, padded_nonzero
from imdm.algorithms.protocol import Objective
from imdm.algorithms.registry import ProcessContext, ProcessSpec, register_process
from imdm.devices import host_to_device
from imdm.diffusion.categorical import categorical_from_uniform, shape_probs
from imdm.diffusion.nelbo import masked_token_nll
from imdm.diffusion.subs import without_mask
from imdm.models.dit import DiT, KVCache
from imdm.recipe import Recipe
from imdm.sampling.ancestral import SampleResult


@dataclass(frozen=True)
class NextTokenSettings:
    """How the sampler draws each token; a step count means nothing to it."""
    temperature: float = 1.0
    top_p: float = 1.0
    noise_removal: str = "ancestral"   # "greedy": the argmax at every position


class Autoregressive(Objective):
    """Next-token loss and left-to-right sampler of a causal DiT."""

    def __init__(self, mask_id: int, fused_loss: bool = False, row_bucket: int = 1):
        self.mask_id = mask_id
        self.fused_loss = fused_loss      # the head's fused matmul + cross-entropy (MaskedDiffusion's)
        self.row_bucket = row_bucket      # scored rows padded to a multiple of it (row_indices)

    def inputs(self, x0: torch.Tensor) -> torch.Tensor:
        """[start, x_0 .. x_{L-2}]: x0 shifted right behind the start symbol (the mask id)."""
        return torch.cat([torch.full_like(x0[:, :1], self.mask_id), x0[:, :-1]], dim=1)

    def loss(self, model: DiT, x0: torch.Tensor, global_index: torch.Tensor, global_batch: int, step: int,
             seed: int | None = None, valid: torch.Tensor | None = None, **extras) -> torch.Tensor:
        """Sum over the valid positions i of -log p(x_i | x_<i) (the mask never predicted); a
        0-dim float32 tensor. Deterministic: `seed` and the batch position play no part. The
        trainer divides by `loss_count`, the number of valid targets (Objective's default)."""
        valid = torch.ones(x0.shape, dtype=torch.bool) if valid is None else valid.cpu()
        rows, n = padded_nonzero(valid, self.row_bucket)
        rows = tuple(host_to_device(r, x0.device) for r in rows)
        targets = x0[rows]
        weights = torch.ones(targets.shape, dtype=torch.float32, device=x0.device)
        weights[n:] = 0.0           # padding rows (row_bucket) score nothing
        z = self.inputs(x0)
        if self.fused_loss:
            return model(z, select=rows, targets=targets, row_weight=weights)
        return (weights * masked_token_nll(model(z, select=rows), targets, self.mask_id)).sum()

    @torch.no_grad()
    def sample(self, model: DiT, settings: NextTokenSettings, seeds: torch.Tensor, seq_len: int,
               prefix: torch.Tensor | None = None, start: torch.Tensor | None = None,
               t_start: float | torch.Tensor = 1.0, noise_seeds: torch.Tensor | None = None) -> SampleResult:
        """Left to right from the start symbol, reading each new token once (a key-value
        cache): token i is a float64-exact draw from p(x_i | x_<i) (temperature, top-p) with the
        uniform of (seeds, i), or its argmax with noise_removal = "greedy". `prefix` [B, P]
        fixes the first P tokens (NFE = L - P). There are no mask states (`noise_seeds` is
        unused), and a partially masked `start` cannot be completed causally: refused."""
        if start is not None:
            raise ValueError("an autoregressive model continues a prefix; it cannot complete a partially "
                             "masked sequence (start)")
        batch, device = len(seeds), seeds.device
        tokens = torch.full((batch, 1), self.mask_id, dtype=torch.int64, device=device)
        if prefix is not None:
            tokens = torch.cat([tokens, prefix.to(device=device, dtype=torch.int64)], dim=1)
        was_training = model.training
        model.eval()
        try:
            cache, feed, nfe = KVCache(len(model.blocks)), tokens, 0
            for i in range(tokens.shape[1] - 1, seq_len):
                last = (torch.arange(batch, device=device), torch.full((batch,), feed.shape[1] - 1, device=device))
                logits = model(feed, select=last, cache=cache)
                nfe += 1
                feed = self.next_token(logits, settings, seeds, i)[:, None]
                tokens = torch.cat([tokens, feed], dim=1)
        finally:
            model.train(was_training)
        return SampleResult(tokens[:, 1:], nfe)

    def next_token(self, logits: torch.Tensor, settings: NextTokenSettings, seeds: torch.Tensor, position: int
                   ) -> torch.Tensor:
        """Token [B] at `position` from its logits [B, V]: the greedy argmax, or the seeded draw."""
        log_probs = torch.log_softmax(without_mask(logits, self.mask_id), dim=-1)
        if settings.noise_removal == "greedy":
            return log_probs.argmax(dim=-1)
        probs = shape_probs(log_probs, settings.temperature, settings.top_p)
        u = rng.uniform53(seeds, torch.full_like(seeds, position), rng.STREAM_NEXT_TOKEN)
        return categorical_from_uniform(probs, u)


def _build(ctx: ProcessContext) -> Autoregressive:
    cuda = torch.device(ctx.device).type == "cuda"
    return Autoregressive(ctx.mask_id, fused_loss=cuda, row_bucket=ROW_BUCKET_CUDA if cuda else 1)


def _sampler_settings(recipe: Recipe, steps: int) -> NextTokenSettings:
    s = recipe.sampling
    return NextTokenSettings(s.temperature, s.top_p, s.noise_removal)


def _check(recipe: Recipe) -> list[str]:
    a, s, problems = recipe.algorithm, recipe.sampling, []
    if a.time_conditioning:
        problems.append("algorithm.time_conditioning: an autoregressive model has no noise level to condition on")
    if s.posterior != "auto":
        problems.append(f"sampling.posterior: {s.posterior!r} is a diffusion posterior; algorithm.name 'ar' has "
                        "none (leave it 'auto')")
    if s.draws != "seeded":
        problems.append("sampling.draws: 'eps' draws from mask states; algorithm.name 'ar' has none")
    return problems


register_process(ProcessSpec(
    "ar", "autoregressive (AR): the same blocks with causal attention, next-token loss; start symbol = mask id",
    _build, _sampler_settings, model_options=lambda recipe: {"causal": True}, family="autoregressive",
    check=_check))
