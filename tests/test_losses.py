"""The chunked softmax cross-entropy equals torch's (loss and both gradients); the windows a long history
is cut into cover every transition once; the learning-rate schedule has the promised shape."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmrec.errors import LLMRecError
from llmrec.losses import softmax_ce
from llmrec.training import lr_schedule, windows


def _grads(loss_fn, h, w, t):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = loss_fn(h, w, t)
    gh, gw = torch.autograd.grad(loss, (h, w))
    return loss.detach(), gh, gw


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_ce_matches_torch(chunk):
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(150, 16, generator=g), torch.randn(90, 16, generator=g) * 0.5
    t = torch.randint(0, 90, (150,), generator=g)
    ref = _grads(lambda h, w, t: F.cross_entropy(h @ w.T, t), h, w, t)
    got = _grads(lambda h, w, t: softmax_ce(h, w, t, chunk=chunk), h, w, t)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_chunked_ce_bf16_is_close():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(300, 32, generator=g), torch.randn(200, 32, generator=g) * 0.3
    t = torch.randint(0, 200, (300,), generator=g)
    ref = _grads(lambda h, w, t: F.cross_entropy(h @ w.T, t), h, w, t)
    got = _grads(lambda h, w, t: softmax_ce(h, w, t, chunk=64, bf16=True), h, w, t)
    assert abs(float(got[0]) - float(ref[0])) < 0.02
    for a, b in zip(ref[1:], got[1:]):
        assert float((a - b).abs().max() / a.abs().max()) < 0.02


def test_windows_cover_every_transition_once():
    h = np.arange(23)
    ws = windows(h, 6, 0)
    assert [list(w) for w in ws[:2]] == [list(range(17, 23)), list(range(12, 18))]
    pairs = [(int(a), int(b)) for w in ws for a, b in zip(w[:-1], w[1:])]
    assert sorted(pairs) == [(i, i + 1) for i in range(22)]
    assert len(windows(h, 6, 2)) == 2 and len(windows(h, 6, 1)) == 1
    assert [list(w) for w in windows(np.arange(4), 6, 0)] == [[0, 1, 2, 3]]


def test_lr_schedule():
    cos = lr_schedule("cosine", epochs=10, warmup_epochs=2)
    f = [cos(e) for e in range(10)]
    assert f[0] < f[1] < f[2] == 1.0
    assert all(a > b for a, b in zip(f[2:], f[3:])) and f[-1] == pytest.approx(0.01)
    assert lr_schedule("constant", 10)(7) == 1.0
    with pytest.raises(LLMRecError, match="unknown lr_schedule 'step'"):
        lr_schedule("step", 10)


def test_sampled_softmax_equals_hand_computed_example():
    """Two rows, three candidates (one an accidental hit of row 0's positive), logQ-corrected logits."""
    from llmrec.losses import sampled_softmax_ce
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    table = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.5]])
    target = torch.tensor([1, 2])
    cand = torch.tensor([0, 1, 3])
    logq = torch.tensor([0.5, -1.0, 0.0])
    t_logq = torch.tensor([-1.0, 0.25])
    # row 0: positive item 1: h.w1 = 2, minus logq -1 -> 3; candidates 0 -> 1 - 0.5 = 0.5, 1 is the positive
    # (an accidental hit, left out), 3 -> -1 - 0 = -1
    loss0 = np.log(np.exp(3.0) + np.exp(0.5) + np.exp(-1.0)) - 3.0
    # row 1: positive item 2: 2 - 0.25 = 1.75; candidates 0 -> 2 - 0.5 = 1.5, 1 -> 0 + 1 = 1, 3 -> 1 - 0 = 1
    loss1 = np.log(np.exp(1.75) + np.exp(1.5) + np.exp(1.0) + np.exp(1.0)) - 1.75
    for chunk in (0, 1):
        got = sampled_softmax_ce(h, table, target, cand, logq, t_logq, chunk=chunk)
        assert float(got) == pytest.approx((loss0 + loss1) / 2, rel=1e-6)


def test_sampled_softmax_gradients_match_plain_autograd():
    """The chunked, recomputed version has the gradients of the same loss written out in one piece."""
    from llmrec.losses import sampled_softmax_ce
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g)
    t = torch.randint(0, 30, (40,), generator=g)
    cand = torch.cat([t.unique(), torch.randint(0, 30, (12,), generator=g)])
    logq, t_logq = torch.randn(len(cand), generator=g), torch.randn(40, generator=g)

    def plain(h, w, t):
        pos = (h * w[t]).sum(1) - t_logq
        neg = (h @ w[cand].T - logq).masked_fill(t[:, None] == cand[None, :], float("-inf"))
        return (torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos).mean()
    ref = _grads(plain, h, w, t)
    got = _grads(lambda h, w, t: sampled_softmax_ce(h, w, t, cand, logq, t_logq, chunk=7), h, w, t)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_negative_sampler_expected_counts():
    """logQ = log expected count in the candidate set: negatives * q_j, plus the chance that j is among the
    batch's distinct positives when in-batch negatives are on; draws come from the chosen distribution."""
    from llmrec.losses import NegativeSampler
    pop = np.array([6.0, 3.0, 1.0, 0.0])
    uni = NegativeSampler(pop, negatives=8, sampler="uniform", in_batch=False)
    cand, logq, t_logq = uni(torch.tensor([0, 0, 1]))
    assert len(cand) == 8 and torch.allclose(logq, torch.full((8,), float(np.log(8 / 4))))
    assert torch.allclose(t_logq, torch.full((3,), float(np.log(2.0))))
    popu = NegativeSampler(pop, negatives=8, sampler="popularity", in_batch=True)
    torch.manual_seed(0)
    cand, logq, t_logq = popu(torch.tensor([0, 0, 1]))
    assert cand[:2].tolist() == [0, 1] and len(cand) == 2 + 8 and 3 not in cand.tolist()
    p = pop / pop.sum()
    want = 8 * p + 1 - (1 - p) ** 3
    np.testing.assert_allclose(t_logq.numpy(), np.log(want[[0, 0, 1]]), rtol=1e-5)
    np.testing.assert_allclose(logq.numpy(), np.log(want[cand.numpy()]), rtol=1e-5)
    with pytest.raises(LLMRecError, match="unknown sampler"):
        NegativeSampler(pop, 8, sampler="zipf")
