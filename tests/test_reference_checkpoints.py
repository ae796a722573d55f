"""Reference checkpoints: a Lightning-style file with the reference DiT's parameter names imports
as a run whose model computes the same logits as the reference architecture (written out here
from the reference's math, independently of imdm.models), for the trained and the EMA weights;
bad files and mismatched recipes fail with messages that name the problem and leave no run
directory; export writes the weights as safetensors with a config."""

import argparse
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from imdm.algorithms.registry import recipe_from_dict
from imdm.run_loading import load_run
from imdm.tools.export_run import export_run
from imdm.tools.import_reference import import_reference, main
from imdm.parallel.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint

V, MASK, D, BLOCKS, HEADS, COND, NOISE = 17, 16, 32, 2, 2, 128, 8


def _reference_state(gen: torch.Generator, imdm: bool) -> dict:
    """Random weights under the reference's names, in its registration order."""
    shapes = {"vocab_embed.embedding": (V, D)}
    if imdm:
        shapes.update({"vocab_embed.imdm_mlp.0.weight": (4 * D, NOISE), "vocab_embed.imdm_mlp.0.bias": (4 * D,),
                       "vocab_embed.imdm_mlp.2.weight": (D, 4 * D)})
    shapes.update({"sigma_map.mlp.0.weight": (COND, 256), "sigma_map.mlp.0.bias": (COND,),
                   "sigma_map.mlp.2.weight": (COND, COND), "sigma_map.mlp.2.bias": (COND,),
                   "rotary_emb.inv_freq": (D // HEADS // 2,)})
    for b in range(BLOCKS):
        shapes.update({f"blocks.{b}.norm1.weight": (D,), f"blocks.{b}.attn_qkv.weight": (3 * D, D),
                       f"blocks.{b}.attn_out.weight": (D, D), f"blocks.{b}.norm2.weight": (D,),
                       f"blocks.{b}.mlp.0.weight": (4 * D, D), f"blocks.{b}.mlp.0.bias": (4 * D,),
                       f"blocks.{b}.mlp.2.weight": (D, 4 * D), f"blocks.{b}.mlp.2.bias": (D,),
                       f"blocks.{b}.adaLN_modulation.weight": (6 * D, COND),
                       f"blocks.{b}.adaLN_modulation.bias": (6 * D,)})
    shapes.update({"output_layer.norm_final.weight": (D,), "output_layer.linear.weight": (V, D),
                   "output_layer.linear.bias": (V,), "output_layer.adaLN_modulation.weight": (2 * D, COND),
                   "output_layer.adaLN_modulation.bias": (2 * D,)})
    state = {k: 0.2 * torch.randn(s, generator=gen) + (1.0 if k.endswith("norm1.weight") else 0.0)
             for k, s in shapes.items()}
    hd = D // HEADS
    state["rotary_emb.inv_freq"] = 1.0 / 10_000 ** (torch.arange(0, hd, 2).float() / hd)
    return state


def _lightning_file(path, gen, imdm=True, extra=None, prefix="backbone."):
    """A reference checkpoint: weights under `backbone.`, EMA shadows as a positional list."""
    state = _reference_state(gen, imdm)
    shadows = [0.2 * torch.randn(v.shape, generator=gen) for k, v in state.items() if k != "rotary_emb.inv_freq"]
    ckpt = {"state_dict": {f"{prefix}{k}": v for k, v in state.items()}, "global_step": 1234,
            "ema": {"decay": 0.9999, "num_updates": 77, "shadow_params": shadows}, **(extra or {})}
    torch.save(ckpt, path)
    ema = dict(zip([k for k in state if k != "rotary_emb.inv_freq"], shadows))
    return state, ema


def _reference_logits(sd: dict, tokens: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    """The reference DiT in eval mode, float32, no time conditioning (sigma = 0)."""
    def linear(x, name, bias=True):
        return x @ sd[f"{name}.weight"].T + (sd[f"{name}.bias"] if bias else 0)

    def norm(x, name):
        return F.layer_norm(x, (D,)) * sd[f"{name}.weight"]

    b, length, hd = tokens.shape[0], tokens.shape[1], D // HEADS
    x = sd["vocab_embed.embedding"][tokens]
    if eps is not None:
        mask_embedding = linear(F.gelu(linear(eps, "vocab_embed.imdm_mlp.0")), "vocab_embed.imdm_mlp.2", bias=False)
        x = x + mask_embedding * (tokens == MASK)[..., None]
    freqs = torch.exp(-math.log(10_000) * torch.arange(128) / 128)
    t_freq = torch.cat([torch.cos(0.0 * freqs), torch.sin(0.0 * freqs)])[None].expand(b, -1)
    c = F.silu(linear(F.silu(linear(t_freq, "sigma_map.mlp.0")), "sigma_map.mlp.2"))
    angles = torch.outer(torch.arange(length).float(), 1.0 / 10_000 ** (torch.arange(0, hd, 2).float() / hd))
    cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]

    def rotary(q):   # [B, L, H, hd], rotate-half
        return q * cos + torch.cat([-q[..., hd // 2:], q[..., : hd // 2]], -1) * sin

    for i in range(BLOCKS):
        p = f"blocks.{i}"
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = linear(c, f"{p}.adaLN_modulation")[:, None].chunk(6, 2)
        qkv = linear(norm(x, f"{p}.norm1") * (1 + scale_a) + shift_a, f"{p}.attn_qkv", bias=False)
        q, k, v = qkv.view(b, length, 3, HEADS, hd).unbind(2)
        q, k = rotary(q), rotary(k)
        scores = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(hd)
        attended = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v).reshape(b, length, D)
        x = x + gate_a * linear(attended, f"{p}.attn_out", bias=False)
        h = norm(x, f"{p}.norm2") * (1 + scale_m) + shift_m
        x = x + gate_m * linear(F.gelu(linear(h, f"{p}.mlp.0"), approximate="tanh"), f"{p}.mlp.2")
    shift, scale = linear(c, "output_layer.adaLN_modulation")[:, None].chunk(2, 2)
    return linear(norm(x, "output_layer.norm_final") * (1 + scale) + shift, "output_layer.linear")


def _table(tmp_path, name="imported", algo="imdm", vocab=V - 1):
    return {"run": {"output_dir": str(tmp_path / "runs"), "name": name},
            "model": {"size": "custom", "d_model": D, "n_blocks": BLOCKS, "n_heads": HEADS, "vocab_pad_multiple": 8},
            "algorithm": {"name": algo, "noise_dim": NOISE},
            "data": {"vocab_size": vocab, "seq_len": 6}}


def _recipe(tmp_path, name="imported", algo="imdm", vocab=V - 1):
    return recipe_from_dict(_table(tmp_path, name, algo, vocab))


def _inputs(gen):
    tokens = torch.randint(0, V - 1, (3, 6), generator=gen)
    tokens[:, ::2] = MASK
    return tokens, torch.randn(3, 6, NOISE, generator=gen)


@pytest.mark.parametrize("algo, prefix", [("imdm", "backbone."), ("mdlm", "backbone."),
                                          ("mdlm", "backbone.backbone."), ("imdm", "backbone._orig_mod.")])
def test_imported_run_computes_the_reference_logits(tmp_path, algo, prefix):
    """Also with SDTT's doubled prefix (students of the hub model) and torch.compile's."""
    gen = torch.Generator().manual_seed(0)
    weights, ema = _lightning_file(tmp_path / "ref.ckpt", gen, imdm=algo == "imdm", prefix=prefix)
    run_dir = import_reference(tmp_path / "ref.ckpt", _recipe(tmp_path, algo=algo))
    tokens, eps = _inputs(gen)
    eps_or_none = eps if algo == "imdm" else None
    run = load_run(run_dir, torch.device("cpu"))           # EMA weights
    assert run.step == 1234 and run.model.cfg.padded_vocab == 24
    with torch.no_grad():
        ours = run.model(tokens, eps_or_none)
        torch.testing.assert_close(ours, _reference_logits(ema, tokens, eps_or_none), rtol=1e-5, atol=1e-5)
        run.model.load_state_dict(load_checkpoint(run.checkpoint, {"model": run.model.state_dict()})["model"])
        ours = run.model(tokens, eps_or_none)
        torch.testing.assert_close(ours, _reference_logits(weights, tokens, eps_or_none), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(ours, _reference_logits(ema, tokens, eps_or_none), atol=1e-3)
    assert torch.equal(run.model.head.linear.weight[V:], torch.zeros(24 - V, D))


def _fails(tmp_path, needle, recipe=None, trust_pickle=False):
    recipe = recipe or _recipe(tmp_path)
    with pytest.raises(CheckpointError) as info:
        import_reference(tmp_path / "ref.ckpt", recipe, trust_pickle)
    assert needle in str(info.value)
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []   # no run, no leftover staging folder


def test_bad_checkpoints_and_mismatched_recipes_are_refused(tmp_path):
    gen = torch.Generator().manual_seed(1)
    _fails(tmp_path, "file not found")
    _lightning_file(tmp_path / "ref.ckpt", gen)
    _fails(tmp_path, "vocabulary of 17 (mask included); this recipe's tokenizer gives 21", _recipe(tmp_path, vocab=20))
    _fails(tmp_path, "unexpected ['vocab_embed.imdm_mlp.0.bias'", _recipe(tmp_path, algo="mdlm"))
    ckpt = torch.load(tmp_path / "ref.ckpt")
    del ckpt["state_dict"]["backbone.blocks.1.mlp.0.bias"]
    torch.save(ckpt, tmp_path / "ref.ckpt")
    _fails(tmp_path, "missing ['blocks.1.mlp.0.bias']")
    _lightning_file(tmp_path / "ref.ckpt", gen)
    ckpt = torch.load(tmp_path / "ref.ckpt")
    ckpt["ema"]["shadow_params"].pop()
    torch.save(ckpt, tmp_path / "ref.ckpt")
    _fails(tmp_path, "EMA holds 32 tensors; its model has 33 trainable parameters")
    _lightning_file(tmp_path / "ref.ckpt", gen)
    ckpt = torch.load(tmp_path / "ref.ckpt")
    ckpt["state_dict"]["backbone.rotary_emb.inv_freq"] *= 0.5
    torch.save(ckpt, tmp_path / "ref.ckpt")
    _fails(tmp_path, "rotary frequencies")
    _lightning_file(tmp_path / "ref.ckpt", gen)
    ckpt = torch.load(tmp_path / "ref.ckpt")
    ckpt["state_dict"]["backbone.blocks.0.q_norm.weight"] = torch.ones(D // HEADS)
    torch.save(ckpt, tmp_path / "ref.ckpt")
    _fails(tmp_path, "q/k LayerNorms (qk_norm)")
    qk_recipe = recipe_from_dict({**_table(tmp_path), "model": {**_table(tmp_path)["model"], "qk_norm": True}})
    _fails(tmp_path, "model.qk_norm", qk_recipe)
    (tmp_path / "ref.ckpt").write_bytes((tmp_path / "ref.ckpt").read_bytes()[:5000])
    _fails(tmp_path, "is not a readable PyTorch checkpoint")


def _saved_config(**changes):
    """Ugness/IMDM's saved hyper-parameters for the test model, with dotted-key `changes`."""
    config = {"model": {"hidden_size": D, "n_blocks": BLOCKS, "n_heads": HEADS, "cond_dim": COND, "softcap": -1.0,
                        "noise_dim": NOISE, "length": 6, "dropout": 0.1},
              "algo": {"time_conditioning": False, "noise_type": "rand", "noise_scale": 1.0, "num_mask": -1},
              "data": {"cache_dir": "${hydra:runtime.cwd}/cache"}}
    for key, value in changes.items():
        section, name = key.split("__")
        config[section][name] = value
    return {"config": config, "weights_only": False, "vocab_size": V}


@pytest.mark.parametrize("change, message", [
    ({}, None),
    ({"model__n_heads": 2 * HEADS}, f"model.n_heads is {2 * HEADS} there, model.n_heads {HEADS} here"),
    ({"algo__time_conditioning": True}, "algo.time_conditioning is True there, algorithm.time_conditioning False"),
    ({"model__softcap": 50.0}, "model.softcap is 50.0 there, model.softcap 0.0 here"),
    ({"algo__noise_type": "randn"}, "algo.noise_type is 'randn' there, algorithm.noise_kind 'rand' here"),
    ({"algo__noise_scale": 2.0}, "algo.noise_scale is 2.0 there, algorithm.noise_scale 1.0 here"),
    ({"algo__num_mask": 4}, "algo.num_mask is 4 there, algorithm.num_masks 0 here"),
])
def test_saved_hyper_parameters_must_match_the_recipe(tmp_path, change, message):
    """What the weights cannot show (heads, time conditioning, soft-capping, the mask-state
    distribution) is checked against the checkpoint's saved configuration; unrelated keys and
    unresolved interpolations are ignored."""
    _lightning_file(tmp_path / "ref.ckpt", torch.Generator().manual_seed(4),
                    extra={"hyper_parameters": _saved_config(**change)})
    if message is None:
        assert latest_checkpoint(import_reference(tmp_path / "ref.ckpt", _recipe(tmp_path)) / "checkpoints")
    else:
        _fails(tmp_path, message)


def test_saved_omegaconf_configuration_is_read_unresolved(tmp_path):
    """The reference pickles its Hydra config as an OmegaConf DictConfig with interpolations that
    only resolve under Hydra; the check reads it unresolved."""
    omegaconf = pytest.importorskip("omegaconf")
    saved = _saved_config(model__n_heads=2 * HEADS)
    saved["config"] = omegaconf.OmegaConf.create(saved["config"])
    _lightning_file(tmp_path / "ref.ckpt", torch.Generator().manual_seed(5), extra={"hyper_parameters": saved})
    _fails(tmp_path, f"model.n_heads is {2 * HEADS} there", trust_pickle=True)


def test_a_missing_module_for_pickled_objects_is_named(tmp_path, monkeypatch):
    (tmp_path / "vanishing_module.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_module
    _lightning_file(tmp_path / "ref.ckpt", torch.Generator().manual_seed(6),
                    extra={"hyper_parameters": {"tokenizer": vanishing_module.Thing()}})
    monkeypatch.delitem(sys.modules, "vanishing_module")
    (tmp_path / "vanishing_module.py").unlink()
    _fails(tmp_path, "pickles objects of the module 'vanishing_module', which is not installed here", trust_pickle=True)


def test_pickled_objects_need_trust_and_runs_are_never_overwritten(tmp_path):
    gen = torch.Generator().manual_seed(2)
    _lightning_file(tmp_path / "ref.ckpt", gen, extra={"hyper_parameters": argparse.Namespace(lr=3e-4)})
    _fails(tmp_path, "pass --trust-pickle")
    run_dir = import_reference(tmp_path / "ref.ckpt", _recipe(tmp_path), trust_pickle=True)
    assert latest_checkpoint(run_dir / "checkpoints") is not None
    with pytest.raises(CheckpointError, match="exists already"):
        import_reference(tmp_path / "ref.ckpt", _recipe(tmp_path), trust_pickle=True)
    assert main([str(tmp_path / "missing.ckpt"), "--recipe", "builtin:quickstart"]) == 2
    overrides = [f"run.output_dir={tmp_path / 'cli'}", "run.name=ref", "model.size=custom", f"model.d_model={D}",
                 f"model.n_blocks={BLOCKS}", f"model.n_heads={HEADS}", "algorithm.name=imdm",
                 f"algorithm.noise_dim={NOISE}", f"data.vocab_size={V - 1}", "data.seq_len=6"]
    assert main([str(tmp_path / "ref.ckpt"), "--recipe", "builtin:synthetic", "--trust-pickle", *overrides]) == 0
    assert load_run(tmp_path / "cli" / "ref", torch.device("cpu")).step == 1234


def test_export_writes_the_ema_weights_without_head_padding(tmp_path):
    from safetensors.torch import load_file
    gen = torch.Generator().manual_seed(3)
    _, ema = _lightning_file(tmp_path / "ref.ckpt", gen)
    run_dir = import_reference(tmp_path / "ref.ckpt", _recipe(tmp_path))
    out = export_run(run_dir, tmp_path / "export")
    tensors = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(tensors["head.linear.weight"], ema["output_layer.linear.weight"])
    torch.testing.assert_close(tensors["blocks.1.attn.qkv.weight"], ema["blocks.1.attn_qkv.weight"])
    config = json.loads((out / "config.json").read_text())
    assert config["weights"] == "ema" and config["step"] == 1234 and config["dit"]["vocab_size"] == V
    assert (out / "recipe.toml").read_text() == (run_dir / "recipe.toml").read_text()
    raw = load_file(str(export_run(run_dir, tmp_path / "raw", raw=True) / "model.safetensors"))
    assert not torch.equal(raw["head.linear.weight"], tensors["head.linear.weight"])
    with pytest.raises(CheckpointError, match="exists already"):
        export_run(run_dir, tmp_path / "export")


def test_safetensors_weights_import_without_ema(tmp_path, capsys):
    from safetensors.torch import save_file
    gen = torch.Generator().manual_seed(4)
    state = _reference_state(gen, imdm=True)
    save_file({f"backbone.{k}": v for k, v in state.items()}, str(tmp_path / "ref.safetensors"))
    run_dir = import_reference(tmp_path / "ref.safetensors", _recipe(tmp_path))
    assert "has no EMA" in capsys.readouterr().err
    tokens, eps = _inputs(gen)
    with torch.no_grad():
        ours = load_run(run_dir, torch.device("cpu")).model(tokens, eps)
    torch.testing.assert_close(ours, _reference_logits(state, tokens, eps), rtol=1e-5, atol=1e-5)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        import_reference(tmp_path / "bad.safetensors", _recipe(tmp_path, name="other"))
