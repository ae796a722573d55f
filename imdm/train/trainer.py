"""The training loop: global-batch semantics over data-parallel ranks and micro-batches,
AdamW with warm-up, gradient clipping, EMA, bf16 autocast on GPU, atomic DCP checkpoints and
exact resume (every random number derives from (seed, step, index); the data loader's
position is saved per rank)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from imdm import rng
from imdm.build import build_algorithm, build_dataset, build_model, has_validation_split
from imdm.data.loader import make_loader
from imdm.data.order import GlobalBatchOrder
from imdm.parallel.data_parallel import broadcast_parameters, scale_gradients, sum_gradients
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
        self.dataset = build_dataset(recipe, recipe.data.split, dist.is_main)
        self.model = build_model(recipe, self.dataset.model_vocab, self.dataset.mask_id, self.device)
        broadcast_parameters(self.model)
        self.algorithm = build_algorithm(recipe, self.dataset.mask_id)
        o = recipe.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2),
                                           eps=o.eps, weight_decay=o.weight_decay)
        self.ema = EMA(self.model, recipe.train.ema_decay)
        order = GlobalBatchOrder(len(self.dataset), recipe.train.global_batch, recipe.data.seed)
        self.loader = make_loader(self.dataset, order, dist.rank, dist.world_size, recipe.train.micro_batch,
                                  recipe.data.num_workers)
        self.micro_per_step = recipe.train.global_batch // (recipe.train.micro_batch * dist.world_size)
        self.amp_dtype = autocast_dtype(recipe, self.device)
        self.step = 0
        self._batches = None

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd, "ema": self.ema.state_dict(),
                "progress": {"step": self.step}, "data": {f"rank_{self.dist.rank}": self.loader.state_dict()}}

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.state())
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        self.ema.load_state_dict(state["ema"])
        self.loader.load_state_dict(state["data"][f"rank_{self.dist.rank}"])
        self._batches = None
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

    def _next_batch(self) -> dict:
        if self._batches is None:
            self._batches = iter(self.loader)
        batch = next(self._batches)
        if batch["step"] != self.step:
            raise RuntimeError(f"data loader is at step {batch['step']}, training at {self.step}")
        return batch

    def train_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer step over the global batch: (global mean loss as a device tensor,
        seconds spent waiting for data)."""
        r = self.recipe
        factor = lr_factor(self.step, r.schedule.warmup_steps, r.train.steps, r.schedule.decay,
                           r.schedule.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = r.optimizer.lr * factor
        total = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device)
        waited = 0.0
        for _ in range(self.micro_per_step):
            tick = time.perf_counter()
            batch = self._next_batch()
            waited += time.perf_counter() - tick
            x0 = batch["tokens"].to(self.device, non_blocking=True)
            valid = batch["valid"].to(self.device, non_blocking=True)
            self._seed_dropout(int(batch["global_index"][0]))
            with self._autocast():
                loss_sum = self.algorithm.loss(self.model, x0, batch["global_index"], r.train.global_batch,
                                               self.step, valid=valid)
            loss_sum.backward()
            total += loss_sum.detach()
            count += valid.sum()
        all_reduce_sum(count)
        sum_gradients(self.model)
        scale_gradients(self.model, 1.0 / count)
        clip = r.optimizer.grad_clip
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        return all_reduce_sum(total) / count, waited

    @torch.no_grad()
    def validation_nelbo(self, model: torch.nn.Module) -> float:
        """Mean NELBO per valid token (nats) over `train.eval_batches` micro-batches of the
        validation split, in float64 (NaN when the source has no validation split)."""
        r = self.recipe
        if not has_validation_split(r):
            return float("nan")
        if not hasattr(self, "_val_dataset"):
            split = "validation" if r.data.source != "synthetic" else "train"
            self._val_dataset = build_dataset(r, split, self.dist.is_main)
        dataset = self._val_dataset
        model.eval()
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        gen = torch.Generator().manual_seed(r.data.seed + EVAL_SEED_OFFSET)
        for b in range(r.train.eval_batches):
            rows = torch.randint(0, len(dataset), (r.train.micro_batch,), generator=gen)
            tokens, valid = dataset.rows(rows)
            index = torch.arange(r.train.micro_batch)
            with self._autocast():
                loss = self.algorithm.loss(model, tokens.to(self.device), index, r.train.micro_batch, b,
                                           seed=r.run.seed + EVAL_SEED_OFFSET, valid=valid.to(self.device))
            total += loss.double()
            count += int(valid.sum())
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
        loss_value = float("nan")
        tokens_per_step = r.train.global_batch * self.dataset.seq_len
        tick, ticked_step, waited = time.perf_counter(), self.step, 0.0
        while self.step < r.train.steps:
            loss, wait = self.train_step()
            waited += wait
            if self.step % r.logging.every_steps == 0 or self.step == r.train.steps:
                loss_value = float(loss)
                now = time.perf_counter()
                rate = tokens_per_step * (self.step - ticked_step) / (now - tick) / self.dist.world_size
                log.write({"step": self.step, "loss": loss_value, "lr": self.optimizer.param_groups[0]["lr"],
                           "grad_norm": float(self.grad_norm), "tokens_per_s_per_rank": rate,
                           "data_wait_share": waited / (now - tick)})
                tick, ticked_step, waited = now, self.step, 0.0
            if r.train.eval_every and self.step % r.train.eval_every == 0:
                log.write({"step": self.step, "val_nelbo": self.validation_nelbo(self.model)})
            if r.checkpoint.every_steps and self.step % r.checkpoint.every_steps == 0 and self.step < r.train.steps:
                self.save()
        newest = latest_checkpoint(self.run_dir / "checkpoints")
        if newest is None or checkpoint_step(newest) != self.step:
            self.save()
        val = self.validation_nelbo(self.ema_model())
        log.write({"step": self.step, "val_nelbo_ema": val})
        return TrainResult(self.run_dir, self.step, loss_value, val)

    def ema_model(self) -> torch.nn.Module:
        """A copy of the model holding the EMA weights (what evaluation and sampling use)."""
        model = build_model(self.recipe, self.dataset.model_vocab, self.dataset.mask_id, self.device)
        self.ema.copy_to(model)
        return model.eval()
