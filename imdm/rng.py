"""Counter-based random numbers: every draw that matters (t, masks, mask states, sampler
choices) is a pure function of integer keys, so it is the same whatever the batch split, world
size, device or kernel. The hash works on 32-bit words held in int64 tensors so the eager code
and a Triton kernel (uint32 arithmetic) give identical bits. On the host the same hash runs in
numpy's wrapping uint32 arithmetic, an order of magnitude faster than the int64 emulation: the
training loop draws every micro-batch's masks on the CPU, between its GPU launches.

Streams keep independent uses apart: the same (seed, position) gives unrelated numbers in
different streams.
"""

from __future__ import annotations

import numpy as np
import torch

MASK32 = 0xFFFFFFFF

STREAM_TIME = 1
STREAM_SAMPLE_SEED = 2     # training: each sequence's seed of a step
STREAM_MASK = 3
STREAM_EPS = 4          # + 2 * generation for the Box-Muller pair's second half
STREAM_EVAL_SEED = 5       # evaluation and `imdm sample`: each generated sample's seed
STREAM_COUPLING_SEED = 6   # coupling generation: each coupling's seed
STREAM_CATEGORICAL = 1 << 20
STREAM_REDRAW = 1 << 21
STREAM_TEACHER = 1 << 22     # the distillation teacher's categorical draws
STREAM_RESIDUAL_DROPOUT = 1 << 23   # the DiT's residual-branch dropout (imdm.kernels.residual_norm)
STREAM_NEXT_TOKEN = 1 << 24   # the autoregressive sampler's next-token draws (counter: the position)
STREAM_EVAL_NELBO = 1 << 25   # the perplexity bound: its root seed and each batch's order of t strata


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective avalanche mix of 32-bit words (xor-shift-multiply, 'lowbias32')."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _key(seed: torch.Tensor, stream: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32-bit keys from a 63-bit seed and a stream id."""
    seed = torch.as_tensor(seed, dtype=torch.int64)
    lo, hi = seed & MASK32, (seed >> 32) & MASK32
    k1 = mix32(lo ^ mix32((torch.as_tensor(stream, dtype=torch.int64) + 0x9E3779B9) & MASK32))
    k2 = mix32(hi ^ mix32(k1 ^ 0x5BD1E995))
    return k1, k2


def hash32(seed: torch.Tensor, counter: torch.Tensor, stream: int | torch.Tensor) -> torch.Tensor:
    """32 random bits for each (seed, counter) pair under `stream`; broadcasting int64 tensors
    (or Python ints). Host inputs give a host tensor through `hash32_host`, the same bits."""
    if all(not isinstance(a, torch.Tensor) or a.device.type == "cpu" for a in (seed, counter, stream)):
        return hash32_host(seed, counter, stream)
    return hash32_words(seed, counter, stream)


def _mix32_uint32(x: np.ndarray) -> np.ndarray:
    """mix32 on uint32 words (multiplication wraps modulo 2^32)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _int64_array(x: int | torch.Tensor) -> np.ndarray:
    return x.to(torch.int64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.int64)


def hash32_host(seed: int | torch.Tensor, counter: int | torch.Tensor, stream: int | torch.Tensor) -> torch.Tensor:
    """hash32 of host values in numpy uint32 arithmetic, as an int64 CPU tensor."""
    seed, counter, stream = _int64_array(seed), _int64_array(counter), _int64_array(stream)
    with np.errstate(over="ignore"):
        lo, hi = (seed & MASK32).astype(np.uint32), ((seed >> 32) & MASK32).astype(np.uint32)
        k1 = _mix32_uint32(lo ^ _mix32_uint32(((stream + 0x9E3779B9) & MASK32).astype(np.uint32)))
        k2 = _mix32_uint32(hi ^ _mix32_uint32(k1 ^ np.uint32(0x5BD1E995)))
        words = _mix32_uint32(_mix32_uint32((counter & MASK32).astype(np.uint32) ^ k1) + k2)
    return torch.from_numpy(np.asarray(words, dtype=np.int64))


def hash32_words(seed: torch.Tensor, counter: torch.Tensor, stream: int | torch.Tensor) -> torch.Tensor:
    """hash32 in int64-emulated 32-bit arithmetic on any device (what non-host tensors use)."""
    k1, k2 = _key(seed, stream)
    return mix32((mix32((counter & MASK32) ^ k1) + k2) & MASK32)


def uniform24(seed: torch.Tensor, counter: torch.Tensor, stream: int | torch.Tensor) -> torch.Tensor:
    """float32 uniforms in (0, 1) on a 2^-24 grid (exact in float32)."""
    return words_to_uniform24(hash32(seed, counter, stream))


def words_to_uniform24(words: torch.Tensor) -> torch.Tensor:
    """uniform24 of hashed words; with hash32_words, a draw torch.compile can trace (no numpy)."""
    return ((words >> 8).to(torch.float32) + 0.5) * (2.0 ** -24)


def uniform53(seed: torch.Tensor, counter: torch.Tensor, stream: int) -> torch.Tensor:
    """float64 uniforms in (0, 1) with 53 random bits (the full float64 mantissa)."""
    a = hash32(seed, counter, stream) >> 5           # 27 bits
    b = hash32(seed, counter, stream + (1 << 30)) >> 6   # 26 bits
    return ((a * (1 << 26) + b).to(torch.float64) + 0.5) * (2.0 ** -53)


def derive_seed(seed: int | torch.Tensor, counter: torch.Tensor, stream: int) -> torch.Tensor:
    """A fresh 63-bit seed for each counter value (e.g. per sample of a step)."""
    hi = hash32(seed, counter, stream)
    lo = hash32(seed, counter, stream + (1 << 29))
    return ((hi & 0x7FFFFFFF) << 32) | lo
