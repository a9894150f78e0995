"""Semantic tokenizer: both evaluation paths equal a literal per-network SPEC §3 tokenizer.

The PyTorch path (factored branches) is checked in float64 to 1e-10. The Triton path (composed
one-conv weights, fused kernel; here on the CPU interpreter) computes in float32 whatever the
input dtype, so it is held to float32 tolerances."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernels
import networks
from tokenizer import SemanticTokenizer


def literal_tokenizer(tok, x):
    """SPEC §3 written out per network with the tokenizer's parameters viewed in the SPEC's layout:
    Conv1d 'same', explicit multi-scale SG kernels, a literal true convolution, skip, Linear."""
    m = tok.network_map.numpy()
    half, S, L = tok.dim // 2, tok.n_scales, tok.patch_len
    B, C, T = x.shape
    P = T // L
    out = []
    for n in range(tok.n_networks):
        rois = np.flatnonzero(m == n)
        R = len(rois)
        H = math.ceil(half / R)
        a, b = tok.offsets[n], tok.offsets[n + 1]
        pa, pb = tok.pair_offsets[n], tok.pair_offsets[n + 1]
        conv_w = tok.dense_weight[a:b].permute(2, 0, 1)                         # (D/2, R, 3)
        scales = [tok.sg_kernel[i, pa:pb].view(R, H, 4).transpose(0, 1) for i in range(S)]  # (H, R, 4)
        skip = tok.sg_skip[pa:pb].view(R, H).T                                  # (H, R)
        lin_w = tok.lin_weight[pa:pb].T                                         # (D/2, R*H), input r*H + h

        kern = torch.cat([F.interpolate(k, scale_factor=2 ** max(0, i - 1), mode="nearest") * 2 ** (S - i - 1)
                          for i, k in enumerate(scales)], -1)                   # (H, R, 16)
        kern = kern / kern.norm(dim=-1, keepdim=True).detach()                  # norm fixed at first forward
        K = kern.shape[-1]

        xp = x[:, rois].reshape(B, R, P, L).permute(0, 2, 1, 3).reshape(B * P, R, L)  # patches independent
        dense = F.conv1d(xp, conv_w, tok.dense_bias[n], padding="same")         # (BP, D/2, L)
        xpad = F.pad(xp, ((K - 1) // 2, K // 2))                                # 7 left, 8 right
        sg = torch.zeros(B * P, R, H, L, dtype=x.dtype)
        kk = kern.permute(1, 0, 2)                                              # (R, H, K)
        for j in range(K):                                                      # y[t] = sum_j k[j] xpad[t + K-1 - j]
            sg = sg + kk[None, :, :, j, None] * xpad[:, :, None, K - 1 - j:K - 1 - j + L]
        sg = sg + skip.T[None, :, :, None] * xp[:, :, None, :]                  # (BP, R, H, L)
        sg = torch.einsum("oc,bcl->bol", lin_w, sg.reshape(B * P, R * H, L)) + tok.lin_bias[n][:, None]
        h = F.gelu(torch.cat([dense, sg], 1)).mean(-1)                          # (BP, D)
        h = F.layer_norm(h, (tok.dim,), tok.norm_weight[n], tok.norm_bias[n])
        out.append(h.reshape(B, P, tok.dim))
    return torch.stack(out, 1)                                                  # (B, N, P, D)


def _grads(tok, x, fn, w):
    tok.zero_grad()
    x = x.detach().requires_grad_()
    y = fn(x)
    (y * w).sum().backward()
    return y.detach(), x.grad, {k: p.grad.clone() for k, p in tok.named_parameters()}


PATHS = {"pytorch": dict(y=dict(rtol=1e-10, atol=1e-10), g=dict(rtol=1e-9, atol=1e-10)),
         "triton": dict(y=dict(rtol=1e-4, atol=1e-5), g=dict(rtol=1e-4, atol=1e-5))}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("net_map, dim, patch_len, T, n_scales", [
    ([2, 0, 1, 1, 0, 3, 2, 2, 0, 1], 10, 7, 21, 3),      # interleaved ROIs, a 1-ROI network, odd shapes
    ([1, 0, 0, 2, 0, 1], 6, 20, 40, 3),                   # patch longer than the kernel
    ([0, 1, 0, 1, 1], 8, 5, 15, 2),                       # 8-tap kernel, patch shorter than the kernel
])
def test_matches_literal_spec(net_map, dim, patch_len, T, n_scales, path):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)  # so the SG norm buffer is measured in float64 too
    try:
        tok = SemanticTokenizer(net_map, dim=dim, patch_len=patch_len, n_scales=n_scales)
    finally:
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():  # non-trivial biases / norms so every parameter is really checked
        for p in (tok.dense_bias, tok.lin_bias, tok.norm_weight, tok.norm_bias):
            p.add_(0.3 * torch.randn_like(p))
        tok.lin_weight.mul_(20)
    x = torch.randn(2, len(net_map), T, dtype=torch.float64)
    w = torch.randn(2, tok.n_networks, T // patch_len, dim, dtype=torch.float64)
    with kernels.enabled(path == "triton"):
        assert kernels.use_triton(x) == (path == "triton")
        y, gx, g = _grads(tok, x, tok, w)
    y_ref, gx_ref, g_ref = _grads(tok, x, lambda v: literal_tokenizer(tok, v), w)
    tol = PATHS[path]
    assert y.shape == (2, tok.n_networks, T // patch_len, dim)
    torch.testing.assert_close(y, y_ref, **tol["y"])
    torch.testing.assert_close(gx, gx_ref, **tol["g"])
    for name in g_ref:
        assert g[name].abs().sum() > 0, name
        torch.testing.assert_close(g[name], g_ref[name], **tol["g"], msg=name)


def spec_tokenizer_parameters(network_map, dim, n_scales=3):
    """The parameter count SPEC §3 gives the N per-network tokenizers, from the map and D alone."""
    half, total = dim // 2, 0
    for R in np.bincount(network_map):
        H = math.ceil(half / R)                                           # H_n heads
        total += (R * 3 + 1) * half                                       # dense Conv1d(R_n → D/2, 3 taps)
        total += n_scales * H * R * 4 + H * R                             # SGConv kernels + skip D
        total += (H * R + 1) * half                                       # Linear(H_n·R_n → D/2)
        total += 2 * dim                                                  # LayerNorm(D)
    return total


def test_default_map_shapes_and_parameter_count():
    tok = SemanticTokenizer(networks.default_network_map(), dim=768)
    n = sum(p.numel() for p in tok.parameters())
    assert tok.heads == (7, 5, 9, 9, 15, 8, 5, 8, 55)
    assert tok.n_taps == 16 and tok.n_networks == 9 and tok.n_rois == 457
    assert n == spec_tokenizer_parameters(networks.default_network_map(), 768), f"9 tokenizers have {n:,} parameters"
    assert round(n / 1e6, 1) == 2.0                                       # SPEC §5: "the 9 tokenizers ≈ 2.0M"
    weight, bias = tok.effective_weights()
    assert weight.shape == (457, 16, 768) and bias.shape == (9, 768)
    z = SemanticTokenizer(networks.default_network_map(), dim=16)(torch.randn(2, 457, 100))
    assert z.shape == (2, 9, 5, 16)


def test_sg_norm_is_a_fixed_persistent_buffer():
    torch.manual_seed(0)
    tok = SemanticTokenizer([0, 1, 1, 0, 2], dim=8, patch_len=5)
    assert "sg_norm" in tok.state_dict() and "network_map" not in tok.state_dict()
    norm = tok.sg_norm.clone()
    with torch.no_grad():
        tok.sg_kernel.mul_(3.0)
    x = torch.randn(3, 5, 10)
    tok(x)
    assert torch.equal(tok.sg_norm, norm)           # not re-measured after the parameters change
    torch.manual_seed(1)
    other = SemanticTokenizer([0, 1, 1, 0, 2], dim=8, patch_len=5)
    other.load_state_dict(tok.state_dict())
    torch.testing.assert_close(other(x), tok(x), rtol=0, atol=0)


def test_bad_input():
    tok = SemanticTokenizer([0, 0, 1], dim=4, patch_len=5)
    with pytest.raises(ValueError, match=r"must be \(B, C, T'\)"):
        tok(torch.randn(3, 10))
    with pytest.raises(ValueError, match="input has 4 ROIs but the network map has 3 entries"):
        tok(torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match="T'=12 is not a positive multiple of the patch length L=5"):
        tok(torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match="must be even"):
        SemanticTokenizer([0, 0, 1], dim=5)
    with pytest.raises(ValueError, match=r"missing: \[1\]"):
        SemanticTokenizer([0, 2, 2], dim=4)
