"""The chunked softmax cross-entropy equals torch's (loss and both gradients); the windows a long history
is cut into cover every transition once; the learning-rate schedule has the promised shape."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmrec.errors import LLMRecError
from llmrec.losses import softmax_ce
from llmrec.models.sasrec import windows
from llmrec.training import lr_schedule


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
