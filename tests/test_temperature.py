"""The two temperature forms of the masked-diffusion sampler (docs/method.md section 1, "Sampling
options"): the reference's ("step": every outcome of a reverse step raised to 1/T, keep and
re-draw apart) and x_theta's alone ("x_theta"), against weights computed by hand; the fused
kernel against the eager step for both; T = 1 leaves both untempered."""

import math

import pytest
import torch

from imdm import rng
from imdm.algorithms.registry import recipe_from_dict
from imdm.build import sampler_settings
from imdm.diffusion.forward_process import mask_noise
from imdm.diffusion.posterior import step_weights, tempered_step_weights
from imdm.diffusion.schedule import LogLinearSchedule
from imdm.kernels.sampler_step import outcome_weights, per_sample_weights, sampler_step
from imdm.sampling.ancestral import SamplerSettings, ancestral_sample, sampler_weights

# t = 0.5 -> s = 0.25 with alpha_t = 1 - t (the log-linear schedule without its 1e-3 floor):
# untempered, unmask (alpha_s - alpha_t) / (1 - alpha_t) = 1/2 (times x_theta), stay 1/2, which IMDM
# splits with a_ts = 2/3 into keep (a_ts - alpha_t) / (1 - alpha_t) = 1/3 and re-draw
# (1 - a_ts)(1 - alpha_s) / (1 - alpha_t) = 1/6
ALPHA_T, ALPHA_S, T = 0.5, 0.75, 0.5
X_THETA = (0.6, 0.2, 0.2)           # over the 3 real tokens; the mask id is 3
MASK = 3

# (posterior, mask states, form, fix_eps) -> P(token 0), P(token 1) = P(token 2), P(keep), P(re-draw), by hand:
# "step": weights squared, then normalised. MDLM: tokens (0.3^2, 0.1^2, 0.1^2) = (0.09, 0.01, 0.01), stay
# 0.5^2 = 0.25, total 0.36. IMDM: tokens as MDLM, keep (1/3)^2 = 1/9, re-draw (1/6)^2 = 1/36, total 56/225.
# "x_theta": x_theta^2 renormalised = (9/11, 1/11, 1/11) times 1/2; stay as untempered.
HAND = {
    ("mdlm", False, "step", False): (1 / 4, 1 / 36, 25 / 36, 0.0),
    ("imdm", True, "step", False): (81 / 224, 9 / 224, 25 / 56, 25 / 224),
    ("imdm", True, "step", True): (81 / 224, 9 / 224, 125 / 224, 0.0),     # fix_eps: a re-draw keeps
    ("mdlm", True, "step", False): (1 / 4, 1 / 36, 25 / 36, 0.0),          # IMDM model, MDLM posterior
    ("mdlm", False, "x_theta", False): (9 / 22, 1 / 22, 1 / 2, 0.0),
    ("imdm", True, "x_theta", False): (9 / 22, 1 / 22, 1 / 3, 1 / 6),
    ("imdm", True, "x_theta", True): (9 / 22, 1 / 22, 1 / 2, 0.0),
}


def _settings(posterior, form, fix_eps=False, temperature=T, **kw):
    return SamplerSettings(4, posterior, fix_eps=fix_eps, temperature=temperature, temperature_form=form, **kw)


def _step_probabilities(posterior, mask_states, form, fix_eps):
    """(P(token v) [3], P(keep), P(re-draw)) of the sampler's step from X_THETA's logits."""
    w = sampler_weights(_settings(posterior, form, fix_eps), ALPHA_T, ALPHA_S, mask_states)
    rows = per_sample_weights(1, w.unmask, w.stay_keep, w.stay_redraw)
    logits = torch.tensor([[*map(math.log, X_THETA), 5.0]], dtype=torch.float64)   # SUBS removes the mask logit
    p = outcome_weights(logits, rows, MASK, T, 1.0, form)[0]
    p = p / p.sum()
    stay, share = float(p[MASK]), float(rows[0, 2])
    return p[:MASK], stay * (1 - share), stay * share


@pytest.mark.parametrize("case", list(HAND))
def test_step_weights_at_half_temperature_by_hand(case):
    tokens, keep, redraw = _step_probabilities(*case)
    p0, p1, hand_keep, hand_redraw = HAND[case]
    torch.testing.assert_close(tokens, torch.tensor([p0, p1, p1], dtype=torch.float64), rtol=0, atol=1e-12)
    assert math.isclose(keep, hand_keep, abs_tol=1e-12) and math.isclose(redraw, hand_redraw, abs_tol=1e-12)


def test_the_reference_form_keeps_more_positions_masked():
    """At T = 0.5 from t = 0.5 to 0.25, P(stay) is 25/36 = 0.69 in MDLM with the step tempered,
    1/2 with x_theta alone; IMDM tempers keep and re-draw apart (125/224)."""
    stay = {k: sum(_step_probabilities(*k)[1:]) for k in HAND}
    assert round(stay[("mdlm", False, "step", False)], 2) == 0.69 and stay[("mdlm", False, "x_theta", False)] == 0.5
    assert math.isclose(stay[("imdm", True, "step", False)], 125 / 224)


@pytest.mark.parametrize("case", [("mdlm", False, "step", False), ("imdm", True, "step", False),
                                  ("imdm", True, "x_theta", False)])
def test_sampler_step_draws_at_the_hand_computed_rates(case):
    """20,000 positions sharing X_THETA draw each token, keep and re-draw at the hand-computed
    rates; the fused kernel draws what the eager step draws on the first 48 of them."""
    posterior, mask_states, form, fix_eps = case
    n = 20_000
    w = sampler_weights(_settings(posterior, form, fix_eps), ALPHA_T, ALPHA_S, mask_states)
    logits = torch.tensor([*map(math.log, X_THETA), 5.0]).expand(1, n, 4)
    z = torch.full((1, n), MASK)
    seeds = rng.derive_seed(3, torch.arange(1), rng.STREAM_SAMPLE_SEED)
    args = (z, seeds, 0, w.unmask, w.stay_keep, w.stay_redraw, MASK, T, 1.0, form)
    eager, redrawn = sampler_step(logits, *args, backend="eager")
    head = (logits[:, :48], z[:, :48], *args[1:])
    assert all(torch.equal(a, b) for a, b in zip(sampler_step(*head, backend="triton"),
                                                  sampler_step(*head, backend="eager")))
    p0, p1, keep, redraw = HAND[case]
    outcomes = {"token 0": (eager == 0, p0), "token 1": (eager == 1, p1), "token 2": (eager == 2, p1),
                "keep": ((eager == MASK) & ~redrawn, keep), "re-draw": (redrawn, redraw)}
    for name, (hits, p) in outcomes.items():
        rate = float(hits.double().mean())
        assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (name, rate, p)


@pytest.mark.parametrize("vocab,batch,seq_len,posterior,temperature,top_p", [
    (97, 3, 11, "imdm", 0.6, 1.0),
    (97, 5, 7, "mdlm", 1.4, 0.85),
    (50258, 3, 5, "imdm", 1.3, 0.9),
])
@pytest.mark.parametrize("form", ["step", "x_theta"])
def test_kernel_equals_eager_for_both_forms(vocab, batch, seq_len, posterior, temperature, top_p, form):
    gen = torch.Generator().manual_seed(vocab + seq_len)
    mask_id = vocab - 2
    logits = 3 * torch.randn(batch, seq_len, vocab, generator=gen)
    z = torch.randint(0, mask_id, (batch, seq_len), generator=gen)
    z[torch.rand(batch, seq_len, generator=gen) < 0.8] = mask_id
    seeds = rng.derive_seed(7, torch.arange(batch), rng.STREAM_SAMPLE_SEED)
    w = sampler_weights(_settings(posterior, form, temperature=temperature), 0.3, 0.45, True)
    args = (logits, z, seeds, 2, w.unmask, w.stay_keep, w.stay_redraw, mask_id, temperature, top_p, form)
    (z_k, redraw_k), (z_ref, redraw_ref) = (sampler_step(*args, backend=b) for b in ("triton", "eager"))
    assert torch.equal(z_k, z_ref) and torch.equal(redraw_k, redraw_ref)
    masked = z == mask_id
    assert (z_k[masked] != mask_id).any() and (z_k[masked] == mask_id).any()


def test_step_form_tempers_the_scalar_weights_and_nothing_at_t_one():
    untempered = step_weights(ALPHA_T, ALPHA_S, "imdm")
    hot = tempered_step_weights(untempered, 0.5)
    assert (hot.unmask, hot.stay_keep, hot.stay_redraw) == pytest.approx((1 / 4, 1 / 9, 1 / 36))
    for form in ("step", "x_theta"):
        w = sampler_weights(_settings("imdm", form, temperature=1.0), ALPHA_T, ALPHA_S, True)
        assert (w.unmask, w.stay_keep, w.stay_redraw) == pytest.approx((1 / 2, 1 / 3, 1 / 6))


V = 11


def _denoise(z, noise, t):
    """Raw logits that depend on the tokens and on the mask states (so re-draws matter)."""
    base = torch.linspace(-2, 2, V) * (1 + (z.float().mean(-1, keepdim=True) % 3))[..., None]
    return base + 4 * noise[..., :1] * torch.arange(V) / V


def _noise_for(seeds, generation):
    return mask_noise(seeds, 12, 3, "uniform", generation)


def _sample(form, temperature, kernel):
    seeds = rng.derive_seed(9, torch.arange(2), rng.STREAM_SAMPLE_SEED)
    settings = _settings("imdm", form, temperature=temperature, kernel=kernel, cached=False)
    return ancestral_sample(_denoise, LogLinearSchedule(), settings, seeds, 12, 7, _noise_for).tokens


@pytest.mark.parametrize("kernel", ["eager", "triton"])
def test_unit_temperature_leaves_both_forms_untempered(kernel):
    assert torch.equal(_sample("step", 1.0, kernel), _sample("x_theta", 1.0, kernel))


def test_the_forms_differ_below_unit_temperature():
    assert not torch.equal(_sample("step", 0.5, "eager"), _sample("x_theta", 0.5, "eager"))


def test_recipe_key_reaches_the_sampler():
    default = recipe_from_dict({"algorithm": {"name": "imdm"}, "sampling": {"temperature": 0.8}})
    assert sampler_settings(default, 4).temperature_form == "step"
    other = recipe_from_dict({"algorithm": {"name": "imdm"},
                              "sampling": {"temperature": 0.8, "temperature_form": "x_theta"}})
    assert sampler_settings(other, 4).temperature_form == "x_theta"
