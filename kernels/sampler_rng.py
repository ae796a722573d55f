"""imdm.rng.uniform53 inside Triton kernels, built on the uint32 hash of `hash32`, so a kernel
draws bit-identical 53-bit uniforms to the eager code. `uniform53_tensor` runs the device
function over tensors, for tests."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from imdm.kernels.hash32 import hash32, stream_keys

SECOND_HALF = tl.constexpr(1 << 30)   # imdm.rng.uniform53 draws its low 26 bits under stream + 2^30


@triton.jit
def uniform53(seed, counter, stream):
    """float64 uniform in (0, 1) with 53 random bits for int64 (seed, counter) under an integer
    stream (imdm.rng.uniform53): 27 bits from `stream`, 26 from `stream + 2^30`."""
    c = counter.to(tl.uint32)
    a1, a2 = stream_keys(seed, stream)
    b1, b2 = stream_keys(seed, tl.cast(stream, tl.int64) + SECOND_HALF)
    high = (hash32(c, a1, a2) >> 5).to(tl.int64)
    low = (hash32(c, b1, b2) >> 6).to(tl.int64)
    return (((high << 26) + low).to(tl.float64) + 0.5) * 1.1102230246251565e-16


@triton.jit(do_not_specialize=["n", "stream"])
def _uniform53_kernel(seed_ptr, counter_ptr, out_ptr, n, stream, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    seed = tl.load(seed_ptr + offs, mask=ok, other=0)
    counter = tl.load(counter_ptr + offs, mask=ok, other=0)
    tl.store(out_ptr + offs, uniform53(seed, counter, stream), mask=ok)


def uniform53_tensor(seeds: torch.Tensor, counters: torch.Tensor, stream: int) -> torch.Tensor:
    """The kernel-side uniforms for int64 `seeds` and `counters` (broadcast), as float64."""
    seeds, counters = torch.broadcast_tensors(seeds.to(torch.int64), counters.to(torch.int64))
    seeds, counters = seeds.contiguous(), counters.contiguous()
    out = torch.empty(seeds.shape, dtype=torch.float64, device=seeds.device)
    n = seeds.numel()
    _uniform53_kernel[(triton.cdiv(n, 1024),)](seeds, counters, out, n, stream, BLOCK=1024)
    return out
