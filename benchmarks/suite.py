"""Run a named group of benchmarks on this machine's GPU(s), each as its own process
(`python -m benchmarks.NAME`, or torchrun for `scaling`), each writing its JSON under the
results folder; then print one line per result: the benchmark and its key numbers.

    python -m benchmarks.suite kernels    # kernel_masking, kernel_masked_loss, kernel_sampler,
                                          # kernel_residual_norm (large and small shapes), gelu_mlp
    python -m benchmarks.suite train      # train_throughput, small and large, at the recipes' batches
    python -m benchmarks.suite sampling   # sampling_latency and kernel_sampler
    python -m benchmarks.suite scaling    # train_throughput under torchrun over all visible GPUs

Options: --results-dir DIR (default benchmarks/results), --quick (a few iterations and, for
training, one micro-batch per GPU per step: checks that everything runs, measures little),
--dry-run (print the commands only). Training reads the local corpus of --data (default
../shared/data: corpus/ and tokenizers/gpt2/, tokenized once into a token store under
--cache-dir), or a synthetic stand-in of the same shapes with --data synthetic (or when the
default folder is missing). Run from the repository root with imdm installed (pip install -e .).
To compare two commits, run the suite in each checkout into one --results-dir (README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.results_io import RESULTS

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
RECIPES = {"small": "recipes/owt.toml", "large": "recipes/owt_large.toml"}
DEFAULT_DATA = "../shared/data"
# the local corpus's files under --data, as recipes/local_gpt2.toml names them under ../shared/data
CORPUS_GLOBS = ("corpus/gutenberg/*.txt.xz", "corpus/nltk/*.zip", "corpus/tinyshakespeare/input.txt")
TOKENIZER = "tokenizers/gpt2"
# the synthetic stand-in: GPT-2's 50,257 tokens (+ the mask), sequences of 1024; each sequence
# repeats one token, which changes nothing that the step's time depends on
SYNTHETIC = ("data.source=synthetic", "data.vocab_size=50257", "data.seq_len=1024", "eval.sets=[]")
SUITES = ("kernels", "train", "sampling", "scaling")


@dataclasses.dataclass
class Run:
    """One benchmark process: `name` in the table, the module and its arguments, how many
    processes torchrun starts (1: no torchrun)."""
    name: str
    module: str
    args: list[str]
    nproc: int = 1

    def command(self) -> list[str]:
        if self.nproc == 1:
            return [sys.executable, "-m", self.module, *self.args]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                "-m", self.module, *self.args]


def data_overrides(data: str, cache_dir: str) -> tuple[list[str], str]:
    """(recipe overrides, a line saying which data training reads)."""
    if data == "synthetic":
        return list(SYNTHETIC), "data: the synthetic stand-in (--data synthetic)"
    root = Path(data).expanduser().resolve()
    if not (root / TOKENIZER).is_dir() or not all(list(root.glob(g)) for g in CORPUS_GLOBS):
        if data != DEFAULT_DATA:
            raise SystemExit(f"--data {data}: expected {', '.join(CORPUS_GLOBS)} and {TOKENIZER}/ under it "
                             "(or --data synthetic)")
        return list(SYNTHETIC), (f"data: no local corpus at {data} (looked for {CORPUS_GLOBS[0]} and {TOKENIZER}/), "
                                 "so the synthetic stand-in: same shapes, repeated-token content")
    paths = json.dumps([str(root / g) for g in CORPUS_GLOBS])
    return (["data.source=local", f"data.paths={paths}", "data.documents=file", "data.holdout_documents=0",
             "tokenizer.kind=gpt2", f"tokenizer.path={root / TOKENIZER}",
             f"data.store_dir={Path(cache_dir).expanduser().resolve()}"],
            f"data: the local corpus under {root} (token store cached in {Path(cache_dir).expanduser()})")


def _micro_batch(recipe: str, overrides: list[str]) -> int:
    for item in reversed(overrides):
        if item.startswith("train.micro_batch="):
            return int(item.split("=", 1)[1])
    with open(REPO / recipe, "rb") as f:
        return int(tomllib.load(f)["train"]["micro_batch"])


def train_runs(opts, nproc: int, data: list[str]) -> list[Run]:
    runs = []
    for model in opts.models.split(","):
        if model not in RECIPES:
            raise SystemExit(f"--models: {model!r} is not one of {', '.join(RECIPES)}")
        recipe = RECIPES[model]
        overrides = [f"algorithm.name={opts.algorithm}", *data, *opts.set]
        timing = ["--warmup", "3", "--steps", "8"]
        if opts.quick:   # one micro-batch per GPU and step
            overrides.append(f"train.global_batch={_micro_batch(recipe, opts.set) * nproc}")
            timing = ["--warmup", "1", "--steps", "2"]
        label = "suite" + (" --quick" if opts.quick else "")
        runs.append(Run(f"train_throughput {model}" + (f" x{nproc}" if nproc > 1 else ""), "benchmarks.train_throughput",
                        ["--recipe", recipe, *timing, "--label", label, "--results-dir", opts.results_dir,
                         *overrides], nproc))
    return runs


def kernel_runs(opts) -> list[Run]:
    out = ["--results-dir", opts.results_dir]
    quick = opts.quick
    return [
        Run("kernel_masking", "benchmarks.kernel_masking", [*out, "--iters", "10" if quick else "100"]),
        Run("kernel_masked_loss", "benchmarks.kernel_masked_loss", [*out, *(["--warmup", "2", "--iters", "5"] if quick
                                                                           else [])]),
        kernel_sampler_run(opts),
        # the residual + LayerNorm kernel at the recipes' micro-batches: large (d 1536) and small (d 768)
        Run("kernel_residual_norm large", "benchmarks.kernel_residual_norm",
            [*out, "--batch", "32", "--d", "1536", *(["--iters", "5"] if quick else [])]),
        Run("kernel_residual_norm small", "benchmarks.kernel_residual_norm",
            [*out, "--batch", "32", "--d", "768", *(["--iters", "5"] if quick else [])]),
        Run("gelu_mlp", "benchmarks.gelu_mlp", [*out, *(["--iters", "5"] if opts.quick else [])]),
    ]


def kernel_sampler_run(opts) -> Run:
    return Run("kernel_sampler", "benchmarks.kernel_sampler",
               ["--results-dir", opts.results_dir, *(["--iters", "5", "--baseline-iters", "2"] if opts.quick else [])])


def sampling_runs(opts) -> list[Run]:
    steps = ["--steps", "1", "4", "--subset", "4"] if opts.quick else []
    protocol = ["--steps", "1", "4", "--num-samples", "128", "--prompts", "32"] if opts.quick else []
    return [Run("sampling_latency", "benchmarks.sampling_latency", ["--results-dir", opts.results_dir, *steps]),
            kernel_sampler_run(opts),
            Run("generative_eval", "benchmarks.generative_eval", ["--results-dir", opts.results_dir, *protocol])]


def plan(suite: str, opts, gpus: int) -> tuple[list[Run], list[str]]:
    """(the runs of `suite` on a machine with `gpus` visible GPUs, lines to print before them)."""
    if suite == "kernels":
        return kernel_runs(opts), []
    if suite == "sampling":
        return sampling_runs(opts), []
    nproc = 1 if suite == "train" else (opts.nproc or gpus)
    if suite == "scaling" and nproc < 2:
        return [], [f"scaling: skipped, it needs at least 2 GPUs and this machine shows {gpus} "
                    "(train_throughput on one GPU is the train suite)"]
    data, line = data_overrides(opts.data, opts.cache_dir)
    return train_runs(opts, nproc, data), [line]


def _result_files(root: Path) -> set[Path]:
    return set(root.glob("*/*.json"))


def headline(record: dict) -> str:
    """The key numbers of a result, on one line."""
    b, c, m = record["benchmark"], record.get("config", {}), record.get("metrics", {})

    def num(key, fmt=".3f", scale=1.0):
        value = m.get(key)
        return "n/a" if value is None else format(value * scale, fmt)

    if b == "train_throughput":
        return (f"{num('tokens_per_s_per_gpu', ',.0f')} tokens/s/GPU, MFU {num('mfu', '.1%')}, peak "
                f"{num('peak_mem_gib', '.1f')} GiB, data wait {num('data_wait_share', '.1%')} (global batch "
                f"{c.get('global_batch')}, micro-batch {c.get('micro_batch')}, {c.get('data_source')} data)")
    if b == "checkpoint_stall":
        return f"asynchronous checkpoint stalls the loop {num('stall_s')} s (first save {num('stall_first_save_s')} s)"
    if b == "kernel_masking":
        return (f"{num('ms', '.1f', 1e3)} us, {num('hbm_fraction', '.0%')} of HBM bandwidth; compiled reference "
                f"{num('baseline_compiled_ms', '.1f', 1e3)} us")
    if b == "kernel_masked_loss":
        return (f"{num('fwd_bwd_ms', '.2f')} ms forward + backward, +{num('extra_mem_gib', '.2f')} GiB; unfused "
                f"{num('baseline_fwd_bwd_ms', '.2f')} ms, +{num('baseline_extra_mem_gib', '.2f')} GiB")
    if b == "kernel_sampler":
        return (f"{num('step_ms')} ms per step, {num('hbm_fraction', '.0%')} of HBM bandwidth; eager float64 "
                f"{num('baseline_step_ms', '.2f')} ms")
    if b == "kernel_residual_norm":
        return (f"{num('fwd_bwd_ms')} ms forward + backward; compiled reference {num('baseline_fwd_bwd_ms')} ms "
                f"({c.get('batch')} x {c.get('seq_len')} x {c.get('d')})")
    if b == "gelu_mlp":
        return "; ".join(f"{model} {r['epilogue_gelu']['forward_backward_ms']:.3f} ms forward + backward "
                         f"(Inductor's GELU {r['inductor_gelu']['forward_backward_ms']:.3f})"
                         for model, r in m.items() if isinstance(r, dict) and "epilogue_gelu" in r)
    if b == "sampling_latency":
        return (f"{c.get('steps')} steps: {num('seconds_per_batch')} s per batch of {c.get('batch')}; eager float64 "
                f"{num('baseline_seconds_per_batch')} s")
    if b == "generative_eval":
        return (f"whole protocol {num('total_s', '.1f')} s: {c.get('num_samples')} samples of {c.get('seq_len')} "
                f"tokens at step counts {c.get('steps')}, judged, and MAUVE of {c.get('prompts')} x "
                f"{c.get('continuations')} continuations")
    scalars = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(scalars[:3])


def scaling_note(record: dict, results: Path) -> str:
    """Per-GPU rate against the same model on one GPU of the same card and commit, if found."""
    if record["benchmark"] != "train_throughput" or record.get("world_size", 1) < 2:
        return ""
    model, rate = record["config"].get("model"), record["metrics"].get("tokens_per_s_per_gpu")
    singles = []
    for path in results.glob("train_throughput/*.json"):
        other = json.loads(path.read_text())
        if (other.get("world_size") == 1 and other["config"].get("model") == model
                and other.get("device") == record.get("device") and other.get("git_sha") == record.get("git_sha")):
            singles.append((path.name, other["metrics"]["tokens_per_s_per_gpu"]))
    if not singles or not rate:
        return "; no one-GPU result of this commit here to compare (run the train suite first)"
    return f"; {rate / max(singles)[1]:.1%} of one GPU's rate"


def foreign_code() -> str | None:
    """Why the imdm that benchmarks would import is not this checkout's (an editable install of
    another checkout, say: its kernels would be measured under this checkout's sha), or None."""
    import imdm
    import imdm.kernels
    for module in (imdm, imdm.kernels):
        where = Path(module.__file__).resolve()
        if not where.is_relative_to(REPO):
            return (f"{module.__name__} is imported from {where.parent}, not from this checkout ({REPO}): "
                    "install this checkout (pip install -e .) in its own environment")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--results-dir", default=str(RESULTS), help="default: benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="a few iterations: checks the setup, measures little")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"train, scaling: a folder holding {CORPUS_GLOBS[0]} ... and {TOKENIZER}/ "
                             f"(default {DEFAULT_DATA}), or 'synthetic'")
    parser.add_argument("--cache-dir", default=os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "imdm"),
                        help="train, scaling: where the corpus's token store is built once (default %(default)s)")
    parser.add_argument("--models", default="small,large", help="train, scaling: small, large or both (default)")
    parser.add_argument("--algorithm", default="imdm", help="train, scaling: algorithm.name (default imdm)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="train, scaling: a recipe override, e.g. --set train.micro_batch=16 on a card "
                             "under 80 GB (repeatable)")
    parser.add_argument("--nproc", type=int, default=None, help="scaling: GPUs to use (default: all visible)")
    opts = parser.parse_args()
    opts.results_dir = str(Path(opts.results_dir).resolve())
    gpus = torch.cuda.device_count()
    if not opts.dry_run and gpus == 0:
        print(f"the {opts.suite} suite needs a CUDA GPU (torch {torch.__version__} sees none)", file=sys.stderr)
        raise SystemExit(2)
    problem = foreign_code()
    if problem:
        raise SystemExit(problem)
    runs, notes = plan(opts.suite, opts, gpus)
    for line in notes:
        print(line, flush=True)
    results = Path(opts.results_dir)
    rows, failed = [], 0
    for run in runs:
        print(f"\n== {run.name}: {shlex.join(run.command())}", flush=True)
        if opts.dry_run:
            continue
        before = _result_files(results)
        code = subprocess.run(run.command(), cwd=REPO).returncode
        new = sorted(_result_files(results) - before)
        if code != 0:
            failed += 1
            rows.append((run.name, f"FAILED (exit {code})", ""))
        for path in new:
            record = json.loads(path.read_text())
            name = run.name if record["benchmark"] == run.module.rsplit(".", 1)[1] else record["benchmark"]
            rows.append((name, headline(record) + scaling_note(record, results), str(path.relative_to(results))))
        if code == 0 and not new:
            rows.append((run.name, "ran, but wrote no result", ""))
    if rows:
        width = max(len(name) for name, _, _ in rows)
        print(f"\n{opts.suite} suite on {torch.cuda.get_device_name(0)}"
              + (f" x {runs[0].nproc}" if runs and runs[0].nproc > 1 else "") + f", results in {results}:")
        for name, line, path in rows:
            print(f"  {name:{width}s}  {line}" + (f"  [{path}]" if path else ""))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
