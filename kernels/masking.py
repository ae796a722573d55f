"""Masking kernels: the IMDM mask-state noise in one pass.

Fuses the counter-based hash (imdm.rng: dozens of element-wise int64 ops emulating uint32
words; here native uint32, each row's keys derived once), the uniform/Box-Muller transform and
the output write. Computes, with the same numbers as:
  mask_noise_rows  torch.compile(mask_noise_rows) in training  -> eps rows [M, dim]
  mask_noise       the sampler's eager mask_noise              -> eps [B, L, dim]
Training and sampling use the two. The masks themselves come from the eager
imdm.diffusion.forward_process (training draws them on the host: no device sync to find the
masked rows), which also holds these kernels' references. 'uniform' noise is bit-identical;
'normal' differs only by the log/cos implementations (libdevice on CUDA, numpy under the Triton
interpreter, against torch's): |diff| <= 1e-5 (1 + |eps|). bf16 output is the kernel's float32
result rounded to nearest even, as torch casts it.
Measured: docs/performance.md (benchmarks/kernel_masking.py).

The Triton kernels live in masking_triton.py, imported only when one runs. Each op is a
torch.library custom op (imdm::mask_noise_rows, imdm::mask_noise) so compiled graphs hold it.
`backend`: "auto" runs Triton on CUDA tensors and the reference elsewhere, "triton" forces the
kernel (the interpreter on CPU tensors when TRITON_INTERPRET=1), "eager" the reference.
"""

from typing import Optional

import torch

from imdm.diffusion import forward_process as reference
from imdm.kernels.backend import use_triton

DISTS = ("uniform", "normal")


@torch.library.custom_op("imdm::mask_noise_rows", mutates_args=())
def _noise_rows_op(seeds: torch.Tensor, positions: torch.Tensor, dim: int, dist: str,
                   generation: Optional[torch.Tensor], generation_scalar: int,
                   out_dtype: torch.dtype) -> torch.Tensor:
    from imdm.kernels.masking_triton import launch_noise
    return launch_noise(seeds, positions, 1, dim, dist, generation, generation_scalar, None, out_dtype,
                        seeds.shape[0])


@_noise_rows_op.register_fake
def _(seeds, positions, dim, dist, generation, generation_scalar, out_dtype):
    return seeds.new_empty((seeds.shape[0], dim), dtype=out_dtype)


@torch.library.custom_op("imdm::mask_noise", mutates_args=())
def _noise_op(seeds: torch.Tensor, seq_len: int, dim: int, dist: str, generation: Optional[torch.Tensor],
              generation_scalar: int, masked: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    from imdm.kernels.masking_triton import launch_noise
    batch = seeds.shape[0]
    out = launch_noise(seeds, None, seq_len, dim, dist, generation, generation_scalar, masked, out_dtype,
                       batch * seq_len)
    return out.view(batch, seq_len, dim)


@_noise_op.register_fake
def _(seeds, seq_len, dim, dist, generation, generation_scalar, masked, out_dtype):
    return seeds.new_empty((seeds.shape[0], seq_len, dim), dtype=out_dtype)


def _check_dist(dist: str) -> None:
    if dist not in DISTS:
        raise ValueError(f"unknown mask-noise distribution {dist!r}")


def _generation(generation, device) -> tuple[Optional[torch.Tensor], int]:
    """(per-row generations as a flat int64 tensor, or None; the scalar generation)."""
    if isinstance(generation, torch.Tensor):
        return generation.to(device=device, dtype=torch.int64).reshape(-1).contiguous(), 0
    return None, generation


def mask_noise_rows(seeds: torch.Tensor, positions: torch.Tensor, dim: int, dist: str,
                    generation: int | torch.Tensor = 0, out_dtype: torch.dtype = torch.float32,
                    backend: str = "auto") -> torch.Tensor:
    """Base noise [M, dim] of the mask states at (seeds[m], positions[m]), as
    forward_process.mask_noise_rows, in `out_dtype`."""
    _check_dist(dist)
    if not use_triton(backend, seeds):
        return reference.mask_noise_rows(seeds, positions, dim, dist, generation).to(out_dtype)
    gen, gen_scalar = _generation(generation, seeds.device)
    return torch.ops.imdm.mask_noise_rows(seeds.to(torch.int64).contiguous(),
                                          positions.to(seeds.device, torch.int64).contiguous(),
                                          dim, dist, gen, gen_scalar, out_dtype)


def mask_noise(seeds: torch.Tensor, seq_len: int, dim: int, dist: str, generation: int | torch.Tensor = 0,
               masked: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
               backend: str = "auto") -> torch.Tensor:
    """Base noise [B, L, dim] at every position, as forward_process.mask_noise (`generation` a
    scalar or [B, L]); zero where `masked` [B, L] is False when given; in `out_dtype`."""
    _check_dist(dist)
    if not use_triton(backend, seeds):
        noise = reference.mask_noise(seeds, seq_len, dim, dist, generation)
        if masked is not None:
            noise = torch.where(masked.to(noise.device)[..., None], noise, 0.0)
        return noise.to(out_dtype)
    gen, gen_scalar = _generation(generation, seeds.device)
    keep = masked.to(seeds.device, torch.bool).reshape(-1).contiguous() if masked is not None else None
    return torch.ops.imdm.mask_noise(seeds.to(torch.int64).contiguous(), seq_len, dim, dist, gen, gen_scalar,
                                     keep, out_dtype)
