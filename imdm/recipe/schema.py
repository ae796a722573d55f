"""Typed sections of a recipe. Each field's metadata carries its allowed values; checks that
span fields live in `Recipe.cross_checks`, and what an algorithm requires of a recipe in its
registered spec (imdm.algorithms.registry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_SIZES = {
    # name: (d_model, n_blocks, n_heads), docs/method.md section 7
    "synthetic": (128, 4, 4),
    "small": (768, 12, 12),
    "medium": (1024, 24, 16),
    "large": (1536, 24, 16),
}


def spec(default: Any = None, *, choices: tuple | None = None, gt: float | None = None,
         ge: float | None = None, le: float | None = None, doc: str = "", factory=None) -> Any:
    """A dataclass field with validation metadata (choices, bounds) and a one-line doc."""
    meta = {"choices": choices, "gt": gt, "ge": ge, "le": le, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunSection:
    name: str = spec("quickstart", doc="run name; the run directory is output_dir/name")
    seed: int = spec(0, ge=0, doc="root seed: t, masks, mask states and init derive from it")
    output_dir: str = spec("runs", doc="parent folder of run directories")


@dataclass
class ModelSection:
    size: str = spec("synthetic", choices=(*MODEL_SIZES, "custom"), doc="preset of docs/method.md section 7")
    d_model: int | None = spec(None, gt=0, doc="width; default from size")
    n_blocks: int | None = spec(None, gt=0, doc="transformer blocks; default from size")
    n_heads: int | None = spec(None, gt=0, doc="attention heads; default from size")
    cond_dim: int = spec(128, gt=0, doc="adaLN conditioning width")
    dropout: float = spec(0.1, ge=0.0, le=0.9, doc="residual-branch dropout")
    attention: str = spec("sdpa", choices=("sdpa", "flash_attn", "math"),
                          doc="sdpa (cuDNN > Flash > efficient > math), flash-attn package, or explicit math")
    softcap: float = spec(0.0, ge=0.0, doc="attention logit soft-cap (0 = off; needs math or flash_attn)")
    qk_norm: bool = spec(False, doc="RMS-normalise q and k per head")
    vocab_pad_multiple: int = spec(1, gt=0, doc="pad the output head's rows to a multiple of this")

    def dims(self) -> tuple[int, int, int]:
        """(d_model, n_blocks, n_heads) after applying the size preset."""
        base = MODEL_SIZES.get(self.size, (None, None, None))
        d = self.d_model if self.d_model is not None else base[0]
        b = self.n_blocks if self.n_blocks is not None else base[1]
        h = self.n_heads if self.n_heads is not None else base[2]
        return d, b, h


@dataclass
class AlgorithmSection:
    name: str = spec("imdm", doc="the generative process, a registered algorithm (mdlm = IMDM with as_mdlm)")
    noise_dim: int = spec(128, gt=0, doc="D, the mask-state dimension")
    noise_kind: str = spec("rand", choices=("rand", "randn", "learnable"), doc="distribution of eps")
    noise_scale: float = spec(1.0, gt=0.0, doc="scale of rand / randn")
    num_masks: int = spec(0, ge=0, doc="K > 0: finite set of K mask states (ablation)")
    time_conditioning: bool = spec(False, doc="feed sigma(t) to the adaLN (off for MDLM/IMDM)")
    noise_schedule: str = spec("loglinear", choices=("loglinear", "cosine"), doc="alpha_t")
    schedule_eps: float = spec(1e-3, gt=0.0, le=0.5, doc="alpha_1 = schedule_eps")
    antithetic: bool = spec(True, doc="stratify t over the global batch")
    objective: str = spec("nelbo", doc="the training loss, a registered objective: nelbo (the process's own bound), "
                                       "sdtt (distillation, [distill]) or redi (a coupling set)")
    ignore_seed: bool = spec(False, doc="ReDi: fresh mask states instead of the coupling's seeded ones (MDLM teachers)")


DIVERGENCES = ("kl_bwd", "kl_fwd", "mse", "tvd")


@dataclass
class DistillSection:
    divergence: str = spec("kl_bwd", choices=DIVERGENCES,
                           doc="student vs teacher per masked position: reverse KL, forward KL, MSE of log-probs, TV")
    round_steps: int = spec(10_000, gt=0, doc="optimizer steps per round; each round doubles dt and refreshes the teacher")
    rounds: int = spec(7, gt=0, doc="rounds in all (the student ends at teacher_steps / 2^rounds steps)")
    teacher_steps: int = spec(1024, gt=1, doc="round 0 step count: dt_0 = (1 - 1e-3) / teacher_steps")


@dataclass
class InitSection:
    from_run: str = spec("", doc="start from the EMA weights of run.output_dir/NAME's newest checkpoint")


@dataclass
class CouplingsSection:
    teacher_run: str = spec("", doc="imdm couplings: the run (under run.output_dir) whose EMA weights complete z_t")
    num: int = spec(100_000, gt=0, doc="couplings to generate")
    seed: int = spec(42, ge=0, doc="generation seed: t, z_t and each coupling's seed derive from (seed, index)")
    steps: int = spec(1024, gt=0, doc="teacher sampling steps from t down")
    start: str = spec("perturbed", choices=("perturbed", "all_mask"),
                      doc="perturbed: a training sequence noised to z_t at t ~ U(0, 1); all_mask: t = 1")
    chunk: int = spec(128, gt=0, doc="couplings generated, written and marked done together (the unit of resume)")


HUB_SET_NAMES = ("openwebtext", "lm1b", "wikitext2", "wikitext103", "ptb", "lambada", "ag_news",
                 "scientific_papers_arxiv", "scientific_papers_pubmed")
DETOKENIZER_NAMES = ("auto", "none", "wikitext", "ptb", "lm1b", "lambada", "scientific_papers")


@dataclass
class DataSection:
    source: str = spec("synthetic", choices=("synthetic", "local", "hub", "store", "couplings"),
                       doc="synthetic task, local text files, a Hugging Face dataset, a prepared token store, "
                           "or a coupling set (ReDi)")
    couplings: str = spec("", doc="couplings: the run name that generated the set (run.output_dir/NAME/couplings)")
    seq_len: int = spec(8, gt=1, doc="L, tokens per sequence")
    vocab_size: int = spec(64, gt=1, doc="synthetic: number of real tokens (mask appended)")
    num_sequences: int = spec(100_000, gt=0, doc="synthetic: size of the training set")
    seed: int = spec(0, ge=0, doc="synthetic: seed of the generated data; all sources: seed of the order")
    paths: list[str] = spec(factory=list, doc="local: files or globs (.txt .xz .gz .zip .jsonl)")
    documents: str = spec("file", choices=("file", "paragraph", "line", "stripped_line"),
                          doc="local: how a text file splits into documents")
    jsonl_field: str = spec("text", doc="local: the field of a .jsonl line holding the text")
    holdout_documents: int = spec(0, ge=0, doc="local: the last N documents form the validation split")
    dataset: str = spec("openwebtext", choices=HUB_SET_NAMES, doc="hub: which named dataset")
    hub_location: str = spec("", doc="hub: load from this saved copy / path instead of the hub")
    split: str = spec("train", choices=("train", "validation", "test"), doc="split used for training")
    detokenizer: str = spec("auto", choices=DETOKENIZER_NAMES, doc="auto = the dataset's own (none for local)")
    packing: str = spec("wrap", choices=("wrap", "pad"), doc="wrap: BOS+chunk+EOS; pad: one document per row")
    store: str = spec("", doc="store: path of a prepared token store (its manifest must match)")
    store_dir: str = spec("data_cache", doc="where prepared token stores live")
    num_workers: int = spec(0, ge=0, doc="data-loader worker processes per rank")


@dataclass
class TokenizerSection:
    kind: str = spec("gpt2", choices=("gpt2", "bert", "sentencepiece"), doc="text sources only")
    path: str = spec("../shared/data/tokenizers/gpt2", doc="folder, .model file, or hub repo id")


@dataclass
class EvalSection:
    sets: list[str] = spec(factory=list, doc="zero-shot sets for imdm eval: wikitext2, ptb, lambada, ...")
    local_root: str = spec("../shared/data", doc="local copies of the zero-shot sets: the files under eval/ "
                                                 "(WikiText-2 test, PTB test, LAMBADA), or eval/NAME/ saved by "
                                                 "datasets' save_to_disk; other sets come from the hub")
    batch: int = spec(16, gt=0, doc="sequences per evaluation batch")
    max_batches: int = spec(0, ge=0, doc="cap per set (0 = the whole set)")
    judge: str = spec("gpt2-large", doc="generative perplexity's frozen causal scorer: a Hugging Face model name or "
                                        "save_pretrained folder, or run:RUN_DIR of an autoregressive run; \"\" = no "
                                        "generative metrics")
    judge_batch: int = spec(16, gt=0, doc="sequences (or scoring windows) per judge forward pass")
    frontier_temperatures: list[float] = spec(factory=list, doc="more sampling temperatures judged at the largest of "
                                                                "sampling.steps: the perplexity / entropy frontier "
                                                                "of imdm plot")
    t_per_sequence: int = spec(1, gt=0, doc="times t averaged per sequence in the perplexity bound, one per "
                                            "stratum (more: lower variance, one forward pass each)")


@dataclass
class OptimizerSection:
    lr: float = spec(3e-4, gt=0.0, doc="peak learning rate (AdamW)")
    beta1: float = spec(0.9, ge=0.0, le=1.0, doc="AdamW beta1")
    beta2: float = spec(0.999, ge=0.0, le=1.0, doc="AdamW beta2")
    eps: float = spec(1e-8, gt=0.0, doc="AdamW epsilon")
    weight_decay: float = spec(0.0, ge=0.0, doc="AdamW decoupled weight decay")
    grad_clip: float = spec(1.0, ge=0.0, doc="max global grad norm (0 = off)")


@dataclass
class ScheduleSection:
    warmup_steps: int = spec(2500, ge=0, doc="linear warm-up from 0")
    decay: str = spec("constant", choices=("constant", "cosine"), doc="after warm-up")
    min_lr_ratio: float = spec(0.0, ge=0.0, le=1.0, doc="cosine floor as a fraction of lr")


@dataclass
class TrainSection:
    steps: int = spec(1000, gt=0, doc="optimizer steps")
    global_batch: int = spec(128, gt=0, doc="sequences per optimizer step over all ranks")
    micro_batch: int = spec(128, gt=0, doc="sequences per forward pass per rank")
    ema_decay: float = spec(0.9999, ge=0.0, le=1.0, doc="0 = no EMA")
    precision: str = spec("auto", choices=("auto", "bf16", "fp32"), doc="auto = bf16 on GPU, fp32 on CPU")
    device: str = spec("auto", choices=("auto", "cpu", "cuda"), doc="auto = the GPU when there is one")
    eval_every: int = spec(0, ge=0, doc="validation NELBO every N steps (0 = end only)")
    eval_batches: int = spec(4, gt=0, doc="micro-batches of the validation NELBO")
    nonfinite: str = spec("skip", choices=("skip", "stop"), doc="a non-finite loss skips the step, or stops")
    max_nonfinite: int = spec(3, gt=0, doc="stop after this many non-finite steps in a row")


@dataclass
class ParallelismSection:
    data_parallel: int = spec(0, ge=0, doc="data-parallel ranks (0 = the launcher's world size)")
    replicate: int = spec(1, gt=0, doc="HSDP replicas (e.g. nodes); FSDP shards over world / replicate ranks")
    reshard_after_forward: bool = spec(False, doc="FSDP2: free gathered parameters after each forward (true: "
                                       "least memory; false: one all-gather per unit per step, the gathered "
                                       "parameters stay)")
    param_dtype: str = spec("bf16", choices=("bf16", "fp32"),
                            doc="FSDP2: dtype the blocks' parameters are gathered in (fp32 keeps their LayerNorm "
                                "weights unrounded; the embeddings and the head are always gathered in fp32)")
    activation_checkpointing: str = spec("none", choices=("none", "selective", "full"),
                                         doc="recompute blocks in backward: none, every ac_every-th, all")
    ac_every: int = spec(2, gt=0, doc="selective checkpointing: every N-th block")
    compile: str = spec("auto", choices=("auto", "on", "off"), doc="per-block torch.compile (auto = on GPU)")


@dataclass
class CheckpointSection:
    every_steps: int = spec(0, ge=0, doc="save every N steps (0 = at the end only)")
    keep_last: int = spec(2, gt=0, doc="complete checkpoints kept")
    resume: bool = spec(True, doc="continue from the newest complete checkpoint of the run")
    async_save: bool = spec(False, doc="write checkpoints in the background (the loop stalls only to stage)")
    seed_checkpoint: bool = spec(False, doc="save step 0 before training (identical start for any layout)")


@dataclass
class SamplingSection:
    steps: list[int] = spec(factory=lambda: [1, 2, 4, 128], doc="step counts to evaluate (NFE <= steps)")
    num_samples: int = spec(256, gt=0, doc="sequences generated per step count")
    batch: int = spec(256, gt=0, doc="sequences per sampler call")
    posterior: str = spec("auto", choices=("auto", "mdlm", "imdm"), doc="auto = the algorithm's own")
    fix_eps: bool = spec(False, doc="IMDM: never re-draw a mask state")
    cached: bool = spec(True, doc="reuse x_theta when a step changed nothing")
    temperature: float = spec(1.0, gt=0.0, doc="sampling temperature T (1 = untempered); its form: temperature_form")
    temperature_form: str = spec("step", choices=("step", "x_theta"),
                                 doc="masked diffusion's seeded draws: 'step' (the reference's) raises every outcome "
                                     "weight of a reverse step to 1/T (unmask, stay, IMDM re-draw), so T also "
                                     "changes how many positions unmask per step; 'x_theta' raises x_theta alone "
                                     "and renormalises. Eps-driven draws (draws = eps) and the AR sampler always "
                                     "temper their categorical draw (p ** (1/T), renormalised)")
    top_p: float = spec(1.0, gt=0.0, le=1.0, doc="nucleus filtering of x_theta (1 = off)")
    kernel: str = spec("auto", choices=("auto", "triton", "eager"),
                       doc="sampler step: auto = the fused Triton kernel on GPU, else the eager float64 one")
    noise_removal: str = spec("ancestral", choices=("ancestral", "greedy"),
                              doc="the last step: an ancestral draw, or the argmax of x_theta (the reference's 'greedy')")
    draws: str = spec("seeded", choices=("seeded", "eps"),
                      doc="a step's random choices: from the per-sample seed, or (IMDM) from each position's fixed "
                          "mask state (unmasking time and categorical draw: a deterministic map of eps)")
    eps_order: str = spec("eps", choices=("eps", "left_to_right"),
                          doc="draws = eps: unmasking times from each position's mask state, or left to right")
    eps_digits: int = spec(3, gt=0, le=8, doc="draws = eps: mask-state coordinates composing a draw's uniform "
                                               "(base-64 digits)")
    duplicate: int = spec(1, gt=0, doc="samples per total-correlation group (imdm eval's tc_nats): they share the "
                                       "start state and the mask states and draw with their own seeds; 1 = no "
                                       "estimate, except that the synthetic evaluation then uses groups of 16")
    seed: int = spec(42, ge=0, doc="seed of the generated samples")


@dataclass
class ConditionalSection:
    enabled: bool = spec(False, doc="imdm eval also scores conditional generation with MAUVE (text runs)")
    documents: int = spec(256, ge=2, doc="validation documents giving a prompt and a human continuation")
    min_doc_tokens: int = spec(1024, gt=0, doc="only documents at least this many tokens long are used")
    prefix_tokens: int = spec(50, gt=0, doc="the prompt: a document's first tokens, clamped after BOS")
    continuations: int = spec(5, gt=0, doc="generated continuations per prompt")
    length: int = spec(100, gt=0, doc="tokens kept of each continuation and of each human reference")
    mauve_seeds: int = spec(5, gt=0, doc="MAUVE is the mean over this many k-means seeds (0, 1, ...)")


@dataclass
class LoggingSection:
    every_steps: int = spec(50, gt=0, doc="metrics line every N steps")
    progress: bool = spec(True, doc="console progress line")
    tensorboard: bool = spec(False, doc="also write TensorBoard events to RUN_DIR/tb (needs tensorboard)")


SECTIONS: dict[str, type] = {
    "run": RunSection, "model": ModelSection, "algorithm": AlgorithmSection, "data": DataSection,
    "tokenizer": TokenizerSection, "eval": EvalSection,
    "optimizer": OptimizerSection, "schedule": ScheduleSection, "train": TrainSection,
    "parallelism": ParallelismSection, "checkpoint": CheckpointSection,
    "sampling": SamplingSection, "logging": LoggingSection, "distill": DistillSection, "init": InitSection,
    "couplings": CouplingsSection, "conditional": ConditionalSection,
}


@dataclass
class Recipe:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    eval: EvalSection = field(default_factory=EvalSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallelism: ParallelismSection = field(default_factory=ParallelismSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    distill: DistillSection = field(default_factory=DistillSection)
    init: InitSection = field(default_factory=InitSection)
    couplings: CouplingsSection = field(default_factory=CouplingsSection)
    conditional: ConditionalSection = field(default_factory=ConditionalSection)

    def cross_checks(self, world_size: int | None = None) -> list[str]:
        """Problems that involve several fields, as 'key: message' lines."""
        problems = []
        d, b, h = self.model.dims()
        if self.model.size == "custom" and None in (self.model.d_model, self.model.n_blocks, self.model.n_heads):
            problems.append("model.size: 'custom' needs model.d_model, model.n_blocks and model.n_heads")
        elif d % h != 0 or (d // h) % 2 != 0:
            problems.append(f"model.n_heads: d_model {d} must split into {h} heads of even width")
        if self.model.softcap > 0 and self.model.attention == "sdpa":
            problems.append("model.softcap: soft-capping needs model.attention = 'math' or 'flash_attn'")
        dp = self.parallelism.data_parallel or world_size or 1
        if world_size is not None and self.parallelism.data_parallel not in (0, world_size):
            problems.append(f"parallelism.data_parallel: recipe says {self.parallelism.data_parallel} "
                            f"but the launcher started {world_size} ranks")
        if dp % self.parallelism.replicate != 0:
            problems.append(f"parallelism.replicate: {self.parallelism.replicate} does not divide the "
                            f"data-parallel size {dp}")
        if self.train.global_batch % (self.train.micro_batch * dp) != 0:
            problems.append(f"train.global_batch: {self.train.global_batch} is not divisible by "
                            f"train.micro_batch ({self.train.micro_batch}) x data-parallel size ({dp})"
                            + _micro_batch_hint(self.train.global_batch, self.train.micro_batch, dp))
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in self.sampling.steps):
            problems.append(f"sampling.steps: every entry must be an integer >= 1, got {self.sampling.steps}")
        if self.sampling.num_samples % self.sampling.batch != 0:
            problems.append(f"sampling.num_samples: {self.sampling.num_samples} is not a multiple of "
                            f"sampling.batch ({self.sampling.batch})")
        problems += self._data_checks()
        problems += self._conditional_checks()
        problems += self._run_name_checks()
        return problems

    def _run_name_checks(self) -> list[str]:
        """A run never reads itself: the run it starts from, the coupling set it trains on and the
        teacher that generates a set are other runs."""
        problems, name = [], self.run.name
        if self.init.from_run and self.init.from_run == name:
            problems.append(f"init.from_run: run '{name}' cannot start from itself")
        if self.data.source == "couplings" and not self.data.couplings:
            problems.append("data.couplings: a couplings source needs the run name that generated the set")
        if self.data.couplings and self.data.couplings == name:
            problems.append(f"data.couplings: the student needs its own run.name, not the coupling set's '{name}'")
        if self.couplings.teacher_run and self.couplings.teacher_run == name:
            problems.append(f"couplings.teacher_run: the coupling set needs its own run.name, not the teacher's "
                            f"'{name}'")
        return problems

    def _conditional_checks(self) -> list[str]:
        """Conditional generation (docs/method.md section 9) needs validation documents of a text
        source and room for BOS, the prompt and the kept continuation in one sequence."""
        c, d = self.conditional, self.data
        if not c.enabled:
            return []
        problems = []
        if d.source in ("synthetic", "store"):
            problems.append(f"conditional.enabled: prompts come from validation documents, which data.source "
                            f"'{d.source}' does not have (use a local or hub source)")
        if d.source == "local" and d.holdout_documents == 0:
            problems.append("conditional.enabled: prompts come from the validation split: set data.holdout_documents")
        if 1 + c.prefix_tokens + c.length > d.seq_len:
            problems.append(f"conditional.length: BOS + {c.prefix_tokens} prompt tokens + {c.length} generated tokens "
                            f"do not fit in data.seq_len {d.seq_len}")
        if c.min_doc_tokens < c.prefix_tokens + c.length:
            problems.append(f"conditional.min_doc_tokens: {c.min_doc_tokens} is shorter than the prompt and the "
                            f"human continuation ({c.prefix_tokens} + {c.length} tokens)")
        if c.documents * c.continuations > 1 << 31:
            problems.append("conditional.continuations: documents x continuations must stay below 2^31 seeds")
        return problems

    def _data_checks(self) -> list[str]:
        d, problems = self.data, []
        if d.source == "local" and not d.paths:
            problems.append("data.paths: a local source needs at least one file or glob")
        if d.source == "store" and not d.store:
            problems.append("data.store: a store source needs the path of a prepared token store")
        if d.source != "synthetic" and d.seq_len < 3:
            problems.append(f"data.seq_len: text sequences need room for BOS and EOS, got {d.seq_len}")
        if d.source == "local" and d.split != "train" and d.holdout_documents == 0:
            problems.append(f"data.split: '{d.split}' of a local source needs data.holdout_documents > 0")
        unknown = [s for s in self.eval.sets if s not in HUB_SET_NAMES]
        if unknown:
            problems.append(f"eval.sets: unknown {unknown}; known: {', '.join(HUB_SET_NAMES)}")
        if self.eval.sets and d.source == "synthetic":
            problems.append("eval.sets: zero-shot text sets need a text model, not the synthetic source")
        if any(t <= 0 for t in self.eval.frontier_temperatures):
            problems.append(f"eval.frontier_temperatures: temperatures must be > 0, got {self.eval.frontier_temperatures}")
        return problems


def _micro_batch_hint(global_batch: int, micro_batch: int, dp: int) -> str:
    """The largest micro-batch up to `micro_batch` that divides each rank's share of the batch."""
    if global_batch % dp:
        return "; the global batch must be a multiple of the data-parallel size"
    per_rank = global_batch // dp
    divisor = max(m for m in range(1, min(micro_batch, per_rank) + 1) if per_rank % m == 0)
    return f"; each rank's share is {per_rank} per step, which train.micro_batch={divisor} divides"
