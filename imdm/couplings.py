"""Coupling generation for ReDi / IM-ReDi (docs/method.md section 4): training sequence i (in a fixed
seeded order) gets a seed s_i from (generation seed, i); t_i ~ U(0, 1) mapped into the
schedule's range [1e-3, 1] and the mask of z_t = q(z_t | x_i) derive from s_i, and the
teacher's ancestral sampler completes z_t from t_i with s_i as its sample seed (so its starting
mask states are those s_i gives). Chunks of the set are spread over every rank; each rank writes
its own rows into the shared memory-mapped set (imdm.data.coupling_store), so an interrupted
generation resumes with neither duplicates nor gaps."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from imdm import rng
from imdm.algorithms.registry import process_spec
from imdm.build import autocast_dtype, build_dataset, sampler_settings
from imdm.data.coupling_store import FORMAT_VERSION, CouplingWriter, coupling_path, create_coupling_set, read_manifest
from imdm.data.order import GlobalBatchOrder
from imdm.diffusion.forward_process import apply_mask, mask_positions
from imdm.diffusion.times import T_MIN
from imdm.parallel.distributed import DistInfo, barrier
from imdm.recipe import Recipe, RecipeError
from imdm.recipe.loader import read_toml
from imdm.recipe.writer import recipe_to_toml
from imdm.run_loading import LoadedRun, load_named_run
from imdm.sampling.ancestral import SamplerSettings, generation_seeds

FAIL_AFTER_ENV = "IMDM_COUPLINGS_FAIL_AFTER"


def coupling_starts(seeds: torch.Tensor, clean: torch.Tensor | None, schedule, mask_id: int, seq_len: int,
                    start: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(t float64 [B], z_t int64 [B, L]) of each sample from its seed: 'perturbed' masks `clean`
    at t = (1 - 1e-3) u + 1e-3, u ~ U(0, 1); 'all_mask' is t = 1 and every position masked."""
    if start == "all_mask":
        return (torch.ones(len(seeds), dtype=torch.float64),
                torch.full((len(seeds), seq_len), mask_id, dtype=torch.int64))
    u = rng.uniform53(seeds, torch.zeros_like(seeds), rng.STREAM_TIME)
    t = (1 - T_MIN) * u + T_MIN
    masked = mask_positions(seeds, seq_len, 1 - schedule.alpha(t))
    return t, apply_mask(clean, masked, mask_id)


@torch.no_grad()
def complete(process, model: torch.nn.Module, settings: SamplerSettings, seeds: torch.Tensor, z: torch.Tensor,
             t: torch.Tensor) -> torch.Tensor:
    """The teacher's completion of every z_t from its own t (one grid per sample), with the
    sample's seed."""
    return process.sample(model, settings, seeds, z.shape[1], start=z, t_start=t).tokens


def _maybe_fail(chunks_written: int, rank: int) -> None:
    """IMDM_COUPLINGS_FAIL_AFTER=K[:RANK] kills this process once it has written K chunks, on the
    first attempt only (restart tests)."""
    spec = os.environ.get(FAIL_AFTER_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    count, _, who = spec.partition(":")
    if chunks_written == int(count) and (not who or int(who) == rank):
        os._exit(17)


def _chunk(recipe: Recipe, teacher: LoadedRun, settings: SamplerSettings, dataset, order: GlobalBatchOrder,
           index: range, device: torch.device) -> dict[str, torch.Tensor]:
    """Couplings `index`: the arrays of the set for those rows."""
    c = recipe.couplings
    seeds = generation_seeds(c.seed, index.start, len(index), rng.STREAM_COUPLING_SEED)
    clean, length = None, torch.full((len(index),), dataset.seq_len, dtype=torch.int32)
    if c.start == "perturbed":
        clean, valid = dataset.rows(torch.cat([order.global_rows(i) for i in index]))
        length = valid.sum(dim=1, dtype=torch.int32)
    t, z = coupling_starts(seeds, clean, teacher.process.schedule, dataset.mask_id, dataset.seq_len, c.start)
    x0 = complete(teacher.process, teacher.model, settings, seeds.to(device), z.to(device), t)
    if bool((x0 == dataset.mask_id).any()):
        raise RuntimeError(f"couplings {index.start}..{index.stop - 1}: the teacher left masked positions")
    return {"z": z, "x0": x0, "t": t, "seed": seeds, "length": length}


def _manifest(recipe: Recipe, teacher: LoadedRun, dataset, settings: SamplerSettings, precision: str) -> dict:
    c = recipe.couplings
    data = {k: v for k, v in dataclasses.asdict(recipe.data).items() if k not in ("num_workers", "store_dir")}
    tokenizer = None if recipe.data.source == "synthetic" else dataclasses.asdict(recipe.tokenizer)
    return {"format_version": FORMAT_VERSION, "num": c.num, "chunk": c.chunk, "seq_len": dataset.seq_len,
            "model_vocab": dataset.model_vocab, "mask_id": dataset.mask_id,
            "teacher": {"run": c.teacher_run, "checkpoint": teacher.checkpoint.name, "step": teacher.step,
                        "mask_states": process_spec(teacher.recipe).mask_states,
                        "algorithm": dataclasses.asdict(teacher.recipe.algorithm)},
            "generation": {"seed": c.seed, "steps": c.steps, "start": c.start, "precision": precision,
                           "sampler": dataclasses.asdict(settings)},
            "data": data, "tokenizer": tokenizer}


def _check(recipe: Recipe) -> None:
    problems = []
    if not recipe.couplings.teacher_run:
        problems.append("couplings.teacher_run: name the run whose EMA weights complete the couplings")
    if recipe.data.source == "couplings":
        problems.append("data.source: couplings are generated from real training sequences, not from a coupling set")
    if problems:
        raise RecipeError("imdm couplings", problems)


def _earlier_round_seeds(output_dir: str, teacher_run: str) -> dict[int, str]:
    """{generation seed: coupling set} of every coupling set the teacher was trained on, and its
    own teacher's, back to the first round of a chain of rectifications."""
    seeds, run = {}, teacher_run
    while run:
        trained = read_toml(str(Path(output_dir) / run / "recipe.toml"))[1]
        data = trained.get("data", {})
        if data.get("source") != "couplings":
            break
        manifest = read_manifest(coupling_path(output_dir, data["couplings"])) or {}
        seeds.setdefault(manifest.get("generation", {}).get("seed"), data["couplings"])
        run = manifest.get("teacher", {}).get("run")
    return seeds


def generate_couplings(recipe: Recipe, dist: DistInfo) -> Path:
    """Generate (or finish) the coupling set of `recipe` into run.output_dir/run.name/couplings,
    every rank taking its share of the chunks; returns the set's folder once complete."""
    _check(recipe)
    c, device = recipe.couplings, dist.device
    teacher = load_named_run(recipe.run.output_dir, c.teacher_run, "couplings.teacher_run", device)
    if process_spec(teacher.recipe).family != "masked":
        raise RecipeError("imdm couplings", [f"couplings.teacher_run: run '{c.teacher_run}' has algorithm.name "
                                             f"'{teacher.recipe.algorithm.name}'; completing noised data needs a "
                                             f"masked diffusion teacher (mdlm, imdm)"])
    reused = _earlier_round_seeds(recipe.run.output_dir, c.teacher_run).get(c.seed)
    if reused is not None:
        raise RecipeError("imdm couplings", [f"couplings.seed: {c.seed} generated '{reused}', which teacher "
                                             f"'{c.teacher_run}' (or its own teacher) was trained on; a new round "
                                             f"needs fresh mask states: choose another seed"])
    dataset = build_dataset(recipe, "train", dist.is_main)
    if (dataset.model_vocab, dataset.mask_id) != (teacher.vocab.model_vocab, teacher.vocab.mask_id):
        raise RecipeError("imdm couplings", [f"data: {dataset.model_vocab} outputs (mask id {dataset.mask_id}) but "
                                             f"teacher '{c.teacher_run}' has {teacher.vocab.model_vocab} "
                                             f"(mask id {teacher.vocab.mask_id})"])
    settings = sampler_settings(dataclasses.replace(recipe, algorithm=teacher.recipe.algorithm), c.steps)
    amp = autocast_dtype(recipe, device)
    folder = coupling_path(recipe.run.output_dir, recipe.run.name)
    if dist.is_main:
        manifest = _manifest(recipe, teacher, dataset, settings, "bf16" if amp is not None else "fp32")
        create_coupling_set(folder, manifest, recipe_to_toml(recipe))
    barrier()
    writer = CouplingWriter(folder)
    if writer.manifest.get("complete"):
        return folder
    order = GlobalBatchOrder(len(dataset), 1, recipe.data.seed)
    bar = tqdm(total=writer.num, initial=writer.done_rows(), unit="pair", desc="couplings", file=sys.stderr,
               disable=not dist.is_main, dynamic_ncols=True)
    for written, chunk in enumerate(writer.pending(dist.rank, dist.world_size), start=1):
        index = writer.rows(chunk)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            arrays = _chunk(recipe, teacher, settings, dataset, order, index, device)
        writer.write(chunk, arrays, dist.rank)
        _maybe_fail(written, dist.rank)
        bar.update(writer.done_rows() - bar.n)
    barrier()
    if dist.is_main:
        writer.mark_complete()
        bar.update(writer.num - bar.n)
    bar.close()
    barrier()
    return folder
