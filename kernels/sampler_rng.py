"""imdm.rng.uniform53 inside Triton kernels, built on the uint32 hash of `hash32`, so a kernel
draws bit-identical 53-bit uniforms to the eager code."""

from __future__ import annotations

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

