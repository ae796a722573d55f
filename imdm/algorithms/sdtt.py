"""SDTT and IM-SDTT (docs/method.md section 3), the objective `sdtt`: the student learns in one
step what a frozen teacher does in two ancestral steps of size dt; every round dt doubles and
the teacher becomes a copy of the student. IM-SDTT is SDTT with one mask-state tensor eps
handed to teacher and student alike: it runs when the process has mask states (imdm)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from imdm.algorithms.divergences import divergence
from imdm.algorithms.masked_diffusion import MaskedDiffusion, padded_nonzero, row_indices
from imdm.algorithms.protocol import Objective
from imdm.algorithms.registry import ObjectiveContext, ObjectiveSpec, ProcessSpec, register_objective
from imdm.algorithms.teacher_rollout import teacher_targets
from imdm.devices import host_to_device
from imdm.diffusion.forward_process import apply_mask
from imdm.diffusion.times import T_MIN
from imdm.parallel.ema import named_parameters
from imdm.recipe import Recipe


@dataclass(frozen=True)
class Rounds:
    """Round r covers steps [r * round_steps, (r + 1) * round_steps) with dt = dt_0 * 2^r,
    dt_0 = (1 - T_MIN) / teacher_steps; the teacher is refreshed at the start of each round."""
    round_steps: int
    teacher_steps: int

    def index(self, step: int) -> int:
        return step // self.round_steps

    def dt(self, step: int) -> float:
        return (1 - T_MIN) / self.teacher_steps * 2 ** self.index(step)

    def refreshes_at(self, step: int) -> bool:
        return step % self.round_steps == 0


@torch.no_grad()
def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """target's parameters <- source's (same architecture and sharding; wrapper names ignored)."""
    src = named_parameters(source)
    for name, p in named_parameters(target).items():
        p.copy_(src[name].detach())


class Distillation(Objective):
    """Loss (divergence to the teacher's targets, summed over scored masked positions), its host
    count, the round hook and the teacher's checkpoint state. `base` supplies the schedule,
    mask id, seed and mask-state noise; it stays the algorithm for sampling and the NELBO."""

    def __init__(self, base: MaskedDiffusion, teacher: nn.Module, rounds: Rounds, kind: str = "kl_bwd"):
        self.base, self.rounds, self.kind = base, rounds, kind
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_step = -1          # the step whose start last copied the student into the teacher
        self._draws_of_step = (None, {})

    def _draws(self, seed: int, step: int, global_index: torch.Tensor, global_batch: int, seq_len: int):
        """base.draws, made once per micro-batch: the trainer asks `loss_count` for every
        micro-batch of a step before `loss` runs on each."""
        if self._draws_of_step[0] != (seed, step):
            self._draws_of_step = ((seed, step), {})
        cache = self._draws_of_step[1]
        key = (tuple(global_index.tolist()), global_batch, seq_len)
        if key not in cache:
            cache[key] = self.base.draws(seed, step, global_index, global_batch, seq_len)
        return cache[key]

    @property
    def schedule(self):
        return self.base.schedule

    @property
    def mask_id(self) -> int:
        return self.base.mask_id

    def begin_step(self, step: int, student: nn.Module) -> bool:
        """At the start of a round the teacher becomes a copy of the student (not its EMA).
        Returns whether it did."""
        if not self.rounds.refreshes_at(step) or self.teacher_step == step:
            return False
        copy_weights(student, self.teacher)
        self.teacher_step = step
        return True

    def loss_count(self, global_index: torch.Tensor, global_batch: int, step: int, valid: torch.Tensor,
                   seed: int | None = None) -> int:
        """How many positions `loss` scores (masked and valid), computed on the host."""
        seed = self.base.seed if seed is None else seed
        _, _, masked = self._draws(seed, step, global_index, global_batch, valid.shape[1])
        return int((masked & valid.cpu()).sum())

    def loss(self, model: nn.Module, x0: torch.Tensor, global_index: torch.Tensor, global_batch: int,
             step: int, seed: int | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over this micro-batch's scored positions of the divergence between the student's
        one-pass x_theta(z_t, eps) and the teacher's two-step targets; divide by the global
        `loss_count` for the training loss. t, z_t, eps and the teacher's draws derive from
        (seed, step, index)."""
        seed = self.base.seed if seed is None else seed
        device, seq_len = x0.device, x0.shape[1]
        t, seeds, masked = self._draws(seed, step, global_index, global_batch, seq_len)
        row_index = row_indices(masked, valid, device, self.base.row_bucket)
        rows, scored_rows = row_index.masked, row_index.scored
        to_device = functools.partial(host_to_device, device=device)
        seeds_dev = to_device(seeds)
        z = apply_mask(x0, to_device(masked), self.mask_id)
        noise = self.base.noise(seeds_dev, seq_len)

        def denoise(z_k: torch.Tensor, t_k: torch.Tensor) -> torch.Tensor:
            return self.teacher(z_k, noise, self.schedule.sigma(to_device(t_k.float())), select=rows)

        targets = teacher_targets(denoise, z, rows, seeds_dev, t.double(), self.rounds.dt(step), self.schedule,
                                  self.mask_id, self.base.posterior, row_index.n_masked).logits
        if valid is not None:   # the scored rows among the masked ones, padded as scored_rows is
            (kept,), _ = padded_nonzero(valid.cpu()[masked], self.base.row_bucket)
            targets = targets.index_select(0, to_device(kept))
        logits = model(z, None if noise is None else noise[rows], self.schedule.sigma(to_device(t)),
                       select=scored_rows, noise_index=row_index.real_masked)
        per_row = divergence(logits, targets, self.mask_id, self.kind)
        return per_row[: row_index.n_scored].sum()   # padding rows (the base's row_bucket) score nothing

    def state_dict(self) -> dict:
        return {"teacher": {n: p.detach() for n, p in named_parameters(self.teacher).items()},
                "teacher_step": self.teacher_step}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        params = named_parameters(self.teacher)
        for name, value in state["teacher"].items():
            params[name].copy_(value)
        self.teacher_step = int(state["teacher_step"])


def _build(ctx: ObjectiveContext) -> Distillation:
    d = ctx.recipe.distill
    return Distillation(ctx.process, ctx.make_teacher(), Rounds(d.round_steps, d.teacher_steps), d.divergence)


def _check(recipe: Recipe, process: ProcessSpec) -> list[str]:
    d, problems = recipe.distill, []
    if process.family != "masked":
        problems.append(f"algorithm.objective: 'sdtt' distils masked diffusion (mdlm, imdm), not '{process.name}'")
    if not recipe.init.from_run:
        problems.append("init.from_run: distillation starts from a trained model; name its run")
    if d.teacher_steps < 2 ** d.rounds:
        problems.append(f"distill.teacher_steps: {d.teacher_steps} steps cannot halve {d.rounds} times "
                        f"(distill.rounds); need at least {2 ** d.rounds}")
    if recipe.train.steps > d.rounds * d.round_steps:
        problems.append(f"train.steps: {recipe.train.steps} runs past the last round (distill.rounds x "
                        f"distill.round_steps = {d.rounds * d.round_steps})")
    return problems


register_objective(ObjectiveSpec(
    "sdtt", "self-distillation through time: one student step matches two teacher steps (IM-SDTT with imdm)",
    _build, label=lambda process: ("im" if process.mask_states else "") + "sdtt", owns=("distill",),
    check=_check))
