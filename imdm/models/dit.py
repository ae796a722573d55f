"""The DiT denoiser of SPEC section 7: untied token embedding (+ the IMDM mask state),
pre-norm adaLN-Zero blocks with rotary bidirectional attention, an adaLN-modulated output head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imdm.kernels.masked_loss import fused_masked_nll
from imdm.models.attention import SelfAttention
from imdm.models.layers import LayerNormNoBias, TimestepEmbedder, modulate, rotary_tables
from imdm.models.mask_state import MaskStateConfig, MaskStateEmbedding


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
    mask_state: MaskStateConfig | None = None   # None: plain MDLM (as_mdlm)

    @property
    def padded_vocab(self) -> int:
        m = self.vocab_pad_multiple
        return (self.vocab_size + m - 1) // m * m


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1 = LayerNormNoBias(d)
        self.attn = SelfAttention(d, cfg.n_heads, cfg.attention, cfg.softcap, cfg.qk_norm)
        self.norm2 = LayerNormNoBias(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.adaLN = nn.Linear(cfg.cond_dim, 6 * d)
        nn.init.zeros_(self.adaLN.weight)
        nn.init.zeros_(self.adaLN.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, c, cos, sin):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(c)[:, None].chunk(6, dim=2)
        x = x + gate_a * self.dropout(self.attn(modulate(self.norm1(x), shift_a, scale_a), cos, sin))
        return x + gate_m * self.dropout(self.mlp(modulate(self.norm2(x), shift_m, scale_m)))


class OutputHead(nn.Module):
    """LayerNorm -> adaLN shift/scale -> Linear(d, V) with bias, zero-initialised; rows beyond
    V (padding for fast matmuls) are sliced off. Can return the weighted SUBS NLL instead of
    logits (the fused loss runs here, where FSDP2 has gathered the head's weights)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.vocab_size = cfg.vocab_size
        self.mask_id = cfg.mask_id
        self.norm = LayerNormNoBias(cfg.d_model)
        self.adaLN = nn.Linear(cfg.cond_dim, 2 * cfg.d_model)
        self.linear = nn.Linear(cfg.d_model, cfg.padded_vocab)
        for p in (self.adaLN.weight, self.adaLN.bias, self.linear.weight, self.linear.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, c: torch.Tensor, select=None, targets=None, row_weight=None) -> torch.Tensor:
        """Logits [B, L, V], or [N, V] at the positions `select` = (batch_idx, pos_idx). With
        `targets` and `row_weight` [N] (given with `select`): sum_i row_weight_i * -log
        x_theta[targets_i] under SUBS, a 0-dim float32 tensor, from the fused kernel (no logits)."""
        shift, scale = self.adaLN(c)[:, None].chunk(2, dim=2)
        h = modulate(self.norm(x), shift, scale)
        if select is not None:
            h = h[select]
        if targets is not None:
            if torch.is_autocast_enabled(h.device.type):   # the matmuls in autocast's dtype, as self.linear's
                h = h.to(torch.get_autocast_dtype(h.device.type))
            return fused_masked_nll(h, self.linear.weight, self.linear.bias, targets, row_weight, self.mask_id,
                                    self.vocab_size)
        logits = self.linear(h)
        if self.linear.out_features == self.vocab_size:
            return logits
        return logits[..., : self.vocab_size].contiguous()   # a copy: FSDP2 must not return a view


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
                row_weight=None) -> torch.Tensor:
        """Logits before SUBS: [B, L, V], or [N, V] at `select` = (batch_idx, pos_idx) (the loss
        scores masked rows only, so the head never sees the rest); with `targets` and
        `row_weight` [N] as well, the weighted NLL sum of OutputHead.forward. `noise` is the mask-state
        base noise (required for IMDM): [B, L, noise_width] for every position, or [M' >= M,
        noise_width] for the M mask positions listed in `noise_index` (the MLP then runs on
        those rows only; rows beyond M are padding, computed and dropped). `sigma` is the noise
        level (time-conditioned models only)."""
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
        cos, sin = rotary_tables(tokens.shape[1], self.cfg.d_model // self.cfg.n_heads, tokens.device)
        for block in self.blocks:
            x = block(x, c, cos, sin)
        return self.head(x, c, select, targets, row_weight)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the head's padding rows excluded."""
    total = sum(p.numel() for p in model.parameters())
    if isinstance(model, DiT):
        total -= (model.cfg.padded_vocab - model.cfg.vocab_size) * (model.cfg.d_model + 1)
    return total
