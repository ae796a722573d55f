"""The autoregressive baseline (`algorithm.name = "ar"`): the next-token loss by hand, causal
attention and its key-value cache, seeded sampling (reproducible, prefix, greedy, the draws'
distribution), and a run through the trainer, resume, `imdm sample` and `imdm eval`."""

import json
import math

import pytest
import torch

from imdm.algorithms.autoregressive import Autoregressive, NextTokenSettings
from imdm.algorithms.registry import recipe_from_dict
from imdm.cli import main as cli_main
from imdm.couplings import generate_couplings
from imdm.diffusion.subs import without_mask
from imdm.models.dit import DiT, DiTConfig, KVCache
from imdm.parallel.distributed import init_distributed
from imdm.recipe import RecipeError
from imdm.run_loading import load_run
from imdm.train.trainer import Trainer

V, MASK = 6, 6          # real tokens 0..5, the mask (start symbol) is 6


class _Bigram(torch.nn.Module):
    """A 'network' whose logits at each position are the table row of the token it reads there."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, z, select=None, **_):
        logits = self.table[z]
        return logits if select is None else logits[select]


def test_loss_is_the_next_token_nll_by_hand():
    torch.manual_seed(0)
    table = torch.randn(V + 1, V + 1)
    table[:, MASK] = 50.0                    # the mask's logit must never count
    x0 = torch.tensor([[0, 3, 3, 5], [2, 1, 4, 4]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    ar = Autoregressive(MASK)
    got = ar.loss(_Bigram(table), x0, torch.arange(2), 2, 0, valid=valid)
    expected = 0.0
    for b in range(2):
        for i in range(4):
            if valid[b, i]:
                row = table[MASK if i == 0 else int(x0[b, i - 1]), :V].tolist()
                expected += math.log(sum(math.exp(v) for v in row)) - row[int(x0[b, i])]
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert ar.loss_count(torch.arange(2), 2, 0, valid) == 6
    assert ar.inputs(x0).tolist() == [[MASK, 0, 3, 3], [MASK, 2, 1, 4]]


def _model(causal=True, attention="sdpa", vocab=V + 1, seed=0):
    torch.manual_seed(seed)
    model = DiT(DiTConfig(vocab_size=vocab, mask_id=vocab - 1, d_model=32, n_blocks=2, n_heads=2, dropout=0.0,
                          attention=attention, causal=causal))
    with torch.no_grad():                    # adaLN-Zero starts as the identity: perturb everything
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_attention_is_causal_and_the_cache_matches(attention):
    x = torch.randint(0, V, (3, 9))
    changed = x.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % V
    with torch.no_grad():
        causal = _model(attention=attention)
        full = causal(x)
        assert torch.equal(causal(changed)[:, :5], full[:, :5])       # later tokens are invisible
        assert not torch.allclose(causal(changed)[:, 5:], full[:, 5:])
        bidirectional = _model(causal=False, attention=attention)
        assert not torch.allclose(bidirectional(changed)[:, :5], bidirectional(x)[:, :5], atol=1e-3)
        cache = KVCache(2)                   # a prefill, a chunk after it, then one token at a time
        pieces = [causal(x[:, a:b], cache=cache) for a, b in ((0, 3), (3, 6), (6, 7), (7, 8), (8, 9))]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="causal"):
            bidirectional(x, cache=KVCache(2))


def test_fused_loss_and_row_buckets_match_the_logits_path():
    model, x0 = _model(vocab=37), torch.randint(0, 36, (4, 12))
    valid = torch.ones(4, 12, dtype=torch.bool)
    valid[1, 8:] = False
    results = []
    for fused, bucket in ((False, 1), (True, 1), (True, 16)):
        model.zero_grad()
        loss = Autoregressive(36, fused_loss=fused, row_bucket=bucket).loss(model, x0, torch.arange(4), 4, 0,
                                                                             valid=valid)
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_on_cuda_the_fused_loss_matches_the_logits_path_and_the_cache_matches():
    """On the GPU the fused head loss is the Triton kernel and attention is SDPA's fused one."""
    model, x0 = _model(vocab=1001).cuda(), torch.randint(0, 1000, (6, 33), device="cuda")
    losses, grads = [], []
    for fused in (False, True):
        model.zero_grad()
        loss = Autoregressive(1000, fused_loss=fused, row_bucket=16).loss(model, x0, torch.arange(6), 6, 0)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        full, cache = model(x0), KVCache(2)
        pieces = [model(x0[:, a:b], cache=cache) for a, b in ((0, 17), (17, 18), (18, 33))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)


def test_sampling_is_seeded_honours_the_prefix_and_greedy_is_the_argmax():
    model, ar, seeds = _model(), Autoregressive(MASK), torch.arange(100, 132)
    first = ar.sample(model, NextTokenSettings(), seeds, 8)
    assert first.nfe == 8 and first.tokens.shape == (32, 8) and not (first.tokens == MASK).any()
    assert torch.equal(ar.sample(model, NextTokenSettings(), seeds, 8).tokens, first.tokens)
    assert not torch.equal(ar.sample(model, NextTokenSettings(), seeds + 1, 8).tokens, first.tokens)
    # the draw at position i depends on (seed, i) only: the sample's own prefix gives it back
    again = ar.sample(model, NextTokenSettings(), seeds, 8, prefix=first.tokens[:, :3])
    assert again.nfe == 5 and torch.equal(again.tokens, first.tokens)
    other = torch.randint(0, V, (32, 3))
    assert torch.equal(ar.sample(model, NextTokenSettings(), seeds, 8, prefix=other).tokens[:, :3], other)
    greedy = ar.sample(model, NextTokenSettings(noise_removal="greedy"), seeds, 8).tokens
    with torch.no_grad():
        argmax = without_mask(model(ar.inputs(greedy)), MASK).argmax(dim=-1)
    assert torch.equal(greedy, argmax) and torch.equal(greedy, greedy[:1].expand_as(greedy))
    with pytest.raises(ValueError, match="prefix"):
        ar.sample(model, NextTokenSettings(), seeds, 8, start=first.tokens)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_first_token_frequencies_match_the_model(temperature, top_p):
    model, ar, n = _model(seed=3), Autoregressive(MASK), 20_000
    tokens = ar.sample(model, NextTokenSettings(temperature, top_p), torch.arange(n), 1).tokens[:, 0]
    with torch.no_grad():
        logits = without_mask(model(torch.tensor([[MASK]]))[0, 0], MASK).double()
    p = torch.softmax(logits / temperature, dim=-1)
    order = p.argsort(descending=True)
    before = p[order].cumsum(0) - p[order]
    p[order[before >= top_p]] = 0.0          # the nucleus
    p = p / p.sum()
    assert top_p == 1.0 or (p == 0).any()
    counts = torch.bincount(tokens, minlength=V + 1).double()
    sigma = (n * p * (1 - p)).sqrt()
    assert ((counts - n * p).abs() <= 5 * sigma + 1e-9).all(), (counts, n * p)


def _table(tmp_path, name, steps):
    return {
        "run": {"output_dir": str(tmp_path), "name": name, "seed": 1},
        "model": {"size": "custom", "d_model": 32, "n_blocks": 1, "n_heads": 2, "dropout": 0.0},
        "algorithm": {"name": "ar"},
        "data": {"vocab_size": 8, "seq_len": 5, "num_sequences": 512},
        "optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 2},
        "train": {"steps": steps, "global_batch": 32, "micro_batch": 16, "eval_batches": 1, "ema_decay": 0.0},
        "logging": {"every_steps": 1, "progress": False},
        "sampling": {"steps": [5], "num_samples": 256, "batch": 256},
    }


def _recipe(tmp_path, name, steps):
    return recipe_from_dict(_table(tmp_path, name, steps))


def test_ar_trains_resumes_samples_and_evaluates(tmp_path, capsys):
    dist = init_distributed("cpu")
    straight = Trainer(_recipe(tmp_path, "straight", 40), dist)
    assert straight.model.cfg.causal and not straight.model.cfg.time_conditioning
    first = straight.validation_nelbo(straight.model)
    straight.fit()
    assert straight.validation_nelbo(straight.model) < 0.5 * first     # optimum: ln 8 / 5 of ln 8
    Trainer(_recipe(tmp_path, "split", 20), dist).fit()
    resumed = Trainer(_recipe(tmp_path, "split", 40), dist)
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    run_dir = tmp_path / "straight"
    assert cli_main(["sample", str(run_dir), "--num-samples", "4", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    run = load_run(run_dir, torch.device("cpu"))
    assert isinstance(run.process, Autoregressive) and out["nfe"] == 5 and len(out["samples"]) == 4
    assert cli_main(["eval", str(run_dir)]) == 0
    rows = json.loads((run_dir / "eval.json").read_text())["rows"]
    assert rows[0]["method"] == "ar" and rows[0]["nfe"] == 5
    # one-step floor: 8^-4; a next-token model copies the first token
    assert rows[0]["validity"] > 0.9 and rows[0]["validity_greedy"] == 1.0
    pairs = recipe_from_dict({**_table(tmp_path, "pairs", 1), "couplings": {"teacher_run": "straight", "num": 8}})
    with pytest.raises(RecipeError, match="masked diffusion teacher"):
        generate_couplings(pairs, dist)


@pytest.mark.parametrize("setting,needle", [
    ({"algorithm": {"name": "ar", "time_conditioning": True}}, "algorithm.time_conditioning"),
    ({"algorithm": {"name": "ar"}, "sampling": {"posterior": "mdlm"}}, "sampling.posterior"),
    ({"algorithm": {"name": "ar"}, "sampling": {"draws": "eps"}}, "sampling.draws"),
    ({"algorithm": {"name": "ar", "objective": "sdtt"}, "init": {"from_run": "x"}}, "distils masked diffusion"),
])
def test_ar_recipes_are_checked(setting, needle):
    with pytest.raises(RecipeError, match=needle):
        recipe_from_dict(setting)
