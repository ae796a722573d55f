"""The fused masked loss (imdm.kernels.masked_loss): the Triton kernel (on the GPU when there is
one, else on CPU through the interpreter) and the eager reference against plain full-logits
PyTorch, in float32, on odd shapes; the mask and padding columns are dropped; several chunks
agree with one; the bf16 head weight gradient summed over chunks in float32; no rows;
torch.compile; the fused MDLM loss of MaskedDiffusion and its row buckets; and, on the GPU, bf16
against PyTorch's own bf16 error."""

import pytest
import torch

from imdm.algorithms.masked_diffusion import MaskedDiffusion, row_indices
from imdm.diffusion.nelbo import masked_token_nll
from imdm.diffusion.schedule import LogLinearSchedule
from imdm.kernels import masked_loss
from imdm.kernels.masked_loss import fused_masked_nll
from imdm.models.dit import DiT, DiTConfig
from imdm.models.mask_state import MaskStateConfig

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["triton", "eager"]
# rows, d, vocab, padding multiple, mask id
SHAPES = {"gpt2": (9, 123, 50258, 64, 50257), "small": (47, 123, 97, 8, 13)}
TOL = dict(rtol=1e-4, atol=1e-5)


def _problem(rows, d, vocab, pad, mask_id, seed=0, device=DEVICE):
    """h, W, b (padded head) as leaves requiring grad, real non-mask targets, and row weights
    spanning three decades with one zero."""
    g = torch.Generator().manual_seed(seed)
    padded = -(-vocab // pad) * pad
    h = torch.randn(rows, d, generator=g)
    w = torch.randn(padded, d, generator=g) * 0.2
    b = torch.randn(padded, generator=g)
    targets = torch.randint(0, vocab - 1, (rows,), generator=g)
    targets += targets >= mask_id
    weights = 1 / torch.rand(rows, generator=g).clamp_min(1e-3)
    weights[rows // 2: rows // 2 + 1] = 0.0
    leaves = [x.to(device).requires_grad_() for x in (h, w, b)]
    return (*leaves, targets.to(device), weights.to(device))


def _full_logits_nll(h, w, b, targets, weights, mask_id, vocab):
    return (weights * masked_token_nll((h @ w.T + b)[:, :vocab], targets, mask_id)).sum()


def _value_and_grads(loss, leaves):
    return (loss.detach(), *torch.autograd.grad(loss, leaves))


def _assert_all_close(got, want, **tol):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **(tol or TOL))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_nll_matches_full_logits(shape, backend):
    h, w, b, targets, weights = _problem(*SHAPES[shape])
    mask_id, vocab = SHAPES[shape][4], SHAPES[shape][2]
    got = _value_and_grads(fused_masked_nll(h, w, b, targets, weights, mask_id, vocab, backend), (h, w, b))
    want = _value_and_grads(_full_logits_nll(h, w, b, targets, weights, mask_id, vocab), (h, w, b))
    _assert_all_close(got, want)
    with torch.no_grad():   # no gradients computed: the same value
        torch.testing.assert_close(fused_masked_nll(h, w, b, targets, weights, mask_id, vocab, backend), want[0], **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_and_padding_columns_are_dropped(backend):
    rows, d, vocab, pad, mask_id = SHAPES["small"]
    h, w, b, targets, weights = _problem(*SHAPES["small"], seed=1)
    with torch.no_grad():   # logits far above the rest on the mask and padding columns
        b[mask_id] = 50.0
        b[vocab:] = 50.0
    loss = fused_masked_nll(h, w, b, targets, weights, mask_id, vocab, backend)
    keep = torch.arange(vocab, device=DEVICE) != mask_id
    log_p = torch.log_softmax((h @ w[:vocab][keep].T + b[:vocab][keep]).detach(), dim=1)
    kept_target = targets - (targets > mask_id).long()
    want = -(weights * log_p.gather(1, kept_target[:, None]).squeeze(1)).sum()
    torch.testing.assert_close(loss.detach(), want, **TOL)
    grad_w, grad_b = torch.autograd.grad(loss, (w, b))
    dropped = ~torch.cat([keep, torch.zeros(w.shape[0] - vocab, dtype=torch.bool, device=DEVICE)])
    assert torch.all(grad_w[dropped] == 0) and torch.all(grad_b[dropped] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_chunks_match_one(backend, monkeypatch):
    h, w, b, targets, weights = _problem(*SHAPES["small"], seed=2)
    args = (h, w, b, targets, weights, SHAPES["small"][4], SHAPES["small"][2], backend)
    one = _value_and_grads(fused_masked_nll(*args), (h, w, b))
    monkeypatch.setattr(masked_loss, "CHUNK_BYTES", 10 * w.shape[0] * 4)   # 10 rows a chunk: 5 chunks
    assert masked_loss._chunk_rows(h.shape[0], w.shape[0], h.dtype) == 10
    _assert_all_close(_value_and_grads(fused_masked_nll(*args), (h, w, b)), one)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bf16_weight_gradient_is_summed_over_chunks_in_float32(monkeypatch, device):
    """With bf16 rows and a float32 head (autocast's case), each chunk's weight-gradient product is
    added into the float32 gradient unrounded (on CUDA inside the GEMM): the float64 sum of the
    chunks' bf16 logit gradients times their rows, to float32 rounding (a bf16-rounded product per
    chunk is ~1e-3 off)."""
    rows, _, vocab, _, mask_id = SHAPES["small"]
    h, w, b, targets, weights = _problem(*SHAPES["small"], seed=4, device=device)
    h16 = h.detach().bfloat16().requires_grad_()
    monkeypatch.setattr(masked_loss, "CHUNK_BYTES", 10 * w.shape[0] * 2)   # 10 bf16 rows a chunk: 5 chunks
    grad_w, = torch.autograd.grad(fused_masked_nll(h16, w, b, targets, weights, mask_id, vocab, "eager"), (w,))
    want = torch.zeros(w.shape, dtype=torch.float64, device=device)
    for start in range(0, rows, 10):
        h_c = h16.detach()[start:start + 10]
        logits = torch.addmm(b.detach().bfloat16(), h_c, w.detach().bfloat16().t())
        masked_loss.nll_rows_eager(logits, targets[start:start + 10], weights[start:start + 10], mask_id, vocab, True)
        want += logits.double().t() @ h_c.double()
    assert grad_w.dtype == torch.float32
    torch.testing.assert_close(grad_w.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_rows_give_zero_loss_and_zero_grads(backend):
    h, w, b, targets, weights = _problem(0, 16, 97, 8, 13)
    loss = fused_masked_nll(h, w, b, targets, weights, 13, 97, backend)
    value, grad_h, grad_w, grad_b = _value_and_grads(loss, (h, w, b))
    assert value.dtype == torch.float32 and value.shape == () and value == 0
    assert grad_h.shape == (0, 16) and not grad_w.any() and not grad_b.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_op_inside_a_compiled_graph(backend):
    rows, d, vocab, pad, mask_id = SHAPES["small"]
    h, w, b, targets, weights = _problem(*SHAPES["small"], seed=5)

    def total(h, w, b):
        nll = fused_masked_nll(torch.tanh(h), w, b, targets, weights, mask_id, vocab, backend)
        return nll + 0.5 * fused_masked_nll(h, w, b, targets.flip(0), weights, mask_id, vocab, backend)

    compiled = torch.compile(total, fullgraph=True, backend="aot_eager")   # inductor only wraps the op
    _assert_all_close(_value_and_grads(compiled(h, w, b), (h, w, b)), _value_and_grads(total(h, w, b), (h, w, b)))


def test_masked_diffusion_fused_loss_matches_the_logits_path():
    cfg = DiTConfig(vocab_size=37, mask_id=36, d_model=48, n_blocks=1, n_heads=4, dropout=0.0,
                    vocab_pad_multiple=8, mask_state=MaskStateConfig(16))
    torch.manual_seed(0)
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.to(DEVICE)
    x0 = torch.randint(0, 36, (4, 12), device=DEVICE)
    valid = torch.ones(4, 12, dtype=torch.bool)
    valid[1, 8:] = False
    results = []
    for fused, bucket in ((False, 1), (True, 1), (True, 16), (False, 7)):
        algorithm = MaskedDiffusion(LogLinearSchedule(), cfg.mask_id, seed=5, mask_state=cfg.mask_state, fused_loss=fused,
                                    row_bucket=bucket)
        model.zero_grad()
        loss = algorithm.loss(model, x0, torch.arange(4), global_batch=4, step=3, valid=valid)
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    for other in results[1:]:   # the fused head, and rows padded to buckets, compute the same loss
        _assert_all_close(other, results[0], rtol=1e-4, atol=1e-5)


def test_row_buckets_pad_with_repeats_of_the_first_row():
    masked = torch.zeros(3, 9, dtype=torch.bool)
    masked[0, 4] = masked[1, 2] = masked[2, 0] = masked[2, 8] = True
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[2, 8] = False
    rows, scored, n_masked, n_scored = row_indices(masked, valid, torch.device("cpu"), bucket=8)
    assert (n_masked, n_scored) == (4, 3)
    assert rows[0].tolist() == [0, 1, 2, 2] + [0] * 4 and rows[1].tolist() == [4, 2, 0, 8] + [4] * 4
    assert scored[0].tolist() == [0, 1, 2] + [0] * 5 and scored[1].tolist() == [4, 2, 0] + [4] * 5
    empty = row_indices(torch.zeros(2, 5, dtype=torch.bool), None, torch.device("cpu"), bucket=8)[:2]
    assert all(r.numel() == 0 for pair in empty for r in pair)


@pytest.mark.gpu
def test_bf16_triton_error_within_pytorch_bf16_error():
    """bf16 inputs: the kernel's error against the float32 result (value and grads) is at most
    twice that of PyTorch's own bf16 path (bf16 matmul, float32 softmax), plus slack."""
    rows, d, vocab, mask_id = 4096, 768, 50258, 50257
    problem = _problem(rows, d, vocab, 128, mask_id, seed=7, device="cuda")
    leaves, targets, weights = problem[:3], problem[3], problem[4]

    def full_logits(h, w, b):
        return _full_logits_nll(h, w, b, targets, weights, mask_id, vocab)

    def fused(h, w, b):
        return fused_masked_nll(h, w, b, targets, weights, mask_id, vocab)

    def run(fn, dtype):
        copies = [x.detach().to(dtype).requires_grad_() for x in leaves]
        return [x.double() for x in _value_and_grads(fn(*copies), copies)]

    exact = run(full_logits, torch.float32)
    eager, kernel = run(full_logits, torch.bfloat16), run(fused, torch.bfloat16)
    for name, e, k, x in zip(["loss", "h", "W", "b"], eager, kernel, exact):
        err, ref_err = ((y - x).norm() / x.norm() for y in (k, e))
        assert err <= 2 * ref_err + 1e-3, (name, float(err), float(ref_err))
