"""Schedules, training times, SUBS, the NELBO and the posterior weights against docs/method.md."""

import math

import pytest
import torch

from imdm.algorithms.masked_diffusion import MaskedDiffusion
from imdm.data.order import GlobalBatchOrder
from imdm.diffusion.forward_process import mask_positions
from imdm.diffusion.posterior import step_weights
from imdm.diffusion.schedule import CosineSchedule, LogLinearSchedule
from imdm.diffusion.subs import NEG_INF, without_mask
from imdm.diffusion.times import sample_seeds, training_times


def test_loglinear_weight_is_one_over_t_and_matches_derivative():
    s = LogLinearSchedule(1e-3)
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64, requires_grad=True)
    alpha = s.alpha(t)
    (d_alpha,) = torch.autograd.grad(alpha.sum(), t)
    torch.testing.assert_close(-d_alpha / (1 - alpha.detach()), 1 / t.detach())
    torch.testing.assert_close(s.loss_weight(t.detach()), 1 / t.detach())
    c = CosineSchedule(1e-3)
    alpha = c.alpha(t)
    (d_alpha,) = torch.autograd.grad(alpha.sum(), t)
    torch.testing.assert_close(c.loss_weight(t.detach()), -d_alpha / (1 - alpha.detach()))


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_stratified_t_identical_whatever_the_world_size(world):
    n, micro = 32, 2
    reference = training_times(5, 11, n)
    order = GlobalBatchOrder(1000, n, 0)
    slices = [i for r in range(world) for i in order.rank_slices(r, world, micro)]
    assert torch.equal(torch.cat(slices), torch.arange(n))   # ranks x micro-batches tile the global batch once
    # one t per stratum of the GLOBAL batch, after the affine map to [1e-3, 1]
    raw = (reference - 1e-3) / (1 - 1e-3)
    assert sorted(torch.floor(raw * n).long().tolist()) == list(range(n))
    assert not torch.equal(reference, training_times(5, 12, n))
    iid = (training_times(5, 11, n, antithetic=False) - 1e-3) / (1 - 1e-3)
    assert sorted(torch.floor(iid * n).long().tolist()) == list(range(n))   # one u_i per stratum


def test_subs_never_predicts_mask():
    torch.manual_seed(0)
    mask_id = 4
    logits = torch.randn(3, 6, 5).to(torch.bfloat16)
    logits[..., mask_id] = 50.0          # the network would love to predict the mask
    out = without_mask(logits, mask_id)
    assert out.dtype == torch.float32 and torch.all(out[..., mask_id] == NEG_INF)
    logp = torch.log_softmax(out, -1)
    assert torch.all(logp[..., mask_id] < -1e5)
    torch.testing.assert_close(logp[..., :mask_id], torch.log_softmax(logits[..., :mask_id].float(), -1))


class _FixedLogits(torch.nn.Module):
    """A 'network' whose logits at every position are a fixed table row chosen by position."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, z, noise, sigma, select, noise_index=None):
        return self.table[: z.shape[1]].expand(z.shape[0], -1, -1)[select]


def test_nelbo_hand_computed_tiny_case():
    mask_id = 3
    table = torch.tensor([[2.0, 0.0, -1.0, 9.0], [0.5, 0.5, 0.0, 9.0], [0.0, 1.0, 3.0, 9.0]])
    x0 = torch.tensor([[0, 1, 2], [2, 2, 1]])
    algo = MaskedDiffusion(LogLinearSchedule(1e-3), mask_id, seed=3)
    index = torch.arange(2)
    got = algo.loss(_FixedLogits(table), x0, index, global_batch=2, step=4)
    # recompute by hand from the drawn t and masks
    t = training_times(3, 4, 2).float()
    masked = mask_positions(sample_seeds(3, 4, index), 3, (1 - 1e-3) * t)
    expected = 0.0
    for b in range(2):
        for i in range(3):
            if masked[b, i]:
                row = table[i, :3].tolist()
                log_z = math.log(sum(math.exp(v) for v in row))
                expected += (1 / float(t[b])) * (log_z - row[int(x0[b, i])])
    assert masked.any()
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("t,s", [(1.0, 0.75), (0.6, 0.3), (0.2, 0.19), (0.05, 1e-5)])
def test_imdm_posterior_weights_sum_to_one_and_match_spec(t, s):
    sched = LogLinearSchedule(1e-3)
    a_t, a_s = float(sched.alpha(torch.tensor(t))), float(sched.alpha(torch.tensor(s)))
    w = step_weights(a_t, a_s, "imdm")
    a_ts = a_t / a_s
    assert w.unmask == pytest.approx((a_s - a_t) / (1 - a_t))
    assert w.stay_keep == pytest.approx((a_ts - a_t) / (1 - a_t))
    assert w.stay_redraw == pytest.approx((1 - a_ts) * (1 - a_s) / (1 - a_t))
    assert w.unmask + w.stay_keep + w.stay_redraw == pytest.approx(1.0, abs=1e-12)
    mdlm = step_weights(a_t, a_s, "mdlm")
    assert mdlm.stay == pytest.approx(w.stay) and mdlm.stay_redraw == 0.0
    assert step_weights(a_t, a_s, "imdm", fix_eps=True).stay_redraw == 0.0
    last = step_weights(a_t, 1.0, "imdm")
    assert last.unmask == pytest.approx(1.0) and last.stay == pytest.approx(0.0)


def test_posterior_rejects_reversed_times():
    with pytest.raises(ValueError):
        step_weights(0.8, 0.5, "imdm")
