"""ReDi and IM-ReDi (docs/method.md section 4), the objective `redi`: training on a teacher's couplings. The input is the stored
z_t at its stored t with, for IMDM, the mask states regenerated from the coupling's seed (the
very eps the teacher started from; never re-drawn), and the loss is the MDLM NELBO-weighted
cross-entropy toward the teacher's completion at the positions masked in z_t. Sampling and the
NELBO of real data stay with the base model (MaskedDiffusion)."""

from __future__ import annotations

import torch

from imdm.algorithms.masked_diffusion import MaskedDiffusion
from imdm.algorithms.protocol import Objective
from imdm.algorithms.registry import ObjectiveContext, ObjectiveSpec, ProcessSpec, register_objective
from imdm.data.coupling_store import coupling_path, read_manifest
from imdm.data.local_text import DataSourceError
from imdm.devices import host_to_device
from imdm.diffusion.times import sample_seeds
from imdm.models.dit import DiT
from imdm.recipe import Recipe


class Rectification(Objective):
    """Loss on coupling batches (z_t, t, coupling_seed beside x0 = the teacher's completion).
    `ignore_seed` feeds fresh mask states from (run seed, step, index) instead, for teachers
    whose completions do not depend on eps (MDLM)."""

    def __init__(self, base: MaskedDiffusion, ignore_seed: bool = False):
        self.base, self.ignore_seed = base, ignore_seed

    def loss(self, model: DiT, x0: torch.Tensor, global_index: torch.Tensor, global_batch: int, step: int,
             seed: int | None = None, valid: torch.Tensor | None = None, *, z_t: torch.Tensor, t: torch.Tensor,
             coupling_seed: torch.Tensor) -> torch.Tensor:
        """Sum over the micro-batch of (weight(t) * -log x_theta(z_t, eps)[x0]) at the positions
        masked in z_t (and valid), x0 being the teacher's completion; divide by the global
        valid-token count like the MDLM loss. `z_t` [B, L], `t` [B] and `coupling_seed` [B] are
        the coupling's stored fields (host tensors); `global_index`, `step` and `seed` only pick
        the fresh mask states of `ignore_seed`. The base's own mask-state rows (kernel choice
        included) make the eps bit for bit those the teacher's sampler drew from the seed."""
        seed = self.base.seed if seed is None else seed
        noise_seeds = sample_seeds(seed, step, global_index.cpu()) if self.ignore_seed else coupling_seed.cpu()
        z_t = z_t.cpu()
        return self.base.weighted_nll(model, x0, host_to_device(z_t, x0.device), t.cpu().to(torch.float32),
                                      noise_seeds, z_t == self.base.mask_id, valid)


MASK_STATE_KEYS = ("noise_dim", "noise_kind", "noise_scale", "num_masks")   # what turns a seed into eps


def _teacher_problems(recipe: Recipe, process: ProcessSpec, manifest: dict) -> list[str]:
    """Whether the coupling set's stored seeds give the student the eps its teacher started from."""
    a, teacher = recipe.algorithm, manifest["teacher"]
    if not process.mask_states or a.ignore_seed:
        return []
    if not teacher["mask_states"]:
        return [f"algorithm.ignore_seed: teacher '{teacher['run']}' has no mask states, so its completions do not "
                f"depend on the stored seeds; set algorithm.ignore_seed = true"]
    drew = teacher["algorithm"]
    return [f"algorithm.{key}: the teacher '{teacher['run']}' drew its mask states with {key} = {drew[key]!r}, the "
            f"recipe says {getattr(a, key)!r}; the seeds would give other eps"
            for key in MASK_STATE_KEYS if drew.get(key) != getattr(a, key)]


def _build(ctx: ObjectiveContext) -> Rectification:
    folder = coupling_path(ctx.recipe.run.output_dir, ctx.recipe.data.couplings)
    problems = _teacher_problems(ctx.recipe, ctx.spec, read_manifest(folder))
    if problems:
        raise DataSourceError(f"coupling set {folder}: " + "; ".join(problems))
    return Rectification(ctx.process, ctx.recipe.algorithm.ignore_seed)


def _check(recipe: Recipe, process: ProcessSpec) -> list[str]:
    problems = []
    if process.family != "masked":
        problems.append(f"algorithm.objective: 'redi' rectifies masked diffusion (mdlm, imdm), not '{process.name}'")
    if recipe.algorithm.ignore_seed and not process.mask_states:
        problems.append("algorithm.ignore_seed: only IM-ReDi (objective 'redi' on a process with mask states) "
                        "uses mask-state seeds")
    return problems


register_objective(ObjectiveSpec(
    "redi", "rectification: cross-entropy toward a teacher's completions of noised data (IM-ReDi with imdm)",
    _build, label=lambda process: ("im" if process.mask_states else "") + "redi", owns=("algorithm.ignore_seed",), data_source="couplings",
    check=_check))
