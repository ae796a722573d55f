"""The `imdm` command line: check, train, couplings, pipeline, sample, eval, quickstart, plot. Recipe and checkpoint
problems end with a message and exit status 2, not a traceback. `check` never imports torch."""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_RECIPE = "builtin:quickstart"


def _split_recipe_and_overrides(items: list[str]) -> tuple[str, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return DEFAULT_RECIPE, items


def _warn(recipe) -> None:
    from imdm.recipe.advice import recipe_warnings
    for line in recipe_warnings(recipe):
        print(f"warning: {line}", file=sys.stderr)


def cmd_check(args) -> int:
    from imdm.algorithms.registry import load_recipe, method_label
    from imdm.data.input_paths import missing_inputs
    from imdm.recipe.errors import RecipeError
    from imdm.train.metrics import tensorboard_problems
    recipe_path, overrides = _split_recipe_and_overrides(args.items)
    recipe = load_recipe(recipe_path, overrides, world_size=args.world_size)
    problems = missing_inputs(recipe) + tensorboard_problems(recipe.logging.tensorboard)
    if problems:
        raise RecipeError(recipe_path, problems)
    _warn(recipe)
    d, b, h = recipe.model.dims()
    c = recipe.couplings
    if c.teacher_run:   # a coupling-generation recipe: the model and training settings are the teacher's
        print(f"{recipe_path}: ok (imdm couplings: {c.num} {c.start} couplings of {recipe.data.source} data, "
              f"completed by run '{c.teacher_run}' in {c.steps} steps)")
        return 0
    print(f"{recipe_path}: ok ({method_label(recipe)}, model {recipe.model.size} d={d} blocks={b} heads={h}, "
          f"{recipe.train.steps} steps of {recipe.train.global_batch} sequences)")
    return 0


def cmd_train(args) -> int:
    from imdm.algorithms.registry import load_recipe
    from imdm.parallel.distributed import init_distributed, launcher_world_size, shutdown
    recipe_path, overrides = _split_recipe_and_overrides(args.items)
    recipe = load_recipe(recipe_path, overrides, world_size=launcher_world_size())
    from imdm.train.metrics import json_line
    from imdm.train.trainer import Trainer
    dist = init_distributed(recipe.train.device)
    if dist.is_main:
        _warn(recipe)
    try:
        result = Trainer(recipe, dist).fit()
        if dist.is_main:
            print(json_line({"run_dir": str(result.run_dir), "step": result.step, "loss": result.last_loss,
                             "val_nelbo_ema": result.val_nelbo, "stopped_early": result.stopped_early}))
    finally:
        shutdown()
    return 128 + result.stop_signal if result.stopped_early else 0


def cmd_couplings(args) -> int:
    from imdm.algorithms.registry import load_recipe
    from imdm.parallel.distributed import init_distributed, shutdown
    recipe_path, overrides = _split_recipe_and_overrides(args.items)
    recipe = load_recipe(recipe_path, overrides)   # the training layout does not constrain generation
    from imdm.couplings import generate_couplings
    dist = init_distributed(recipe.train.device)
    try:
        folder = generate_couplings(recipe, dist)
        if dist.is_main:
            print(json.dumps({"couplings": str(folder), "num": recipe.couplings.num, "complete": True}))
    finally:
        shutdown()
    return 0


def cmd_pipeline(args) -> int:
    from imdm.parallel.distributed import shutdown
    from imdm.pipeline import StageFailed, run_pipeline
    try:
        only = tuple(n.strip() for n in args.only.split(",") if n.strip())
        stages = run_pipeline(args.pipeline, args.overrides, only=only)
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_status
    finally:
        shutdown()
    names = [s.name for s in stages if not only or s.name in only]
    print(json.dumps({"pipeline": args.pipeline, "stages": names, "finished": True}))
    return 0


def _device(name: str):
    from imdm.devices import pick_device
    return pick_device(name, key="--device")


def _at_least_one(text: str) -> int:
    """argparse type of a count flag: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _check_output_file(path: str, flag: str) -> None:
    """Fail before the work, not after it, when `path` cannot be written."""
    from pathlib import Path
    from imdm.recipe.errors import RecipeError
    if path and (Path(path).is_dir() or not Path(path).absolute().parent.is_dir()):
        raise RecipeError(flag, [f"{path}: " + ("is a folder" if Path(path).is_dir() else "its folder does not exist")])


def _prompt(args, run) -> list[int] | None:
    """The ids `--prefix` / `--prefix-ids` clamp, or None without a prompt."""
    from imdm.eval.conditional import prompt_ids
    from imdm.recipe.errors import RecipeError
    if args.prefix is None and args.prefix_ids is None:
        return None
    ids = None
    if args.prefix_ids is not None:
        try:
            ids = [int(i) for i in args.prefix_ids.split(",") if i.strip()]
        except ValueError:
            raise RecipeError("imdm sample --prefix-ids", [f"{args.prefix_ids!r} is not a comma-separated list of "
                                                           "token ids"]) from None
    return prompt_ids(run.vocab, run.recipe.data.seq_len, args.prefix, ids)


def cmd_sample(args) -> int:
    from imdm.build import sampler_settings
    from imdm import rng
    from imdm.eval.conditional import conditional_seeds
    from imdm.sampling.ancestral import generation_seeds
    from imdm.run_loading import load_run
    import torch
    _check_output_file(args.out, "--out")
    run = load_run(args.run_dir, _device(args.device), args.overrides)
    s = run.recipe.sampling
    steps = args.steps or s.steps[-1]
    device = run.model.token_embed.device
    prompt = _prompt(args, run)
    if prompt is None:
        seeds, prefix = generation_seeds(s.seed, 0, args.num_samples, rng.STREAM_EVAL_SEED), None
    else:
        seeds = conditional_seeds(s.seed, 0, args.num_samples)
        prefix = torch.tensor([prompt] * args.num_samples, dtype=torch.int64, device=device)
    result = run.process.sample(run.model, sampler_settings(run.recipe, steps), seeds.to(device),
                                run.recipe.data.seq_len, prefix=prefix)
    out = {"run_dir": str(args.run_dir), "step": run.step, "steps": steps, "nfe": result.nfe,
           "samples": result.tokens.cpu().tolist()}
    if prompt is not None:
        out["prefix"] = prompt
    if run.vocab.tokenizer is not None:
        out["text"] = [run.vocab.tokenizer.decode(ids) for ids in out["samples"]]
    text = json.dumps(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


def cmd_eval(args) -> int:
    from pathlib import Path
    from imdm.eval.synthetic_eval import evaluate_synthetic, format_table
    from imdm.run_loading import load_run
    device = _device(args.device)
    run = load_run(args.run_dir, device, args.overrides)
    from imdm.build import data_origin
    if data_origin(run.recipe) == "synthetic":
        from imdm.algorithms.registry import method_label
        rows = [{"method": method_label(run.recipe), "num_samples": run.recipe.sampling.num_samples, **row}
                for row in evaluate_synthetic(run.recipe, run.model, run.process, device)]
        (Path(args.run_dir) / "eval.json").write_text(json.dumps({"step": run.step, "rows": rows}, indent=1))
        print(format_table(rows, run.recipe.data.vocab_size, run.recipe.data.seq_len))
    else:
        from imdm.eval.report import write_report
        from imdm.eval.text_eval import evaluate_text_run
        print(write_report(args.run_dir, evaluate_text_run(run, args.run_dir, device)))
    return 0


def cmd_quickstart(args) -> int:
    from imdm.quickstart import run_quickstart
    run_quickstart(args.output_dir, args.overrides)
    return 0


def cmd_plot(args) -> int:
    from imdm.tools.plot_generative import write_generative_plot
    _check_output_file(args.out, "--out")
    print(write_generative_plot(args.run_dirs, args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imdm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a recipe (and overrides) without running anything")
    p.add_argument("items", nargs="*", metavar="RECIPE|KEY=VALUE")
    p.add_argument("--world-size", type=_at_least_one, default=None, help="check the layout for this many ranks")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("train", help="train from a recipe (default: the packaged quickstart); torchrun-ready")
    p.add_argument("items", nargs="*", metavar="RECIPE|KEY=VALUE")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("couplings", help="ReDi couplings: a teacher run completes noised training sequences into "
                                         "run.output_dir/run.name/couplings; resumable; torchrun-ready")
    p.add_argument("items", nargs="*", metavar="RECIPE|KEY=VALUE")
    p.set_defaults(func=cmd_couplings)

    p = sub.add_parser("pipeline", help="run a pipeline's stages in order (train, couplings), skipping finished ones")
    p.add_argument("pipeline", metavar="PIPELINE.toml|builtin:pipelines/NAME")
    p.add_argument("--only", default="", metavar="RUN,RUN",
                   help="run just the stages of these run names (their inputs must be finished); others are left alone")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every stage")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("sample", help="generate from a run's newest checkpoint (EMA weights), optionally continuing "
                                      "a prompt")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", metavar="sampling.KEY=VALUE")
    p.add_argument("--steps", type=_at_least_one, default=None, help="reverse steps (default: the recipe's last)")
    p.add_argument("--num-samples", type=_at_least_one, default=8)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="", help="write JSON here instead of stdout")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prefix", default=None, metavar="TEXT",
                        help="continue this text: BOS and its tokens are clamped at the start of every sample")
    prompt.add_argument("--prefix-ids", default=None, metavar="ID,ID,...",
                        help="continue these token ids, clamped at the start of every sample as given")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="synthetic: validity/coverage at sampling.steps; text: generative perplexity "
                                    "and entropy at sampling.steps (judge eval.judge), the human-text row and "
                                    "perplexity bounds, into RUN_DIR/eval.json and eval.md")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", metavar="sampling.KEY=VALUE|eval.KEY=VALUE")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quickstart", help="MDLM, IMDM and IM-ReDi on the CPU-sized synthetic task, then their "
                                          "validity and coverage at 1 to 128 steps")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every stage")
    p.add_argument("--output-dir", default="runs")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("plot", help="text runs' generative perplexity (their eval.json) against sampling steps, "
                                    "and against entropy across temperatures")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="FILE.png|FILE.svg")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from imdm.recipe.errors import RecipeError
    try:
        return args.func(args)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from imdm.data.local_text import DataSourceError
        from imdm.data.tokenizer import TokenizerError
        from imdm.parallel.checkpoint import CheckpointError
        if isinstance(err, (CheckpointError, DataSourceError, TokenizerError)):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
