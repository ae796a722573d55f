"""`imdm eval` of a text run (docs/method.md section 9): at each of `sampling.steps`, the
generative perplexity and entropy of `sampling.num_samples` unconditional samples (seeds from
the evaluation stream, as `imdm sample` draws them); the same numbers for as many held-out
sequences of the run's validation split, of the same length (the human row); and the
perplexity bounds of imdm.eval.perplexity. The judge is loaded and the human sequences are
read before any sampling, so a missing judge or a short validation split fails at once. With
`sampling.duplicate` > 1 each row also holds the total correlation of TC_GROUPS groups of that
many samples sharing their start and mask states; with `conditional.enabled`, MAUVE of prompted
continuations at each step count."""

from __future__ import annotations

import dataclasses

import torch

from imdm.algorithms.registry import method_label
from imdm.build import autocast_dtype, has_validation_split, sampler_settings
from imdm.data.text_dataset import open_text_dataset
from imdm.eval.conditional import conditional_mauve
from imdm.eval.evaluation_samples import evaluation_samples
from imdm.eval.generative import score_sequences
from imdm.eval.judge import Judge, load_judge
from imdm.eval.perplexity import evaluate_text
from imdm.eval.total_correlation import total_correlation
from imdm.recipe import Recipe, RecipeError
from imdm.run_loading import LoadedRun

TC_GROUPS = 64   # groups of `sampling.duplicate` samples in a row's total correlation estimate


def generate_samples(recipe: Recipe, model: torch.nn.Module, process, device: torch.device, steps: int,
                     progress: bool = False) -> tuple[list[list[int]], float]:
    """(samples 0 .. num_samples - 1 of the evaluation stream at `steps` steps, mean NFE per call),
    under the recipe's autocast."""
    amp = autocast_dtype(recipe, device)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        tokens, nfe = evaluation_samples(recipe, model, process, device, sampler_settings(recipe, steps),
                                         f"sampling {steps} steps" if progress else None)
    return tokens.tolist(), nfe


def human_sequences(recipe: Recipe, count: int) -> list[list[int]]:
    """`count` validation sequences spread evenly over the split (their real tokens only)."""
    dataset = open_text_dataset(recipe, "validation")
    if len(dataset) < count:
        raise RecipeError("imdm eval", [
            f"sampling.num_samples: the human reference row needs {count} validation sequences of "
            f"{recipe.data.seq_len} tokens, but the validation split has {len(dataset)} (hold out more "
            "documents or lower sampling.num_samples)"])
    index = torch.linspace(0, len(dataset) - 1, count).round().long()
    tokens, valid = dataset.rows(index)
    return [row[keep].tolist() for row, keep in zip(tokens, valid)]


def generative_rows(run: LoadedRun, judge: Judge, device: torch.device) -> list[dict]:
    """One row per step count of `sampling.steps`, then one per `eval.frontier_temperatures`
    entry at the largest step count."""
    rows = _rows(run, judge, device, run.recipe.sampling.steps)
    for temperature in run.recipe.eval.frontier_temperatures:
        sampling = dataclasses.replace(run.recipe.sampling, temperature=temperature)
        tempered = dataclasses.replace(run, recipe=dataclasses.replace(run.recipe, sampling=sampling))
        rows += _rows(tempered, judge, device, [max(run.recipe.sampling.steps)])
    return rows


def _rows(run: LoadedRun, judge: Judge, device: torch.device, step_counts: list[int]) -> list[dict]:
    recipe, decode, rows = run.recipe, run.vocab.tokenizer.decode, []
    progress = recipe.logging.progress
    for steps in step_counts:
        samples, nfe = generate_samples(recipe, run.model, run.process, device, steps, progress)
        score = score_sequences(judge, samples, decode, progress, f"judging {steps} steps")
        amp = autocast_dtype(recipe, device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            tc = total_correlation(recipe, run.model, run.process, device, sampler_settings(recipe, steps), TC_GROUPS)
        rows.append({"steps": steps, "nfe": nfe, "temperature": recipe.sampling.temperature,
                     "gen_ppl": score["gen_ppl"], "entropy": score["entropy"], "num_samples": score["num_samples"],
                     "tokens": score["tokens"], "tc_nats": tc})
    return rows


def mauve_rows(run: LoadedRun, judge: Judge, device: torch.device) -> list[dict] | None:
    """MAUVE at each step count of `sampling.steps` when `conditional.enabled`, else None."""
    if not run.recipe.conditional.enabled:
        return None
    return [conditional_mauve(run.recipe, run.model, run.process, judge, device, steps)
            for steps in run.recipe.sampling.steps]


def evaluate_text_run(run: LoadedRun, run_dir: str, device: torch.device) -> dict:
    """The eval.json payload of a text run (imdm.eval.report writes it)."""
    recipe = run.recipe
    judge = load_judge(recipe.eval.judge, device, recipe.eval.judge_batch) if recipe.eval.judge else None
    rows, human, mauve = [], None, None
    if judge is None and recipe.conditional.enabled:
        raise RecipeError("imdm eval", ["conditional.enabled: MAUVE embeds text with the judge, but eval.judge is empty"])
    if judge is not None:
        references = human_sequences(recipe, recipe.sampling.num_samples) if has_validation_split(recipe) else None
        rows = generative_rows(run, judge, device)
        if references is not None:
            score = score_sequences(judge, references, run.vocab.tokenizer.decode, recipe.logging.progress,
                                    "judging human text")
            human = {k: score[k] for k in ("gen_ppl", "entropy", "num_samples")}
        mauve = mauve_rows(run, judge, device)
    return {"run_dir": str(run_dir), "step": run.step, "method": method_label(recipe), "judge": recipe.eval.judge,
            "rows": rows, "human": human, "zero_shot": evaluate_text(recipe, run.model, run.process, device),
            "mauve": mauve}
