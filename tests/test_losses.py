"""Losses (SPEC §7): coding rate, MCR (values and gradients), TTR, token loss, projection head."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from losses import (ProjectionHead, coding_rate, mcr_loss, mcr_loss_reference, network_summaries,
                    token_loss, ttr_loss)


def _unit(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


@pytest.mark.parametrize("m, p", [(32, 8), (6, 16)])
def test_coding_rate_equals_eigenvalue_logdet(m, p):
    z = _unit(m, p)
    # Sylvester: logdet(I_p + c Z^T Z) = logdet(I_m + c Z Z^T) = sum log(1 + c * eig(Z Z^T))
    eig = torch.linalg.eigvalsh(z @ z.T)
    expected = 0.5 * torch.log1p(p / (m * 0.05) * eig.clamp(min=0)).sum()
    torch.testing.assert_close(coding_rate(z), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(coding_rate(z.float()), expected.float(), rtol=1e-4, atol=1e-4)
    assert coding_rate(z.float()).dtype == torch.float32


def test_collapse_has_lower_coding_rate():
    spread = _unit(64, 16)
    collapsed = spread[:1].expand(64, 16)
    assert coding_rate(collapsed) < 0.5 * coding_rate(spread)
    torch.testing.assert_close(coding_rate(collapsed), 0.5 * torch.log1p(torch.tensor(16 / 0.05, dtype=torch.float64)))


def test_mcr_loss_formula():
    s1, s2, t1, t2 = (_unit(10, 6, seed=i) for i in range(4))
    loss, comp, expa = mcr_loss((s1, s2), (t1, t2))
    m, p = 10, 6
    comp_ref = 0.5 * ((t1 * s2).sum(1).mean() + (t2 * s1).sum(1).mean())
    expa_ref = (p + m) / (p * m) * 0.5 * (coding_rate((s1 + t1) / 2) + coding_rate((s2 + t2) / 2))
    torch.testing.assert_close(comp, comp_ref)
    torch.testing.assert_close(expa, expa_ref)
    torch.testing.assert_close(loss, -comp_ref - expa_ref)


def test_mcr_loss_gradcheck_and_teacher_detached():
    s1, s2 = (_unit(6, 4, seed=i).requires_grad_() for i in range(2))
    t1, t2 = (_unit(6, 4, seed=i + 2).requires_grad_() for i in range(2))
    assert torch.autograd.gradcheck(lambda a, b: mcr_loss_reference((a, b), (t1, t2))[0], (s1, s2))
    mcr_loss((s1, s2), (t1, t2))[0].backward()
    assert t1.grad is None and t2.grad is None and s1.grad is not None


def test_mcr_loss_under_autocast_is_float32():
    s = [_unit(16, 8, dtype=torch.float32, seed=i) for i in range(4)]
    ref = mcr_loss(s[:2], s[2:])[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mcr_loss([v.bfloat16() for v in s[:2]], s[2:])[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_projection_head():
    head = ProjectionHead(32, hidden=64, out=16)
    y = head(torch.randn(5, 3, 32))
    assert y.shape == (5, 3, 16)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(5, 3))
    assert abs(head.fc1.weight.std().item() - 0.02) < 0.004 and head.fc2.bias.abs().max() == 0


def test_ttr_loss_matches_manual():
    torch.manual_seed(0)
    B, N, P, D = 3, 4, 5, 32
    head, teacher_head = ProjectionHead(D, 64, 16), ProjectionHead(D, 64, 16)
    st = [torch.randn(B, N * P, D, requires_grad=True) for _ in range(2)]
    tt = [torch.randn(B, N * P, D, requires_grad=True) for _ in range(2)]
    summ = lambda t, h: h(t.view(B, N, P, D).mean(2)).reshape(B * N, 16)   # literal SPEC §7
    ref = mcr_loss_reference([summ(t, head) for t in st], [summ(t, teacher_head) for t in tt])
    loss, comp, expa = ttr_loss([head(network_summaries(t, N)) for t in st],
                                [teacher_head(network_summaries(t, N)) for t in tt])
    torch.testing.assert_close((loss, comp, expa), ref)
    loss.backward()
    assert st[0].grad is not None and tt[0].grad is None and teacher_head.fc1.weight.grad is None
    with pytest.raises(ValueError, match="tokens have 20 positions, not a multiple of N = 3"):
        network_summaries(st[0], 3)


def test_token_loss_per_sample_average():
    torch.manual_seed(0)
    s = F.normalize(torch.randn(3, 2, 3, 8), dim=-1).requires_grad_()   # (B, N, P, p)
    t = F.normalize(torch.randn(3, 2, 3, 8), dim=-1).requires_grad_()
    mask = torch.zeros(3, 2, 3, dtype=torch.bool)
    mask[0, 0] = True                                                   # sample 0: 3 masked tokens
    mask[1, :, 2] = True                                                # sample 1: 2 masked tokens
    cos = (s * t).sum(-1)                                               # (B, N, P); sample 2 unmasked
    expected = -(cos[0, 0].mean() + cos[1, :, 2].mean()) / 2
    loss = token_loss(s, t, mask)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(token_loss(s.reshape(3, 6, 8), t.reshape(3, 6, 8), mask.reshape(3, 6)), expected)
    loss.backward()
    assert t.grad is None and s.grad[2].abs().sum() == 0 and s.grad[0].abs().sum() > 0
    none = token_loss(s, t, torch.zeros_like(mask))
    assert none.item() == 0 and none.requires_grad
    with pytest.raises(ValueError, match="token_loss shapes disagree"):
        token_loss(s, t, mask[:, :1])


def test_bad_input():
    with pytest.raises(ValueError, match=r"coding_rate expects Z of shape \(m, p\)"):
        coding_rate(torch.randn(2, 3, 4))
    z = _unit(4, 3)
    with pytest.raises(ValueError, match="one \\(m, p\\) shape"):
        mcr_loss((z, z), (z, z[:2]))
    with pytest.raises(ValueError, match="expected 2 student and 2 teacher views"):
        mcr_loss((z, z, z), (z, z))


def test_mcr_rule_without_triton_is_the_reference(monkeypatch, caplog):
    """Where triton is not installed mcr_loss runs the reference, and the log says why, once."""
    monkeypatch.setattr(kernels, "_HAVE_TRITON", False)
    monkeypatch.setattr(kernels, "_announced", set())
    s1, s2, t1, t2 = (_unit(10, 6, seed=i) for i in range(4))
    with caplog.at_level("INFO", logger="brain_semantoks.kernels"), kernels.enabled(True):
        got = mcr_loss((s1, s2), (t1, t2))
        mcr_loss((s1, s2), (t1, t2))                     # a second call logs nothing more
    assert [r.getMessage() for r in caplog.records] == ["kernels: MCR loss runs the reference path (triton not installed)"]
    for a, b in zip(got, mcr_loss_reference((s1, s2), (t1, t2))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
