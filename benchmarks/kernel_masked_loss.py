"""Fused masked loss (imdm.kernels.masked_loss) against the unfused head + cross-entropy on CUDA:
d 768, 32,768 tokens with 50% masked (16,384 scored rows), V 50258 with the head padded to a
multiple of 128, bf16 hidden states and float32 head weights under bf16 autocast (as in training).
Times forward+backward with CUDA events after warm-up, and the extra memory (peak allocated minus
allocated before the call), for: the fused op; the gathered unfused baseline (bf16 head matmul ->
float32 SUBS cross-entropy, masked_token_nll); and torch.compile of that baseline. Before timing,
checks the fused result (value and gradients) against float32: its error must stay within twice
PyTorch's own bf16 error.

    python -m benchmarks.kernel_masked_loss [--results-dir DIR] [--iters 20]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.gpu_timing import require_cuda, time_ms
from benchmarks.results_io import write_result
from imdm.diffusion.nelbo import masked_token_nll
from imdm.kernels import masked_loss
from imdm.kernels.masked_loss import fused_masked_nll


def unfused_nll(h, w, b, targets, weights, mask_id, vocab):
    """The gathered training path: head matmul on the masked rows (bf16 autocast for bf16 h),
    float32 SUBS NLL."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=h.dtype == torch.bfloat16):
        logits = F.linear(h, w, b)[:, :vocab].contiguous()
    return (weights * masked_token_nll(logits, targets, mask_id)).sum()


def fused_nll(h, w, b, targets, weights, mask_id, vocab):
    return fused_masked_nll(h, w, b, targets, weights, mask_id, vocab)


def _grads(fn, leaves, args):
    for x in leaves:
        x.grad = None
    loss = fn(*leaves, *args)
    loss.backward()
    return [loss.detach().double()] + [x.grad.double() for x in leaves]


def check(fused, unfused, leaves, args) -> dict:
    """Relative errors of the fused and the unfused bf16 results against float32 (the unfused
    function on float32 copies of the inputs); asserts fused <= 2 x unfused + 1e-3 for the value
    and each gradient."""
    exact_leaves = [x.detach().float().requires_grad_() for x in leaves]
    exact_args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    exact = _grads(unfused, exact_leaves, exact_args)
    errors = {}
    for name, got, ref, want in zip(("loss", "h", "W", "b"), _grads(fused, leaves, args),
                                    _grads(unfused, leaves, args), exact):
        err, ref_err = (float((x - want).norm() / want.norm()) for x in (got, ref))
        assert err <= 2 * ref_err + 1e-3, f"{fused.__name__} {name}: error {err:.2e} vs PyTorch bf16 {ref_err:.2e}"
        errors[f"{fused.__name__}_rel_err_{name}"] = err
        errors[f"{unfused.__name__}_bf16_rel_err_{name}"] = ref_err
    for x in leaves:
        x.grad = None
    return errors


def fwd_bwd_ms(fn, leaves, args, warmup: int, iters: int) -> float:
    def step():
        for x in leaves:
            x.grad = None
        fn(*leaves, *args).backward()

    return time_ms(step, iters, warmup)


def extra_mem_gib(fn, leaves, args) -> float:
    for x in leaves:
        x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(*leaves, *args).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    for x in leaves:
        x.grad = None
    return peak / 2 ** 30


def _key(name: str, metric: str) -> str:
    """Metric names: the fused NLL's carry none of the variant's name (DESIGN.md's keys)."""
    return metric if name == "fused" else f"{name}_{metric}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--masked-fraction", type=float, default=0.5)
    parser.add_argument("--vocab", type=int, default=50258)
    parser.add_argument("--pad-multiple", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("kernel_masked_loss")
    torch.manual_seed(0)
    dev, vocab = torch.device("cuda"), args.vocab
    mask_id = vocab - 1
    rows = int(args.tokens * args.masked_fraction)
    padded = -(-vocab // args.pad_multiple) * args.pad_multiple

    h = torch.randn(rows, args.d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(padded, args.d, device=dev) * 0.05).requires_grad_()
    b = (torch.randn(padded, device=dev) * 0.1).requires_grad_()
    targets = torch.randint(0, vocab - 1, (rows,), device=dev)
    weights = 1 / torch.rand(rows, device=dev).clamp_min(1e-3)
    leaves, nll_args = [h, w, b], [targets, weights, mask_id, vocab]

    metrics = check(fused_nll, unfused_nll, leaves, nll_args)
    table = {"fused": fused_nll, "baseline": unfused_nll, "compiled_baseline": torch.compile(unfused_nll)}
    for name, fn in table.items():
        metrics[_key(name, "fwd_bwd_ms")] = fwd_bwd_ms(fn, leaves, nll_args, args.warmup, args.iters)
        metrics[_key(name, "extra_mem_gib")] = extra_mem_gib(fn, leaves, nll_args)
    metrics["speedup_vs_baseline"] = metrics["baseline_fwd_bwd_ms"] / metrics["fwd_bwd_ms"]
    metrics["speedup_vs_compiled_baseline"] = metrics["compiled_baseline_fwd_bwd_ms"] / metrics["fwd_bwd_ms"]
    config = {"d": args.d, "tokens": args.tokens, "masked_fraction": args.masked_fraction, "vocab": vocab,
              "padded_vocab": padded, "rows": rows, "dtype": "bf16 activations, fp32 head weights, autocast",
              "chunk_rows": masked_loss._chunk_rows(rows, padded, torch.bfloat16),
              "chunk_bytes": masked_loss.CHUNK_BYTES, "warmup": args.warmup, "iters": args.iters}
    path = write_result("kernel_masked_loss", "", config, metrics, out_dir=args.results_dir)
    print(f"d {args.d}, {rows} rows, V {vocab} (head {padded}), bf16: fwd+bwd ms / extra GiB")
    print("  ".join(f"{name} {metrics[_key(name, 'fwd_bwd_ms')]:.2f} / {metrics[_key(name, 'extra_mem_gib')]:.2f}"
                    for name in table))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
