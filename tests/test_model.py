"""The DiT: sizes of docs/method.md section 7, IMDM == MDLM at initialisation, attention backends,
rotary positions, the mask-state variants."""

import pytest
import torch

from imdm.models.dit import DiT, DiTConfig, count_parameters
from imdm.models.layers import apply_rotary, rotary_tables
from imdm.models.mask_state import MaskStateConfig

GPT2_V, GPT2_MASK = 50258, 50257


@pytest.mark.parametrize("size,dims,millions", [
    ("small", (768, 12, 12), 169.6), ("medium", (1024, 24, 16), 424.5), ("large", (1536, 24, 16), 863.2)])
def test_parameter_counts_match_spec(size, dims, millions):
    with torch.device("meta"):
        mdlm = DiT(DiTConfig(GPT2_V, GPT2_MASK, *dims))
        imdm = DiT(DiTConfig(GPT2_V, GPT2_MASK, *dims, mask_state=MaskStateConfig(2048), vocab_pad_multiple=128))
    assert round(count_parameters(mdlm) / 1e6, 1) == millions
    d = dims[0]
    assert count_parameters(imdm) - count_parameters(mdlm) == 2048 * 4 * d + 4 * d + 4 * d * d


def test_bert_small_parameter_count():
    with torch.device("meta"):
        model = DiT(DiTConfig(30522, 103, 768, 12, 12))
    assert round(count_parameters(model) / 1e6, 1) == 139.3


def _tiny(mask_state=None, **kw):
    cfg = dict(vocab_size=37, mask_id=36, d_model=48, n_blocks=2, n_heads=4, dropout=0.0)
    cfg.update(kw)
    return DiT(DiTConfig(**cfg, mask_state=mask_state))


def _perturb(model):
    """Give the zero-initialised parts (adaLN, head) non-zero values so outputs are informative."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mask_state" not in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def test_imdm_at_init_computes_exactly_mdlm():
    torch.manual_seed(0)
    mdlm = _tiny()
    _perturb(mdlm)
    imdm = _tiny(MaskStateConfig(noise_dim=16))
    missing, unexpected = imdm.load_state_dict(mdlm.state_dict(), strict=False)
    assert all(k.startswith("mask_state.") for k in missing) and not unexpected
    tokens = torch.randint(0, 37, (3, 11))
    tokens[:, ::2] = 36
    noise = torch.rand(3, 11, 16) * 2 - 1
    assert torch.equal(imdm(tokens, noise), mdlm(tokens))
    with torch.no_grad():
        imdm.mask_state.fc2.weight.normal_()
    changed = imdm(tokens, noise)
    assert not torch.allclose(changed, mdlm(tokens))
    # only masked positions see the mask state, but attention spreads it everywhere
    assert not torch.allclose(changed[:, 1], mdlm(tokens)[:, 1])


def test_mask_state_only_enters_at_mask_positions():
    torch.manual_seed(0)
    model = _tiny(MaskStateConfig(noise_dim=8))
    with torch.no_grad():
        model.mask_state.fc2.weight.normal_()
    tokens = torch.randint(0, 36, (2, 9))
    noise = torch.rand(2, 9, 8)
    other = torch.rand(2, 9, 8)
    assert torch.equal(model(tokens, noise), model(tokens, other))  # no mask position: no effect


@pytest.mark.parametrize("kind,num_masks", [("randn", 0), ("learnable", 0), ("rand", 3)])
def test_mask_state_variants(kind, num_masks):
    cfg = MaskStateConfig(noise_dim=8, kind=kind, num_masks=num_masks)
    model = _tiny(cfg)
    tokens = torch.full((2, 5), 36)
    noise = torch.rand(2, 5, cfg.noise_width) * 2 - 1
    assert model(tokens, noise).shape == (2, 5, 37)
    if num_masks:
        idx = model.mask_state.eps(noise)
        assert idx.dtype == torch.int64 and 0 <= int(idx.min()) and int(idx.max()) < num_masks
    with pytest.raises(ValueError, match="mask-state noise"):
        model(tokens)


def test_attention_backends_agree_and_softcap_changes_scores():
    torch.manual_seed(0)
    sdpa = _tiny()
    _perturb(sdpa)
    math_model = _tiny(attention="math")
    math_model.load_state_dict(sdpa.state_dict())
    tokens = torch.randint(0, 37, (2, 13))
    torch.testing.assert_close(sdpa(tokens), math_model(tokens), rtol=1e-4, atol=1e-5)
    capped = _tiny(attention="math", softcap=0.05)
    capped.load_state_dict(sdpa.state_dict())
    assert not torch.allclose(capped(tokens), sdpa(tokens), atol=1e-4)


def test_rotary_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    cos, sin = rotary_tables(40, 16, "cpu")

    def score(m, n):
        return float((apply_rotary(q, cos[m], sin[m]) * apply_rotary(k, cos[n], sin[n])).sum())

    assert score(3, 9) == pytest.approx(score(20, 26), rel=1e-4, abs=1e-5)
    assert score(3, 9) != pytest.approx(score(3, 10), rel=1e-3)
    assert score(5, 5) == pytest.approx(float((q * k).sum()), rel=1e-4, abs=1e-5)


def test_model_is_position_aware():
    torch.manual_seed(0)
    model = _tiny(n_blocks=1)
    _perturb(model)
    tokens = torch.randint(0, 36, (1, 12))
    swapped = tokens.clone()
    swapped[0, [2, 7]] = swapped[0, [7, 2]]
    assert not torch.allclose(model(swapped)[0, 0], model(tokens)[0, 0])


def test_padding_of_the_head_is_invisible():
    torch.manual_seed(0)
    plain = _tiny()
    padded = _tiny(vocab_pad_multiple=16)
    assert padded.head.linear.weight.shape[0] == 48
    _perturb(plain)
    state = plain.state_dict()
    for key in ("head.linear.weight", "head.linear.bias"):
        full = torch.zeros_like(padded.state_dict()[key])
        full[:37] = state[key]
        state[key] = full
    padded.load_state_dict(state)
    tokens = torch.randint(0, 37, (2, 7))
    assert torch.equal(padded(tokens), plain(tokens))


def test_mask_state_on_listed_rows_equals_dense_noise():
    torch.manual_seed(0)
    model = _tiny(MaskStateConfig(noise_dim=8))
    _perturb(model)
    with torch.no_grad():
        model.mask_state.fc2.weight.normal_()
    tokens = torch.randint(0, 36, (3, 10))
    tokens[0, [1, 4]] = 36
    tokens[2, 9] = 36
    dense = torch.rand(3, 10, 8) * 2 - 1
    rows = torch.nonzero(tokens == 36, as_tuple=True)
    torch.testing.assert_close(model(tokens, dense[rows], noise_index=rows), model(tokens, dense), rtol=0, atol=1e-6)


def test_compiled_blocks_share_one_graph_after_the_first():
    """The first block (no pending residual branch) and the others compile to one graph each per
    mode: nothing block-specific (an index, a seed as a Python int) reaches the graphs."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = DiT(DiTConfig(vocab_size=41, mask_id=40, d_model=16, n_blocks=4, n_heads=2, dropout=0.1))
    for block in model.blocks:   # as parallel.compile.compile_blocks, with Dynamo's graphs run as they are
        block.compile(fullgraph=True, backend="eager")
    tokens = torch.randint(0, 41, (2, 7))
    for _ in range(2):
        model.train()(tokens).sum().backward()
    with torch.no_grad():
        model.eval()(tokens)
    assert counters["stats"]["unique_graphs"] == 4     # (first, rest) x (train, eval)
    torch._dynamo.reset()
