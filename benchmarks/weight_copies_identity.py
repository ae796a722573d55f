"""Which results of one DiT block differ between frozen bf16 weight copies and per-call casts, and
between two identical runs, compiled and eager, on CUDA (bf16 autocast, kept weight gradients, two
micro-batches): per tensor, the largest difference relative to its largest entry.

    python -m benchmarks.weight_copies_identity [--results-dir DIR]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.gpu_timing import require_cuda
from benchmarks.results_io import write_result
from imdm.models.dit import DiTBlock, DiTConfig
from imdm.models.gemm_grad_linear import frozen_weight_copies, keep_weight_grads
from imdm.models.layers import rotary_tables

CONFIG = {"d_model": 144, "n_heads": 2, "batch": 3, "seq_len": 47, "micro_batches": 2}


def block_case(device: str) -> tuple[dict, list]:
    """(a DiT block's state, micro-batches of (x, c)) at CONFIG's shapes, every parameter non-zero."""
    torch.manual_seed(5)
    reference = DiTBlock(_config())
    for p in reference.parameters():
        nn.init.normal_(p, std=0.05)
    inputs = [(torch.randn(CONFIG["batch"], CONFIG["seq_len"], CONFIG["d_model"], device=device),
               torch.randn(CONFIG["batch"], 128, device=device)) for _ in range(CONFIG["micro_batches"])]
    return reference.state_dict(), inputs


def run_block(state: dict, inputs, copies: bool, compiled: bool) -> dict:
    """Outputs, input gradients and parameter gradients ("grad NAME") of a fresh block loaded from
    `state`, under bf16 autocast with kept weight gradients, on the inputs' device; with `copies`,
    inside frozen_weight_copies."""
    device = inputs[0][0].device
    block = DiTBlock(_config()).to(device)
    block.load_state_dict(state)
    keep_weight_grads(block)
    run = torch.compile(block, fullgraph=True) if compiled else block
    cos, sin = rotary_tables(CONFIG["seq_len"], CONFIG["d_model"] // CONFIG["n_heads"], device)
    results = {}
    with frozen_weight_copies(block, torch.bfloat16 if copies else None):
        for i, (x, c) in enumerate(inputs):
            x = x.clone().requires_grad_()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                x_out, (branch, _, _) = run(x, c, cos, sin)
            (x_out.square().sum() + branch.float().square().sum()).backward()
            results.update({f"x_out{i}": x_out.detach(), f"branch{i}": branch.detach(), f"dx{i}": x.grad})
    return {**results, **{f"grad {n}": p.grad for n, p in block.named_parameters()}}


def _config() -> DiTConfig:
    return DiTConfig(vocab_size=64, mask_id=63, d_model=CONFIG["d_model"], n_blocks=1, n_heads=CONFIG["n_heads"])


def differences(a: dict, b: dict) -> dict:
    """{name: max |a - b| / max |b|} over the tensors that are not bit-identical."""
    return {k: float((a[k].float() - b[k].float()).abs().max() / b[k].float().abs().max().clamp_min(1e-30))
            for k in a if not torch.equal(a[k], b[k])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("weight_copies_identity")
    state, inputs = block_case("cuda")
    metrics = {}
    for mode, compiled in (("compiled", True), ("eager", False)):
        copies, casts, casts_again, copies_again = (run_block(state, inputs, c, compiled)
                                                    for c in (True, False, False, True))
        metrics[mode] = {"copies_vs_casts": differences(copies, casts), "casts_vs_casts": differences(casts_again, casts),
                         "copies_vs_copies": differences(copies_again, copies)}
        print(mode, metrics[mode], flush=True)
    write_result("weight_copies_identity", "dit-block", CONFIG, metrics, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
