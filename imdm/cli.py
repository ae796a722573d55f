"""The `imdm` command line: check, train, couplings, pipeline, sample, eval, quickstart, plot. Bad input
(recipes, overrides, flags, files, checkpoints) ends with a message and exit status 2, not a traceback."""

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


def _input_problems(recipe) -> list[str]:
    """Files the recipe names that are missing from here, and a missing TensorBoard."""
    from imdm.data.input_paths import missing_inputs
    from imdm.train.metrics import tensorboard_problems
    return missing_inputs(recipe) + tensorboard_problems(recipe.logging.tensorboard)


def _recipe_summary(recipe) -> str:
    from imdm.algorithms.registry import method_label
    c = recipe.couplings
    if c.teacher_run:   # a coupling-generation recipe: the model and training settings are the teacher's
        return (f"imdm couplings: {c.num} {c.start} couplings of {recipe.data.source} data, "
                f"completed by run '{c.teacher_run}' in {c.steps} steps")
    d, b, h = recipe.model.dims()
    return (f"{method_label(recipe)}, model {recipe.model.size} d={d} blocks={b} heads={h}, "
            f"{recipe.train.steps} steps of {recipe.train.global_batch} sequences")


def cmd_check(args) -> int:
    from imdm.algorithms.registry import load_recipe
    from imdm.pipeline import is_pipeline, load_pipeline
    from imdm.recipe.errors import RecipeError
    recipe_path, overrides = _split_recipe_and_overrides(args.items)
    if is_pipeline(recipe_path):
        output_dir, stages = load_pipeline(recipe_path, overrides, world_size=args.world_size)
        problems = [f"stage[{i}] ({stage.name}): {p}" for i, stage in enumerate(stages)
                    for p in _input_problems(stage.recipe)]
        if problems:
            raise RecipeError(recipe_path, problems)
        print(f"{recipe_path}: ok (pipeline of {len(stages)} stages, runs under {output_dir})")
        for i, stage in enumerate(stages, 1):
            print(f"  stage {i}/{len(stages)} {stage.command} {stage.name}: {_recipe_summary(stage.recipe)}")
            _warn(stage.recipe)
        return 0
    recipe = load_recipe(recipe_path, overrides, world_size=args.world_size)
    problems = _input_problems(recipe)
    if problems:
        raise RecipeError(recipe_path, problems)
    _warn(recipe)
    print(f"{recipe_path}: ok ({_recipe_summary(recipe)})")
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
    from imdm.build import data_origin
    from imdm.run_loading import load_run
    from imdm.sample_command import draw_samples
    from imdm.sample_output import format_samples
    _check_output_file(args.out, "--out")
    run = load_run(args.run_dir, _device(args.device), args.overrides)
    steps = args.steps or run.recipe.sampling.steps[-1]
    prompt = _prompt(args, run)
    tokens, nfe = draw_samples(run, steps, args.num_samples, prompt)
    out = {"run_dir": str(args.run_dir), "step": run.step, "steps": steps, "nfe": nfe, "samples": tokens.tolist()}
    if prompt is not None:
        out["prefix"] = prompt
    if run.vocab.tokenizer is not None:
        out["text"] = [run.vocab.tokenizer.decode(ids) for ids in out["samples"]]
    text = format_samples(out, args.format or ("json" if args.out else "text"), data_origin(run.recipe) == "synthetic")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
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
        written = [Path(args.run_dir) / "eval.json"]
    else:
        from imdm.eval.report import write_report
        from imdm.eval.text_eval import evaluate_text_run
        print(write_report(args.run_dir, evaluate_text_run(run, args.run_dir, device)))
        written = [Path(args.run_dir) / "eval.json", Path(args.run_dir) / "eval.md"]
    print(f"wrote {' and '.join(map(str, written))}", file=sys.stderr)
    return 0


def cmd_quickstart(args) -> int:
    from imdm.pipeline import StageFailed
    from imdm.quickstart import run_quickstart
    try:
        run_quickstart(args.output_dir, args.overrides)
    except StageFailed as err:      # as imdm pipeline reports a failed stage
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_plot(args) -> int:
    from imdm.tools.plot_generative import write_generative_plot
    _check_output_file(args.out, "--out")
    print(write_generative_plot(args.run_dirs, args.out))
    return 0


RECIPE_ITEMS = dict(nargs="*", metavar="RECIPE|KEY=VALUE",
                    help=f"a recipe file or builtin:NAME (default {DEFAULT_RECIPE}), then section.key=value overrides")


def build_parser() -> argparse.ArgumentParser:
    from imdm import __version__
    from imdm.cli_help import command_parser
    from imdm.sample_output import FORMATS
    parser = argparse.ArgumentParser(prog="imdm", description=__doc__,
                                     epilog="imdm COMMAND --help shows a command's arguments and examples")
    parser.add_argument("--version", action="version", version=f"imdm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = command_parser(sub, "check", "validate a recipe or a pipeline (every stage) and overrides without running "
                                     "anything")
    p.add_argument("items", nargs="*", metavar="RECIPE|PIPELINE|KEY=VALUE",
                   help="a recipe or pipeline file or builtin: name, then section.key=value overrides")
    p.add_argument("--world-size", type=_at_least_one, default=None, metavar="N",
                   help="check the layout for this many ranks")
    p.set_defaults(func=cmd_check)

    p = command_parser(sub, "train", "train from a recipe (default: the packaged quickstart); torchrun-ready")
    p.add_argument("items", **RECIPE_ITEMS)
    p.set_defaults(func=cmd_train)

    p = command_parser(sub, "couplings", "ReDi couplings: a teacher run completes noised training sequences into "
                                         "run.output_dir/run.name/couplings; resumable; torchrun-ready")
    p.add_argument("items", **RECIPE_ITEMS)
    p.set_defaults(func=cmd_couplings)

    p = command_parser(sub, "pipeline", "run a pipeline's stages in order (train, couplings), skipping finished "
                                        "ones")
    p.add_argument("pipeline", metavar="PIPELINE.toml|builtin:pipelines/NAME", help="the pipeline file to run")
    p.add_argument("--only", default="", metavar="RUN,RUN",
                   help="run just the stages of these run names (their inputs must be finished); others are left alone")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every stage")
    p.set_defaults(func=cmd_pipeline)

    p = command_parser(sub, "sample", "generate from a run's newest checkpoint (EMA weights), optionally "
                                      "continuing a prompt")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (run.output_dir/run.name)")
    p.add_argument("overrides", nargs="*", metavar="sampling.KEY=VALUE", help="sampler settings for this call")
    p.add_argument("--steps", type=_at_least_one, default=None, metavar="K",
                   help="reverse steps (default: the recipe's last)")
    p.add_argument("--num-samples", type=_at_least_one, default=8, metavar="N",
                   help="how many sequences to generate")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to sample")
    p.add_argument("--format", default=None, choices=FORMATS,
                   help="text: decoded samples, one block each (default on screen); json: one object (default "
                        "with --out); jsonl: one object per sample")
    p.add_argument("--out", default="", metavar="FILE", help="write the samples here instead of stdout")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prefix", default=None, metavar="TEXT",
                        help="continue this text: BOS and its tokens are clamped at the start of every sample")
    prompt.add_argument("--prefix-ids", default=None, metavar="ID,ID,...",
                        help="continue these token ids, clamped at the start of every sample as given")
    p.set_defaults(func=cmd_sample)

    p = command_parser(sub, "eval", "synthetic: validity/coverage at sampling.steps; text: generative perplexity "
                                    "and entropy at sampling.steps (judge eval.judge), the human-text row and "
                                    "perplexity bounds, into RUN_DIR/eval.json and eval.md")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (run.output_dir/run.name)")
    p.add_argument("overrides", nargs="*", metavar="sampling.KEY=VALUE|eval.KEY=VALUE",
                   help="sampling.*, eval.*, conditional.* and logging.* settings for this evaluation")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to evaluate")
    p.set_defaults(func=cmd_eval)

    p = command_parser(sub, "quickstart", "MDLM, IMDM and IM-ReDi on the CPU-sized synthetic task "
                                          "(builtin:pipelines/quickstart), then their validity and coverage at few "
                                          "and many steps")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every stage")
    p.add_argument("--output-dir", default="runs", metavar="DIR", help="where the runs and quickstart.json go")
    p.set_defaults(func=cmd_quickstart)

    p = command_parser(sub, "plot", "text runs' generative perplexity (their eval.json) against sampling steps, "
                                    "and against entropy across temperatures")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="evaluated run directories, one curve each")
    p.add_argument("--out", required=True, metavar="FILE.png|FILE.svg", help="the figure to write")
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
