"""The counter-based hash of `imdm.rng` as Triton device functions, in uint32 arithmetic: the
same bits as the eager int64 emulation. Derive a row's keys once (`stream_keys`), then hash
every counter of the row with them (`uniform24`)."""

import triton
import triton.language as tl


@triton.jit
def mix32(x):
    """rng.mix32 on uint32 words."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def stream_keys(seed, stream):
    """rng._key: the two uint32 keys of an int64 seed under an int64 stream id."""
    k1 = mix32(seed.to(tl.uint32) ^ mix32((tl.cast(stream, tl.int64) + 0x9E3779B9).to(tl.uint32)))
    k2 = mix32((seed >> 32).to(tl.uint32) ^ mix32(k1 ^ 0x5BD1E995))
    return k1, k2


@triton.jit
def hash32(counter, k1, k2):
    """rng.hash32 of uint32 counters under the keys (k1, k2)."""
    return mix32(mix32(counter ^ k1) + k2)


@triton.jit
def uniform24(counter, k1, k2):
    """rng.uniform24: float32 in (0, 1) on the 2^-24 grid."""
    return ((hash32(counter, k1, k2) >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08
