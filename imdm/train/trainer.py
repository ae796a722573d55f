"""The training loop: global-batch semantics over data-parallel ranks and micro-batches (each
rank's loss sum is divided by the global valid-token count, or the objective's own count,
before backward), AdamW with warm-up, clipping, EMA sharded like the parameters, bf16
autocast on GPU, FSDP2/HSDP, atomic (optionally asynchronous) DCP checkpoints with exact
resume, SIGTERM and non-finite policies, and metrics (tokens/s, MFU, memory, data-wait share).

A step never waits for the GPU: fused AdamW skips a non-finite step on the device (its
`found_inf`), and what the host needs from the step (the gradient norm for the policy and the
logs, the ranks' agreed stop flag) is read one step late, by `settle`, which also applies that
step's EMA update. Everything that reads the EMA, the counters or the stop flag settles first."""

from __future__ import annotations

import dataclasses
import math
import pickle
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                     set_state_dict)

from imdm import rng
from imdm.build import autocast_dtype, build_dataset, build_model, build_objective, build_process, has_validation_split
from imdm.data.input_paths import missing_inputs
from imdm.data.loader import make_loader
from imdm.data.order import GlobalBatchOrder
from imdm.eval.perplexity import nelbo_per_token
from imdm.models.dit import count_parameters
from imdm.models.gemm_grad_linear import frozen_weight_copies, keep_weight_grads, zero_grads
from imdm.parallel.grad_norm import clip_grad_norm
from imdm.devices import host_to_device
from imdm.parallel.distributed import DistInfo, all_reduce_max, all_reduce_sum, checkpoint_group
from imdm.parallel.fsdp import reshard_all
from imdm.recipe import Recipe, RecipeError
from imdm.recipe.writer import recipe_to_toml
from imdm.parallel.checkpoint import (CheckpointError, CheckpointManager, checkpoint_step, latest_checkpoint,
                                     load_checkpoint, recovery_advice)
from imdm.parallel.ema import EMA
from imdm.train.faults import NonFinitePolicy, StopRequest, maybe_inject_failure
from imdm.train.flops import device_peak_flops, flops_per_token
from imdm.train.init_from_run import load_ema_weights
from imdm.train.lr import lr_factor
from imdm.train.metrics import MetricsLog, tensorboard_problems
from imdm.train.parallelize import training_model
from imdm.train.run_dir import prepare_run_dir
from imdm.train.step_report import StepReport

STREAM_DROPOUT = 13


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    val_nelbo: float
    stopped_early: bool = False
    stop_signal: int = signal.SIGTERM   # what stopped it early (another rank's signal: SIGTERM)


class Trainer:
    def __init__(self, recipe: Recipe, dist: DistInfo):
        self.recipe, self.dist = recipe, dist
        self.device = dist.device
        self.run_dir = Path(recipe.run.output_dir) / recipe.run.name
        problems = missing_inputs(recipe) + tensorboard_problems(recipe.logging.tensorboard)
        if problems:
            raise RecipeError(f"run '{recipe.run.name}'", problems)
        self.dataset = build_dataset(recipe, recipe.data.split, dist.is_main)
        self.model = training_model(recipe, self.dataset.model_vocab, self.dataset.mask_id, dist)
        self.process = build_process(recipe, self.dataset.mask_id, self.device)   # sampling and the NELBO
        self.objective = build_objective(recipe, self.process, self._teacher_model)
        o = recipe.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2),
                                           eps=o.eps, weight_decay=o.weight_decay, fused=True)
        # one rank: the block and mask-state matmuls accumulate weight gradients in the GEMM
        self.kept_grads = keep_weight_grads(self.model) if dist.world_size == 1 else []
        self.ema = EMA(self.model, recipe.train.ema_decay)
        order = GlobalBatchOrder(len(self.dataset), recipe.train.global_batch, recipe.data.seed)
        self.loader = make_loader(self.dataset, order, dist.rank, dist.world_size, recipe.train.micro_batch,
                                  recipe.data.num_workers)
        self.micro_per_step = recipe.train.global_batch // (recipe.train.micro_batch * dist.world_size)
        self.amp_dtype = autocast_dtype(recipe, self.device)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", recipe.checkpoint.keep_last, dist.is_main,
                                             recipe.checkpoint.async_save, checkpoint_group(dist))
        self.nonfinite = NonFinitePolicy(recipe.train.nonfinite, recipe.train.max_nonfinite)
        self.stop = StopRequest()
        self._report = StepReport(self.device, 2)    # (gradient norm, agreed stop flag)
        self._stop_agreed = False
        self.grad_norm = float("nan")
        self.staging_wait_s = 0.0
        self.step = 0
        self._batches = None
        self._val_dataset = None

    def _teacher_model(self) -> torch.nn.Module:
        """A model built and sharded like the student (no activation checkpointing: it never
        runs backward)."""
        p = dataclasses.replace(self.recipe.parallelism, activation_checkpointing="none", reshard_after_forward=True)
        return training_model(dataclasses.replace(self.recipe, parallelism=p), self.dataset.model_vocab,
                              self.dataset.mask_id, self.dist)

    # -- state ---------------------------------------------------------------------------
    def _layout(self) -> dict:
        return {"world_size": self.dist.world_size, "micro_batch": self.recipe.train.micro_batch,
                "num_workers": self.recipe.data.num_workers}

    def state(self, include_data: bool = True) -> dict:
        """The checkpointed state. A seed checkpoint (step 0) has no optimizer state: asking an
        optimizer without state for its state dict would initialise it with a step."""
        state = {"ema": self.ema.state_dict(), "progress": {"step": self.step, **self._layout()}}
        if self.step > 0:
            model_sd, state["optim"] = get_state_dict(self.model, self.optimizer)
        else:
            model_sd = get_model_state_dict(self.model)
        state["model"] = {k: v.detach() for k, v in model_sd.items()}   # plain tensors: DCP's GPU stager cannot copy Parameters
        objective_state = self.objective.state_dict()   # e.g. the distillation teacher
        if objective_state:
            state["algorithm"] = objective_state
        if include_data:   # pickled: the loader's state may hold objects DCP's stager cannot copy
            state["data"] = {f"rank_{self.dist.rank}": pickle.dumps(self.loader.state_dict())}
        return state

    def restore(self, path: Path) -> str:
        """Load a checkpoint; with another layout (world size, micro-batch, loader workers) the
        parameters, optimizer and EMA are resharded and the data position is rebuilt from the
        step. A seed checkpoint (step 0) holds no optimizer or loader state. An unsettled step's
        report is dropped with the state it belonged to."""
        for p in self.kept_grads:   # DCP gives an empty optimizer its state only while no .grad exists
            p.grad = None
        try:
            return self._load(path)
        finally:
            if self.kept_grads:
                keep_weight_grads(self.model)

    def _load(self, path: Path) -> str:
        self._report.discard()
        saved = load_checkpoint(path, {"progress": {"step": 0, **self._layout()}})["progress"]
        same_layout = all(saved[k] == v for k, v in self._layout().items())
        self.step = int(saved["step"])     # the state template below follows it (no optimizer at step 0)
        seed_only = self.step == 0
        state = load_checkpoint(path, self.state(include_data=same_layout and not seed_only))
        if seed_only:
            set_model_state_dict(self.model, state["model"])
        else:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.ema.load_state_dict(state["ema"])
        if "algorithm" in state:
            self.objective.load_state_dict(state["algorithm"])
        self.step = int(state["progress"]["step"])
        if self.step != checkpoint_step(path):
            raise CheckpointError(f"{path}: meta step {checkpoint_step(path)} != stored step {self.step}; "
                                  f"{recovery_advice(path)}")
        if same_layout and not seed_only:
            self.loader.load_state_dict(pickle.loads(state["data"][f"rank_{self.dist.rank}"]))
        else:
            self.loader.batch_sampler.position = self.step * self.micro_per_step
        self._batches = None
        return "" if same_layout else (f"resharded from {saved['world_size']} ranks x micro-batch "
                                       f"{saved['micro_batch']} x {saved['num_workers']} loader workers to "
                                       f"{self.dist.world_size} x {self.recipe.train.micro_batch} x "
                                       f"{self.recipe.data.num_workers}")

    def save(self) -> float:
        self.settle()
        return self.checkpoints.save(self.step, self.state(), recipe_to_toml(self.recipe))

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

    def _loss_count(self, batch: dict) -> float:
        """Host count of the positions this micro-batch's loss is averaged over (the objective's
        `loss_count`: valid tokens for the NELBO, masked ones for distillation)."""
        return float(self.objective.loss_count(batch["global_index"], self.recipe.train.global_batch, self.step,
                                               batch["valid"]))

    def train_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer step over the global batch: (global mean loss as a device tensor,
        seconds spent waiting for data)."""
        r = self.recipe
        maybe_inject_failure(self.step, self.dist.rank)
        factor = lr_factor(self.step, r.schedule.warmup_steps, r.train.steps, r.schedule.decay, r.schedule.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = r.optimizer.lr * factor
        tick = time.perf_counter()
        batches = [self._next_batch() for _ in range(self.micro_per_step)]
        waited = time.perf_counter() - tick
        self.objective.begin_step(self.step, self.model)   # e.g. a distillation round starts
        local_count = sum(self._loss_count(b) for b in batches)   # CPU tensors: no device sync
        if self.dist.world_size > 1:
            count = all_reduce_sum(host_to_device(torch.tensor(local_count), self.device)).clamp_min(1.0)
        else:
            count = max(local_count, 1.0)
        total = torch.zeros((), device=self.device)
        sharded = self.dist.world_size > 1   # FSDP2 (training_model shards every multi-rank run)
        with frozen_weight_copies(self.model, self.amp_dtype):   # the kept-gradient layers' weights, cast once
            for i, batch in enumerate(batches):
                if sharded:   # reduce gradients and reshard parameters once per step, after the last micro-batch
                    last = i == len(batches) - 1
                    self.model.set_requires_gradient_sync(last)
                    self.model.set_reshard_after_backward(last)
                x0 = batch["tokens"].to(self.device, non_blocking=True)
                self._seed_dropout(int(batch["global_index"][0]))
                with self._autocast():
                    loss_sum = self.objective.loss(self.model, x0, batch["global_index"], r.train.global_batch,
                                                   self.step, valid=batch["valid"], **batch.get("extras", {}))
                (loss_sum * (self.dist.world_size / count)).backward()   # FSDP averages over ranks
                total += loss_sum.detach()
        self.staging_wait_s = self.checkpoints.wait_for_staging()   # a save's copy is off the state
        self.settle()   # the previous step's report: queued a whole step ago, so this rarely waits
        clip = r.optimizer.grad_clip
        grad_norm = clip_grad_norm(self.model.parameters(), clip if clip > 0 else math.inf).float()
        stop = torch.zeros((), device=self.device)
        if self.dist.world_size > 1:   # every rank stops together if any was asked to
            stop = all_reduce_max(host_to_device(torch.tensor(float(self.stop.requested)), self.device))
        self._report.write(self.step, torch.stack([grad_norm, stop]))
        self.optimizer.found_inf = (~torch.isfinite(grad_norm)).float()   # fused AdamW skips such a step
        self.optimizer.step()
        zero_grads(self.model.parameters(), self.kept_grads)
        self.step += 1
        return all_reduce_sum(total) / count, waited

    def settle(self) -> None:
        """Read the last step's report and finish that step: the non-finite policy (which may
        stop the run), its EMA update (none for a skipped step) and the ranks' stop agreement."""
        report = self._report.read()
        if report is None:
            return
        step, (self.grad_norm, stop) = report
        self._stop_agreed = stop > 0
        if self.nonfinite.observe(math.isfinite(self.grad_norm), step):
            self.ema.update(self.model)

    @property
    def stop_requested(self) -> bool:
        """Whether to save and stop now: this process's signal, or with several ranks the
        agreement read from the last settled step (the same on every rank)."""
        return self.stop.requested if self.dist.world_size == 1 else self._stop_agreed

    def validation_nelbo(self, model: torch.nn.Module) -> float | None:
        """Mean NELBO per valid token (nats) over the first `train.eval_batches` micro-batches of
        the validation split, exactly as `imdm eval` computes it (None without a validation
        split, e.g. a coupling set: nothing is logged then)."""
        r = self.recipe
        if not has_validation_split(r):
            return None
        if self._val_dataset is None:
            self._val_dataset = build_dataset(r, "validation", self.dist.is_main)
        nelbo, _ = nelbo_per_token(model, self.process, self._val_dataset, r.train.micro_batch, r.train.eval_batches,
                                   self.device, r.run.seed)
        reshard_all(model)   # the EMA update and the optimizer work on the shards
        return nelbo

    # -- loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        r = self.recipe
        created = _first_missing(self.run_dir) if self.dist.is_main else None
        try:
            log, finished = self._start()
        except BaseException:
            if created is not None:   # a run that fails at its start leaves no half-made folder
                shutil.rmtree(created, ignore_errors=True)
            raise
        self.stop.install()
        try:
            loss_value = self._loop(log)
        finally:
            self.stop.uninstall()
            self.checkpoints.close()
        stopped = self.step < r.train.steps
        if stopped:
            log.write({"step": self.step, "event": "stopped by signal after saving"})
            val = None
        elif finished is not None:   # a finished run run again: its evaluation line is there already
            val = finished["val_nelbo_ema"]
        else:
            val = self.validation_nelbo(self.ema_model())
            if val is not None:
                log.write({"step": self.step, "val_nelbo_ema": val})
        log.close()
        return TrainResult(self.run_dir, self.step, loss_value, float("nan") if val is None else val, stopped,
                           self.stop.signum or signal.SIGTERM)

    def _start(self) -> tuple[MetricsLog, dict | None]:
        """Create or reopen the run directory and restore or initialise the state. Returns the
        metrics log and, for a run that had already finished, its logged evaluation record."""
        r = self.recipe
        prepare_run_dir(self.run_dir, r, self.dist.is_main)
        log = MetricsLog(self.run_dir if self.dist.is_main else None, r.logging.progress and self.dist.is_main,
                         r.logging.tensorboard)
        ckpt = latest_checkpoint(self.run_dir / "checkpoints") if r.checkpoint.resume else None
        if ckpt is not None:
            note = self.restore(ckpt)
            log.write({"step": self.step, "event": f"resumed from {ckpt.name}" + (f"; {note}" if note else "")})
            return log, log.logged("val_nelbo_ema", self.step) if self.step >= r.train.steps else None
        log.write({"step": 0, "event": f"model of {count_parameters(self.model):,} parameters"})
        if r.init.from_run:
            source = load_ema_weights(r.init.from_run, r.run.output_dir, self.model)
            self.ema.restart(self.model)   # averages start from the loaded weights
            log.write({"step": 0, "event": f"initialised from run {r.init.from_run} step {source.step}"
                                           + (f"; new: {', '.join(source.new_keys)}" if source.new_keys else "")})
        if r.checkpoint.seed_checkpoint:
            self.save()
        return log, None

    def _loop(self, log: MetricsLog) -> float:
        r = self.recipe
        self.model.train()
        loss_value = float("nan")
        flops = flops_per_token(build_model(r, self.dataset.model_vocab, self.dataset.mask_id, "meta"),
                                self.dataset.seq_len)
        peak = device_peak_flops(self.device)
        tokens_per_step = r.train.global_batch * self.dataset.seq_len
        tick, ticked_step, waited = time.perf_counter(), self.step, 0.0
        while self.step < r.train.steps:
            loss, wait = self.train_step()
            waited += wait
            self.checkpoints.poll()
            if self.step % r.logging.every_steps == 0 or self.step == r.train.steps:
                self.settle()
                loss_value = float(loss)
                now = time.perf_counter()
                rate = tokens_per_step * (self.step - ticked_step) / (now - tick) / self.dist.world_size
                record = {"step": self.step, "loss": loss_value, "lr": self.optimizer.param_groups[0]["lr"],
                          "grad_norm": self.grad_norm, "tokens_per_s_per_gpu": rate,
                          "data_wait_share": waited / (now - tick), "nonfinite_skipped": self.nonfinite.total}
                if peak:
                    record["mfu"] = rate * flops / peak
                if self.device.type == "cuda":
                    record["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
                log.write(record)
                tick, ticked_step, waited = now, self.step, 0.0
            if r.train.eval_every and self.step % r.train.eval_every == 0:
                val = self.validation_nelbo(self.model)
                if val is not None:
                    log.write({"step": self.step, "val_nelbo": val})
            periodic = r.checkpoint.every_steps and self.step % r.checkpoint.every_steps == 0
            stop = self.stop_requested   # read once: a signal arriving after the save waits for the next step
            if stop or periodic or self.step == r.train.steps:
                stall = self.save()
                log.write({"step": self.step, "event": "checkpoint", "stall_s": stall})
            if stop:
                break
        return loss_value

    def ema_model(self) -> torch.nn.Module:
        """An unsharded copy of the model holding the EMA weights (what evaluation and sampling use)."""
        self.settle()
        model = build_model(self.recipe, self.dataset.model_vocab, self.dataset.mask_id, self.device)
        self.ema.copy_to(model)
        return model.eval()


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` (itself included) that does not exist yet, or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing
