"""The DiT denoiser of docs/method.md section 7: untied token embedding (+ the IMDM mask state),
pre-norm adaLN-Zero blocks with rotary attention (bidirectional; causal for the autoregressive
model), an adaLN-modulated output head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imdm import rng
from imdm.kernels.backend import kernel_chosen
from imdm.kernels.gelu_mlp import gelu_mlp
from imdm.kernels.masked_loss import fused_masked_nll
from imdm.kernels.precision import compute_dtype
from imdm.kernels.residual_norm import residual_norm_modulate
from imdm.models.attention import SelfAttention
from imdm.models.gemm_grad_linear import GemmGradLinear
from imdm.models.layers import LayerNormNoBias, TimestepEmbedder, rotary_tables
from imdm.models.mask_state import MaskStateConfig, MaskStateEmbedding
from imdm.devices import host_to_device


@dataclass(frozen=True)
class DiTConfig:
    vocab_size: int                 # V outputs, the mask token included
    mask_id: int
    d_model: int
    n_blocks: int
    n_heads: int
    cond_dim: int = 128
    dropout: float = 0.1
    attention: str = "sdpa"
    softcap: float = 0.0
    qk_norm: bool = False
    vocab_pad_multiple: int = 1
    time_conditioning: bool = False
    causal: bool = False            # causal attention (the autoregressive model)
    kernels: str = "auto"           # residual + LayerNorm kernel and MLP epilogue GEMMs: auto (on CUDA), triton, eager
    mask_state: MaskStateConfig | None = None   # None: plain MDLM (as_mdlm)

    @property
    def padded_vocab(self) -> int:
        m = self.vocab_pad_multiple
        return (self.vocab_size + m - 1) // m * m


class BlockMLP(nn.Sequential):
    """Linear(d, 4d) -> GELU(tanh) -> Linear(4d, d) (nn.Sequential's children and state dict);
    with kernels other than eager (auto: on CUDA) it runs as imdm.kernels.gelu_mlp, GELU inside
    the matmuls' epilogues, adding the weight gradients into switched-on GemmGradLinear's `.grad`
    (and computing with their frozen weight copies, if any)."""

    def __init__(self, d: int, kernels: str):
        super().__init__(GemmGradLinear(d, 4 * d), nn.GELU(approximate="tanh"), GemmGradLinear(4 * d, d))
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, _, down = self
        if not kernel_chosen(self.kernels, x):
            return super().forward(x)
        return gelu_mlp(x, up.weight, up.bias, down.weight, down.bias, up.kept_grad(), down.kept_grad(),
                        up.weight_copy, down.weight_copy)


class DiTBlock(nn.Module):
    """Pre-norm adaLN-Zero block whose last residual branch is left pending: the next block (or
    the head) adds it in the same kernel pass as its LayerNorm (imdm.kernels.residual_norm), so
    the float32 stream is read and written once per branch."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1 = LayerNormNoBias(d)
        self.attn = SelfAttention(d, cfg.n_heads, cfg.attention, cfg.softcap, cfg.qk_norm, cfg.causal)
        self.norm2 = LayerNormNoBias(d)
        self.mlp = BlockMLP(d, cfg.kernels)
        self.adaLN = nn.Linear(cfg.cond_dim, 6 * d)
        nn.init.zeros_(self.adaLN.weight)
        nn.init.zeros_(self.adaLN.bias)
        self.dropout, self.kernels = cfg.dropout, cfg.kernels

    def forward(self, x, c, cos, sin, seeds=None, pending=None, cache=None):
        """(x, pending): `pending` = (branch, gate, dropout seed) is the residual branch still to
        add, x + gate * dropout(branch); the previous block's comes in (None for the first
        block). `seeds` [2] int64 seeds the dropout of this block's two branches (None: none).
        `cache`: this block's keys and values (SelfAttention.forward), or None."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(c).chunk(6, dim=1)
        seed_a, seed_m = (None, None) if seeds is None else (seeds[0:1], seeds[1:2])
        x, h = add_norm_modulate(x, pending or (None, None, None), self.norm1, shift_a, scale_a, self.dropout,
                                 self.kernels)
        x, h = add_norm_modulate(x, (self.attn(h, cos, sin, cache), gate_a, seed_a), self.norm2, shift_m, scale_m,
                                 self.dropout, self.kernels)
        return x, (self.mlp(h), gate_m, seed_m)


def add_norm_modulate(x, branch, norm: LayerNormNoBias, shift, scale, dropout: float, kernels: str):
    """(x + gate * dropout(y), modulate(norm(that), shift, scale)) for branch = (y, gate, seed),
    the second in autocast's dtype when autocast is on (the next matmul's input)."""
    y, gate, seed = branch
    return residual_norm_modulate(x, y, gate, seed, dropout, norm.weight, shift, scale, compute_dtype(x),
                                  backend=kernels)


class OutputHead(nn.Module):
    """LayerNorm -> adaLN shift/scale -> Linear(d, V) with bias, zero-initialised; rows beyond
    V (padding for fast matmuls) are sliced off. Can return the weighted SUBS NLL instead of
    logits (the fused loss runs here, where FSDP2 has gathered the head's weights)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.vocab_size = cfg.vocab_size
        self.mask_id = cfg.mask_id
        self.dropout, self.kernels = cfg.dropout, cfg.kernels
        self.norm = LayerNormNoBias(cfg.d_model)
        self.adaLN = nn.Linear(cfg.cond_dim, 2 * cfg.d_model)
        self.linear = nn.Linear(cfg.d_model, cfg.padded_vocab)
        for p in (self.adaLN.weight, self.adaLN.bias, self.linear.weight, self.linear.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, c: torch.Tensor, pending=None, select=None, targets=None,
                row_weight=None) -> torch.Tensor:
        """Logits [B, L, V], or [N, V] at the positions `select` = (batch_idx, pos_idx), after
        adding the last block's `pending` residual branch. With `targets` and `row_weight` [N]
        (given with `select`): sum_i row_weight_i * -log x_theta[targets_i] under SUBS, a 0-dim
        float32 tensor, from the fused kernel (no logits)."""
        shift, scale = self.adaLN(c).chunk(2, dim=1)
        _, h = add_norm_modulate(x, pending or (None, None, None), self.norm, shift, scale, self.dropout,
                                 self.kernels)
        if select is not None:
            h = h[select]
        if targets is not None:
            return fused_masked_nll(h, self.linear.weight, self.linear.bias, targets, row_weight, self.mask_id,
                                    self.vocab_size)
        logits = self.linear(h)
        if self.linear.out_features == self.vocab_size:
            return logits
        return logits[..., : self.vocab_size].contiguous()   # a copy: FSDP2 must not return a view


class KVCache:
    """The keys and values of the positions a causal DiT has read, one dict per block: a forward
    given the cache reads only the next tokens, at the positions after the cached ones."""

    def __init__(self, n_blocks: int):
        self.blocks = [{} for _ in range(n_blocks)]
        self.length = 0


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
        nn.init.kaiming_uniform_(self.token_embed, a=math.sqrt(5))
        self.mask_state = MaskStateEmbedding(cfg.mask_state, cfg.d_model) if cfg.mask_state else None
        self.time_embed = TimestepEmbedder(cfg.cond_dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_blocks))
        self.head = OutputHead(cfg)

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor | None = None,
                sigma: torch.Tensor | None = None, select=None, noise_index=None, targets=None,
                row_weight=None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits before SUBS: [B, L, V], or [N, V] at `select` = (batch_idx, pos_idx) (the loss
        scores masked rows only, so the head never sees the rest); with `targets` and
        `row_weight` [N] as well, the weighted NLL sum of OutputHead.forward. `noise` is the mask-state
        base noise (required for IMDM): [B, L, noise_width] for every position, or [M' >= M,
        noise_width] for the M mask positions listed in `noise_index` (the MLP then runs on
        those rows only; rows beyond M are padding, computed and dropped). `sigma` is the noise
        level (time-conditioned models only). `cache` (causal models): `tokens` continue the
        cached positions, and their keys and values are added to the cache."""
        x = F.embedding(tokens, self.token_embed).float()   # residual stream in float32
        if self.mask_state is not None:
            if noise is None:
                raise ValueError("this model has mask states (IMDM): pass the mask-state noise")
            if noise_index is not None:
                states = self.mask_state(noise)[: noise_index[0].shape[0]]
                x = x.index_put(noise_index, states.float(), accumulate=True)
            else:
                is_mask = (tokens == self.cfg.mask_id).unsqueeze(-1)
                x = x + torch.where(is_mask, self.mask_state(noise), 0.0)
        if sigma is None or not self.cfg.time_conditioning:
            sigma = torch.zeros(tokens.shape[0], device=tokens.device)
        c = F.silu(self.time_embed(sigma))
        offset = 0 if cache is None else cache.length
        cos, sin = rotary_tables(offset + tokens.shape[1], self.cfg.d_model // self.cfg.n_heads, tokens.device)
        cos, sin = cos[offset:], sin[offset:]
        seeds, pending = self._dropout_seeds(tokens.device), None
        for i, block in enumerate(self.blocks):
            x, pending = block(x, c, cos, sin, None if seeds is None else seeds[i], pending,
                               None if cache is None else cache.blocks[i])
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.head(x, c, pending, select, targets, row_weight)

    def _dropout_seeds(self, device: torch.device) -> torch.Tensor | None:
        """[n_blocks, 2] int64 seeds of the residual dropout masks when training with dropout:
        derived from one draw of torch's CPU generator (which the trainer seeds per micro-batch),
        so the masks are reproducible and a resume replays them."""
        if not (self.training and self.cfg.dropout > 0):
            return None
        base = torch.randint(0, 1 << 62, (1,))
        seeds = rng.derive_seed(base, torch.arange(2 * self.cfg.n_blocks), rng.STREAM_RESIDUAL_DROPOUT)
        return host_to_device(seeds.view(-1, 2), device)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the head's padding rows excluded."""
    total = sum(p.numel() for p in model.parameters())
    if isinstance(model, DiT):
        total -= (model.cfg.padded_vocab - model.cfg.vocab_size) * (model.cfg.d_model + 1)
    return total
