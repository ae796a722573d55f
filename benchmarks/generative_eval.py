"""Wall time of the generative evaluation protocol (docs/method.md section 9) for the small
model (recipes/owt.toml, IMDM; random weights, perturbed so x_theta is not uniform) judged by a
GPT-2 Large-shaped causal LM (36 x 1280, random weights: the papers' judge's compute; GPT-2
tokenizer folder --tokenizer): at each step count, `--num-samples` unconditional samples of
1,024 tokens, decoded, retokenised and scored (generative perplexity, entropy), and MAUVE of
`--prompts` x `--continuations` prompted continuations (100 tokens after a 50-token prompt)
against `--prompts` reference continuations in the judge's feature space, over 5 k-means seeds.
The prompts and references are random token sequences: the timing, not the score, is the
result. One JSON with each phase's seconds per step count and the total.

    python -m benchmarks.generative_eval [--steps 1 2 4 8 16 32 64 128] [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.gpu_timing import require_cuda
from benchmarks.results_io import write_result
from imdm.algorithms.registry import load_recipe
from imdm.build import build_model, build_process, sampler_settings
from imdm.eval.conditional import continue_prompts
from imdm.eval.generative import score_sequences
from imdm.eval.hf_judge import HuggingFaceJudge, import_transformers
from imdm.eval.mauve_score import mauve_over_seeds
from imdm.eval.text_eval import generate_samples

RECIPE = "recipes/owt.toml"
VOCAB, MASK_ID, SEQ_LEN = 50258, 50257, 1024
PROMPT, KEPT = 50, 100
DEFAULT_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizers" / "gpt2"


def timed(fn):
    """(wall seconds of fn() with the GPU synchronised before and after, its result)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def gpt2_large_judge(tokenizer_dir: Path, batch: int) -> HuggingFaceJudge:
    transformers = import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=36, n_embd=1280, n_head=20, vocab_size=50257, n_positions=1024)
    model = transformers.GPT2LMHeadModel(config).requires_grad_(False).eval().cuda()
    return HuggingFaceJudge("gpt2-large-shaped (random weights)", model, tokenizer, torch.device("cuda"), batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128, help="sequences per sampler call")
    parser.add_argument("--judge-batch", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--continuations", type=int, default=5)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                        help="a GPT-2 tokenizer folder (vocab.json, merges.txt, tokenizer_config.json)")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("generative_eval")
    cuda = torch.device("cuda")
    recipe = load_recipe(RECIPE, ["algorithm.name=imdm", f"sampling.num_samples={args.num_samples}",
                                  f"sampling.batch={args.batch}", "train.precision=bf16"])
    model = build_model(recipe, VOCAB, MASK_ID, cuda)
    with torch.no_grad():
        gen = torch.Generator(device=cuda).manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, device=cuda, generator=gen))
    model.eval()
    process = build_process(recipe, MASK_ID, cuda)
    judge_load_s, judge = timed(lambda: gpt2_large_judge(args.tokenizer, args.judge_batch))
    decode = judge.tokenizer.decode
    tokens = torch.Generator().manual_seed(1)
    prompts = torch.cat([torch.full((args.prompts, 1), 50256), torch.randint(0, 50257, (args.prompts, PROMPT),
                                                                             generator=tokens)], dim=1)
    references = torch.randint(0, 50257, (args.prompts, KEPT), generator=tokens)
    human_s, human = timed(lambda: judge.features(judge.encode([decode(r) for r in references.tolist()])))
    rows = []
    for steps in args.steps:
        sample_s, (samples, nfe) = timed(lambda: generate_samples(recipe, model, process, cuda, steps))
        judge_s, score = timed(lambda: score_sequences(judge, samples, decode))

        def conditional():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return continue_prompts(process, model, sampler_settings(recipe, steps), prompts, args.continuations,
                                        recipe.sampling.seed, SEQ_LEN, args.batch, cuda)[0]
        continue_s, continued = timed(conditional)
        kept = continued[:, :, PROMPT + 1: PROMPT + 1 + KEPT].reshape(-1, KEPT).tolist()
        features_s, generated = timed(lambda: judge.features(judge.encode([decode(r) for r in kept])))
        mauve_s, mauve = timed(lambda: mauve_over_seeds(human, generated, range(5)))
        row = {"steps": steps, "nfe": nfe, "sample_s": sample_s, "judge_s": judge_s, "continue_s": continue_s,
               "features_s": features_s, "mauve_s": mauve_s, "gen_ppl": score["gen_ppl"], "mauve": mauve["mauve"]}
        row["total_s"] = sample_s + judge_s + continue_s + features_s + mauve_s
        rows.append(row)
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    total = judge_load_s + human_s + sum(r["total_s"] for r in rows)
    print(f"protocol total: {total:.1f} s (judge load {judge_load_s:.1f} s, reference features {human_s:.1f} s)")
    config = {"model": "small", "algorithm": "imdm", "judge": "gpt2-large-shaped", "num_samples": args.num_samples,
              "seq_len": SEQ_LEN, "batch": args.batch, "judge_batch": args.judge_batch, "prompts": args.prompts,
              "continuations": args.continuations, "steps": args.steps, "autocast": "bfloat16"}
    metrics = {"total_s": total, "judge_load_s": judge_load_s, "reference_features_s": human_s, "rows": rows}
    print(write_result("generative_eval", RECIPE, config, metrics, out_dir=args.results_dir))


if __name__ == "__main__":
    main()
