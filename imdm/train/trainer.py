"""The training loop: global-batch semantics over data-parallel ranks and micro-batches,
AdamW with warm-up, gradient clipping, EMA, bf16 autocast on GPU, atomic DCP checkpoints and
exact resume (every random number derives from (seed, step, index))."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from imdm import rng
from imdm.build import build_algorithm, build_dataset, build_model
from imdm.data.order import GlobalBatchOrder
from imdm.parallel.data_parallel import broadcast_parameters, sum_gradients
from imdm.parallel.distributed import DistInfo, all_reduce_sum
from imdm.recipe import Recipe
from imdm.recipe.writer import recipe_to_toml
from imdm.train.checkpoint import checkpoint_step, latest_checkpoint, load_checkpoint, save_checkpoint
from imdm.train.ema import EMA
from imdm.train.lr import lr_factor
from imdm.train.metrics import MetricsLog
from imdm.train.run_dir import prepare_run_dir

STREAM_DROPOUT = 13
EVAL_SEED_OFFSET = 7_777_777


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    val_nelbo: float


def autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    p = recipe.train.precision
    if p == "bf16" or (p == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class Trainer:
    def __init__(self, recipe: Recipe, dist: DistInfo):
        self.recipe, self.dist = recipe, dist
        self.device = dist.device
        self.run_dir = Path(recipe.run.output_dir) / recipe.run.name
        self.dataset = build_dataset(recipe)
        self.model = build_model(recipe, self.dataset.model_vocab, self.dataset.mask_id, self.device)
        broadcast_parameters(self.model)
        self.algorithm = build_algorithm(recipe, self.dataset.mask_id)
        o = recipe.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2),
                                           eps=o.eps, weight_decay=o.weight_decay)
        self.ema = EMA(self.model, recipe.train.ema_decay)
        self.order = GlobalBatchOrder(len(self.dataset), recipe.train.global_batch, recipe.data.seed)
        self.amp_dtype = autocast_dtype(recipe, self.device)
        self.step = 0

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd, "ema": self.ema.state_dict(),
                "progress": {"step": self.step}}

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.state())
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["progress"]["step"])
        if self.step != checkpoint_step(path):
            raise RuntimeError(f"{path}: meta step {checkpoint_step(path)} != stored step {self.step}")

    def save(self) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints", self.step, self.state(),
                               recipe_to_toml(self.recipe), self.dist.is_main,
                               self.recipe.checkpoint.keep_last)

    # -- steps ---------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _seed_dropout(self, first_index: int) -> None:
        """Dropout masks depend on (seed, step, micro-batch position in the global batch) only,
        so they survive a resume and match across layouts with the same micro-batch."""
        counter = torch.tensor(self.step * self.recipe.train.global_batch + first_index)
        torch.manual_seed(int(rng.derive_seed(self.recipe.run.seed, counter, STREAM_DROPOUT)))

    def train_step(self) -> torch.Tensor:
        """One optimizer step over the global batch; returns the global mean loss (device tensor)."""
        r = self.recipe
        factor = lr_factor(self.step, r.schedule.warmup_steps, r.train.steps, r.schedule.decay,
                           r.schedule.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = r.optimizer.lr * factor
        rows = self.order.global_rows(self.step)
        n_tokens = r.train.global_batch * self.dataset.seq_len
        total = torch.zeros((), device=self.device)
        for index in self.order.rank_slices(self.dist.rank, self.dist.world_size, r.train.micro_batch):
            x0 = self.dataset.tokens(rows[index]).to(self.device)
            self._seed_dropout(int(index[0]))
            with self._autocast():
                loss_sum = self.algorithm.loss(self.model, x0, index, r.train.global_batch, self.step)
            (loss_sum / n_tokens).backward()
            total += loss_sum.detach()
        sum_gradients(self.model)
        clip = r.optimizer.grad_clip
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        return all_reduce_sum(total) / n_tokens

    @torch.no_grad()
    def validation_nelbo(self, model: torch.nn.Module) -> float:
        """Mean NELBO per token (nats) over `train.eval_batches` held-out draws, in float64."""
        r = self.recipe
        model.eval()
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        gen = torch.Generator().manual_seed(r.data.seed + EVAL_SEED_OFFSET)
        for b in range(r.train.eval_batches):
            rows = torch.randint(0, len(self.dataset), (r.train.micro_batch,), generator=gen)
            x0 = self.dataset.tokens(rows).to(self.device)
            index = torch.arange(r.train.micro_batch)
            with self._autocast():
                loss = self.algorithm.loss(model, x0, index, r.train.micro_batch, b, seed=r.run.seed + EVAL_SEED_OFFSET)
            total += loss.double()
            count += x0.numel()
        model.train()
        return float(total) / count

    # -- loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        r = self.recipe
        prepare_run_dir(self.run_dir, r, self.dist.is_main)
        ckpt = latest_checkpoint(self.run_dir / "checkpoints") if r.checkpoint.resume else None
        if ckpt is not None:
            self.restore(ckpt)
        log = MetricsLog(self.run_dir / "metrics.jsonl" if self.dist.is_main else None,
                         r.logging.progress and self.dist.is_main)
        if ckpt is not None:
            log.write({"step": self.step, "event": f"resumed from {ckpt.name}"})
        self.model.train()
        loss_value, val = float("nan"), float("nan")
        tokens_per_step = r.train.global_batch * self.dataset.seq_len
        tick, ticked_step = time.perf_counter(), self.step
        while self.step < r.train.steps:
            loss = self.train_step()
            if self.step % r.logging.every_steps == 0 or self.step == r.train.steps:
                loss_value = float(loss)
                now = time.perf_counter()
                rate = tokens_per_step * (self.step - ticked_step) / (now - tick) / self.dist.world_size
                tick, ticked_step = now, self.step
                log.write({"step": self.step, "loss": loss_value, "lr": self.optimizer.param_groups[0]["lr"],
                           "grad_norm": float(self.grad_norm), "tokens_per_s_per_rank": rate})
            if r.train.eval_every and self.step % r.train.eval_every == 0:
                log.write({"step": self.step, "val_nelbo": self.validation_nelbo(self.model)})
            if r.checkpoint.every_steps and self.step % r.checkpoint.every_steps == 0 and self.step < r.train.steps:
                self.save()
        if latest_checkpoint(self.run_dir / "checkpoints") is None or \
                checkpoint_step(latest_checkpoint(self.run_dir / "checkpoints")) != self.step:
            self.save()
        val = self.validation_nelbo(self.ema_model())
        log.write({"step": self.step, "val_nelbo_ema": val})
        return TrainResult(self.run_dir, self.step, loss_value, val)

    def ema_model(self) -> torch.nn.Module:
        """A copy of the model holding the EMA weights (what evaluation and sampling use)."""
        model = build_model(self.recipe, self.dataset.model_vocab, self.dataset.mask_id, self.device)
        self.ema.copy_to(model)
        return model.eval()
