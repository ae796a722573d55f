"""Import a reference checkpoint as a run directory of this project. Reference checkpoints are
PyTorch Lightning files of kuleshov-group/mdlm, jdeschena/sdtt and Ugness/IMDM (docs/method.md section
10): the DiT's weights under `backbone.` in `state_dict`, the EMA shadows as a positional list
under `ema`. The recipe names the architecture and the tokenizer (its vocabulary must match the
checkpoint's); the run directory run.output_dir/run.name gets the recipe and one checkpoint with
the weights and the EMA, ready for `imdm sample`, `imdm eval` and `init.from_run` (it holds no
optimizer state, so it is not a run to resume training from). Settings the weights do not show
(heads, time conditioning, attention soft-capping, the mask-state kind, scale and count) are
checked against the checkpoint's saved hyper-parameters when it has them (Lightning's
`hyper_parameters["config"]`, Ugness/IMDM's key names); a .safetensors file has none, and then
they come from the recipe unchecked.

    python -m imdm.tools.import_reference CKPT --recipe RECIPE [--trust-pickle] [key=value ...]
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch

from imdm.build import build_model, build_vocabulary
from imdm.data.local_text import DataSourceError
from imdm.data.tokenizer import TokenizerError
from imdm.models.dit import DiTConfig
from imdm.recipe.errors import RecipeError
from imdm.algorithms.registry import load_recipe
from imdm.recipe.writer import recipe_to_toml
from imdm.tools.atomic_folder import atomic_folder
from imdm.parallel.checkpoint import CheckpointError, CheckpointManager
from imdm.parallel.ema import EMA, named_parameters

PREFIX = "backbone."
BLOCK_NAMES = {"norm1.weight": "norm1.weight", "attn_qkv.weight": "attn.qkv.weight", "attn_out.weight": "attn.out.weight",
               "norm2.weight": "norm2.weight", "mlp.0.weight": "mlp.0.weight", "mlp.0.bias": "mlp.0.bias",
               "mlp.2.weight": "mlp.2.weight", "mlp.2.bias": "mlp.2.bias", "adaLN_modulation.weight": "adaLN.weight",
               "adaLN_modulation.bias": "adaLN.bias"}
HEAD_NAMES = {"output_layer.norm_final.weight": "head.norm.weight", "output_layer.linear.weight": "head.linear.weight",
              "output_layer.linear.bias": "head.linear.bias", "output_layer.adaLN_modulation.weight": "head.adaLN.weight",
              "output_layer.adaLN_modulation.bias": "head.adaLN.bias"}


def reference_names(cfg: DiTConfig) -> dict[str, str]:
    """Reference parameter name (without `backbone.`) -> this project's DiT parameter name."""
    names = {"vocab_embed.embedding": "token_embed"}
    ms = cfg.mask_state
    if ms is not None and ms.num_masks > 0:
        names["vocab_embed.imdm_mlp.weight"] = "mask_state.table"
    elif ms is not None:
        if ms.kind == "learnable":
            names.update({"vocab_embed.learnable_noise_mu": "mask_state.mu",
                          "vocab_embed.learnable_noise_sigma": "mask_state.sigma"})
        names.update({"vocab_embed.imdm_mlp.0.weight": "mask_state.fc1.weight",
                      "vocab_embed.imdm_mlp.0.bias": "mask_state.fc1.bias",
                      "vocab_embed.imdm_mlp.2.weight": "mask_state.fc2.weight"})
    for i in (0, 2):
        for kind in ("weight", "bias"):
            names[f"sigma_map.mlp.{i}.{kind}"] = f"time_embed.mlp.{i}.{kind}"
    for b in range(cfg.n_blocks):
        names.update({f"blocks.{b}.{ref}": f"blocks.{b}.{ours}" for ref, ours in BLOCK_NAMES.items()})
    names.update(HEAD_NAMES)
    return names


def read_reference(path: Path, trust_pickle: bool) -> dict:
    """The checkpoint file as a dict; refuses arbitrary pickled objects unless `trust_pickle`. A
    .safetensors file (a hub export of the weights) gives weights only, no EMA."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return {"state_dict": load_file(str(path))}
        except SafetensorError as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        refused = next((line.strip().split(" was not")[0] for line in str(err).splitlines()
                        if "Unsupported global" in line), "")
        raise CheckpointError(f"{path} holds Python objects beyond tensors (Lightning stores its hyper-parameters "
                              f"so); if the file comes from a source you trust, pass --trust-pickle"
                              + (f" ({refused})" if refused else "")) from None
    except ModuleNotFoundError as err:   # Lightning pickles an OmegaConf config and a transformers tokenizer
        raise CheckpointError(f"{path} pickles objects of the module {err.name!r}, which is not installed here "
                              f"(pip install {err.name.split('.')[0]})") from None
    except Exception as err:   # truncated or not a PyTorch file
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {type(err).__name__}: {err}") from None


def backbone_weights(state: dict) -> dict:
    """The DiT's tensors by reference name: the `backbone.` prefix removed (repeated, as in SDTT's
    students of the hub model), torch.compile's `_orig_mod.` dropped; a state dict without the
    prefix is taken as the DiT's own."""
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    weights = {}
    for key, value in state.items():
        if key.startswith(PREFIX):
            while key.startswith(PREFIX):
                key = key[len(PREFIX):]
            weights[key] = value
    return weights or state


def check_rotary(inv_freq: torch.Tensor | None, cfg: DiTConfig) -> None:
    """The reference stores its rotary frequencies; they must be this model's (base 10,000 over
    the head dimension)."""
    if inv_freq is None:
        return
    head_dim = cfg.d_model // cfg.n_heads
    expected = 1.0 / (10_000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if inv_freq.shape != expected.shape or not torch.allclose(inv_freq.float(), expected, rtol=1e-5):
        raise CheckpointError(f"the checkpoint's rotary frequencies (rotary_emb.inv_freq, {tuple(inv_freq.shape)}) are "
                              f"not base 10,000 over head dimension {head_dim}: another head size or rotary base")


def _plain(tree):
    """Nested dicts of the saved config (an OmegaConf DictConfig, unresolved, or plain dicts)."""
    if type(tree).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf
        return OmegaConf.to_container(tree, resolve=False)
    return {k: _plain(v) for k, v in tree.items()} if hasattr(tree, "items") else tree


def _lookup(config: dict, *paths: str):
    """The value at the first dotted key path present in `config` (None when none is)."""
    for path in paths:
        node = config
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return path, node
    return None


def check_hyper_parameters(hyper_parameters, cfg: DiTConfig) -> None:
    """Refuse a recipe whose model differs from the checkpoint's saved configuration in what the
    weights cannot show; keys the file does not hold are not checked."""
    config = _plain(hyper_parameters.get("config")) if hasattr(hyper_parameters, "get") else None
    if not isinstance(config, dict):
        return
    ms = cfg.mask_state
    checks = [(("model.hidden_size",), cfg.d_model, "model.d_model", None),
              (("model.n_blocks",), cfg.n_blocks, "model.n_blocks", None),
              (("model.n_heads",), cfg.n_heads, "model.n_heads", None),
              (("model.cond_dim",), cfg.cond_dim, "model.cond_dim", None),
              (("algo.time_conditioning", "time_conditioning"), cfg.time_conditioning,
               "algorithm.time_conditioning", bool),
              (("model.softcap",), cfg.softcap, "model.softcap", lambda v: max(float(v), 0.0))]   # < 0: none
    if ms is not None:
        checks += [(("model.noise_dim",), ms.noise_dim, "algorithm.noise_dim", None),
                   (("algo.num_mask",), ms.num_masks, "algorithm.num_masks", lambda v: max(int(v), 0))]   # -1: none
        if ms.num_masks == 0:
            checks.append((("algo.noise_type",), ms.kind, "algorithm.noise_kind", None))
        if ms.num_masks == 0 and ms.kind != "learnable":   # learnable: the scale only initialises sigma
            checks.append((("algo.noise_scale",), ms.scale, "algorithm.noise_scale", float))
    problems = []
    for paths, ours, recipe_key, normalise in checks:
        found = _lookup(config, *paths)
        if found is None:
            continue
        path, theirs = found
        theirs = normalise(theirs) if normalise else theirs
        if theirs != ours:
            problems.append(f"{path} is {theirs!r} there, {recipe_key} {ours!r} here")
    if problems:
        raise CheckpointError("the checkpoint's saved configuration differs from this recipe's model: "
                              + "; ".join(problems))


def _fit(name: str, value: torch.Tensor, target: torch.Tensor, cfg: DiTConfig) -> torch.Tensor:
    """`value` as the float32 tensor for parameter `name`: the head's rows are padded with zeros
    up to the padded vocabulary; the learnable noise's [1, 1, D] becomes [D]."""
    value = value.detach().float()
    if name.startswith("head.linear.") and value.shape[0] == cfg.vocab_size < target.shape[0]:
        value = torch.cat([value, value.new_zeros((target.shape[0] - cfg.vocab_size, *value.shape[1:]))])
    if name in ("mask_state.mu", "mask_state.sigma"):
        value = value.reshape(-1)
    if value.shape != target.shape:
        raise CheckpointError(f"{name}: the checkpoint's tensor has shape {tuple(value.shape)}, this recipe's model "
                              f"{tuple(target.shape)}: the recipe's model size, noise_dim or num_masks differ")
    return value


def convert(reference: dict, cfg: DiTConfig, targets: dict[str, torch.Tensor]) -> tuple[dict, dict | None, int]:
    """(model weights, EMA weights or None, EMA update count) in this project's names."""
    weights = backbone_weights(reference.get("state_dict", reference))
    check_rotary(weights.pop("rotary_emb.inv_freq", None), cfg)
    rows = weights.get("vocab_embed.embedding")
    if rows is not None and rows.shape[0] != cfg.vocab_size:
        raise CheckpointError(f"the checkpoint has a vocabulary of {rows.shape[0]} (mask included); this recipe's "
                              f"tokenizer gives {cfg.vocab_size} (mask id {cfg.mask_id})")
    names = reference_names(cfg)
    missing = sorted(set(names) - set(weights))
    unexpected = sorted(set(weights) - set(names))
    if any(".q_norm." in k for k in unexpected):
        raise CheckpointError("the checkpoint's attention has q/k LayerNorms (qk_norm); this project's qk_norm is an "
                              "RMSNorm, so such a model cannot be imported exactly")
    if missing or unexpected:
        raise CheckpointError(f"the checkpoint does not fit this recipe's model: missing {missing[:6]}, unexpected "
                              f"{unexpected[:6]} (is algorithm.name, noise_kind or num_masks the reference's?)")
    model = {names[k]: _fit(names[k], v, targets[names[k]], cfg) for k, v in weights.items() if k in names}
    ema_state = reference.get("ema")
    shadows = ema_state.get("shadow_params") if isinstance(ema_state, dict) else None
    if shadows is None:
        return model, None, 0
    order = [k for k in weights if k in names]   # the reference's parameters() order
    if cfg.mask_state is not None and cfg.mask_state.num_masks == 1:   # a frozen all-zero table has no shadow
        order.remove("vocab_embed.imdm_mlp.weight")
    if len(shadows) != len(order):
        raise CheckpointError(f"the checkpoint's EMA holds {len(shadows)} tensors; its model has {len(order)} "
                              f"trainable parameters")
    ema = {**model, **{names[k]: _fit(names[k], s, targets[names[k]], cfg) for k, s in zip(order, shadows)}}
    return model, ema, int(ema_state.get("num_updates") or 0)


def import_reference(path: Path, recipe, trust_pickle: bool = False) -> Path:
    """Write run.output_dir/run.name from the reference checkpoint at `path`; returns the run
    directory. Refuses an existing one; an interrupted import leaves no run directory."""
    run_dir = Path(recipe.run.output_dir) / recipe.run.name
    if run_dir.exists():
        raise CheckpointError(f"{run_dir} exists already; choose another run.name")
    if recipe.model.qk_norm:
        raise CheckpointError("model.qk_norm: the references' q/k norms are LayerNorms with bias; this project's are "
                              "RMSNorms, so they cannot be imported exactly")
    reference = read_reference(path, trust_pickle)
    vocab = build_vocabulary(recipe)
    model = build_model(recipe, vocab.model_vocab, vocab.mask_id, "cpu")
    targets = named_parameters(model)
    check_hyper_parameters(reference.get("hyper_parameters"), model.cfg)
    weights, ema_weights, updates = convert(reference, model.cfg, targets)
    if ema_weights is None:
        print(f"note: {path} has no EMA; the run's EMA is a copy of its weights", file=sys.stderr)
        ema_weights = weights
    with torch.no_grad():
        for name, p in targets.items():
            p.copy_(weights[name])
    ema = EMA(model, recipe.train.ema_decay)
    ema.load_state_dict({"params": ema_weights, "num_updates": updates})
    step = int(reference.get("global_step", 0) or 0)
    toml = recipe_to_toml(recipe)
    with atomic_folder(run_dir) as staging:
        (staging / "recipe.toml").write_text(toml)
        CheckpointManager(staging / "checkpoints", keep_last=1, is_main=True).save(
            step, {"model": model.state_dict(), "ema": ema.state_dict()}, toml)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--recipe", required=True, help="the architecture and tokenizer (a path or builtin:NAME)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow Python objects in the file (Lightning checkpoints hold some): only for trusted files")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. run.name=mdlm-owt-reference")
    args = parser.parse_intermixed_args(argv)   # overrides may follow the options
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        run_dir = import_reference(Path(args.checkpoint), recipe, args.trust_pickle)
    except (RecipeError, CheckpointError, DataSourceError, TokenizerError) as err:   # the tokenizer may be missing
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
