"""Multi-head attention with rotary positions, bidirectional or causal (each position attends to
itself and those before it: the autoregressive model), and a choice of kernels: PyTorch SDPA
with an explicit backend priority, the flash-attn package, or plain math (the only PyTorch path
that supports logit soft-capping)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from imdm.models.gemm_grad_linear import GemmGradLinear
from imdm.models.layers import apply_rotary

SDPA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                 SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _math_attention(q, k, v, softcap: float, causal: bool = False):
    scores = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if causal:   # the n queries are the last n of the m keys' positions
        n, m = scores.shape[-2:]
        ahead = torch.ones(n, m, dtype=torch.bool, device=scores.device).triu(1 + m - n)
        scores = scores.masked_fill(ahead, -torch.inf)
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def _sdpa(q, k, v, causal: bool):
    n, m = q.shape[2], k.shape[2]
    mask = None
    if causal and 1 < n < m:     # queries after m - n cached positions (a single query sees them all)
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)
    with sdpa_kernel(SDPA_PRIORITY, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and n == m)


def _flash_attn(q, k, v, softcap: float, causal: bool = False):
    try:
        from flash_attn import flash_attn_func
    except ImportError as err:
        raise RuntimeError("model.attention = 'flash_attn' needs the flash-attn package "
                           "(pip install 'imdm[flash]'); or use 'sdpa' / 'math'") from err
    # causal with fewer queries than keys aligns them with the last keys (flash-attn >= 2.1)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softcap=softcap,
                          causal=causal)
    return out.transpose(1, 2)


def split_heads(qkv: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused projection's output [B, L, 3d] as q, k, v [B, H, L, d / H] (views)."""
    b, l, three_d = qkv.shape
    q, k, v = qkv.view(b, l, 3, n_heads, three_d // (3 * n_heads)).permute(2, 0, 3, 1, 4)
    return q, k, v


class SelfAttention(nn.Module):
    """Fused QKV (no bias) -> optional QK-norm -> rotary -> attention (causal: position i sees
    positions <= i only) -> output (no bias)."""

    def __init__(self, dim: int, n_heads: int, backend: str = "sdpa", softcap: float = 0.0,
                 qk_norm: bool = False, causal: bool = False):
        super().__init__()
        self.n_heads, self.backend, self.softcap, self.causal = n_heads, backend, softcap, causal
        self.qkv = GemmGradLinear(dim, 3 * dim, bias=False)
        self.out = GemmGradLinear(dim, dim, bias=False)
        head_dim = dim // n_heads
        self.q_norm = nn.RMSNorm(head_dim) if qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim) if qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: dict | None = None
                ) -> torch.Tensor:
        """x [B, L, d] -> [B, L, d]; cos, sin [L, head_dim] rotary tables of x's positions
        (imdm.models.layers.rotary_tables). `cache` (causal attention only): this block's keys and
        values of the earlier positions, which x continues; x's own are appended to it."""
        b, l, d = x.shape
        q, k, v = split_heads(self.qkv(x), self.n_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            if not self.causal:
                raise ValueError("a key-value cache needs causal attention")
            if cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if self.backend == "sdpa":
            y = _sdpa(q, k, v, self.causal)
        elif self.backend == "flash_attn":
            y = _flash_attn(q, k, v, self.softcap, self.causal)
        else:
            y = _math_attention(q, k, v, self.softcap, self.causal)
        return self.out(y.transpose(1, 2).reshape(b, l, d))
