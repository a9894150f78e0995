"""Semantic tokenizer (SPEC §3): its paper form equals the authors' model, and every faster path of
kernels/ equals its paper form (values and the gradients of input and all parameters).

Paths: "factored" (the CPU path) and "composed" (the PyTorch reference of the Triton kernel) are
checked in float64 to 1e-10: same math, sums in another order. "triton" (CPU interpreter; skipped
without triton) computes in float32 whatever the input dtype, so it is held to float32 tolerances.

    python -m pytest -q tests/test_tokenizer.py
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint
import kernels
from data import networks
from kernels.composed import compose_weights
from tokenizer import SemanticTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "authors"


def force_path(monkeypatch, path):
    """Run the tokenizer op by `path`: replaces kernels.tokenizer_path, the one rule."""
    if path == "triton":
        pytest.importorskip("triton")
    monkeypatch.setattr(kernels, "tokenizer_path", lambda x: path)


def _grads(tok, x, w):
    tok.zero_grad()
    x = x.detach().requires_grad_()
    y = tok(x)
    (y * w).sum().backward()                                     # the same upstream gradient w for every path
    return y.detach(), x.grad, {k: p.grad.clone() for k, p in tok.named_parameters()}


# float64: PyTorch paths agree to rounding; triton: fp32 inside -> a few fp32 ulp of O(C*K)-term sums
PATHS = {"factored": dict(y=dict(rtol=1e-10, atol=1e-10), g=dict(rtol=1e-9, atol=1e-10)),
         "composed": dict(y=dict(rtol=1e-10, atol=1e-10), g=dict(rtol=1e-9, atol=1e-10)),
         "triton": dict(y=dict(rtol=1e-4, atol=1e-5), g=dict(rtol=1e-4, atol=1e-5))}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("net_map, dim, patch_len, T, n_scales", [
    ([2, 0, 1, 1, 0, 3, 2, 2, 0, 1], 10, 7, 21, 3),      # interleaved ROIs, a 1-ROI network, odd shapes
    ([1, 0, 0, 2, 0, 1], 6, 20, 40, 3),                   # patch longer than the kernel
    ([0, 1, 0, 1, 1], 8, 5, 15, 2),                       # 8-tap kernel, patch shorter than the kernel
])
def test_matches_literal_spec(net_map, dim, patch_len, T, n_scales, path, monkeypatch):
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
    force_path(monkeypatch, "reference")
    y_ref, gx_ref, g_ref = _grads(tok, x, w)
    force_path(monkeypatch, path)
    y, gx, g = _grads(tok, x, w)
    tol = PATHS[path]
    assert y.shape == (2, tok.n_networks, T // patch_len, dim)
    torch.testing.assert_close(y, y_ref, **tol["y"])
    torch.testing.assert_close(gx, gx_ref, **tol["g"])
    for name in g_ref:
        assert g[name].abs().sum() > 0, name
        torch.testing.assert_close(g[name], g_ref[name], **tol["g"], msg=name)


@pytest.mark.parametrize("path", ["factored", "composed", "triton"])
def test_bf16_autocast_matches_paper_form(path, monkeypatch):
    """Under bf16 autocast each path rounds its own matmul/conv operands to bf16 (8 bits), in
    different places (triton: its conv operands, as torch's conv would), so values and gradients
    agree to bf16 precision only: 3e-2 of the largest."""
    torch.manual_seed(0)
    tok = SemanticTokenizer([0, 1, 0, 2, 2, 1, 2, 0, 2, 2, 1], dim=16, patch_len=5)
    x, w = torch.randn(3, 11, 10), torch.randn(3, 3, 2, 16)
    results = []
    for p in ("reference", path):
        force_path(monkeypatch, p)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_grads(tok, x, w))
    (y_ref, gx_ref, g_ref), (y, gx, g) = results
    assert y.dtype == y_ref.dtype == torch.float32                # the LayerNorm runs in float32
    for got, want in [(y, y_ref), (gx, gx_ref)] + [(g[k], g_ref[k]) for k in g_ref]:
        torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2 * want.abs().max().item())


def test_paper_form_equals_the_authors_model(monkeypatch):
    """The reference itself against the authors' code: their float64 checkpoint's teacher, its
    outputs as their model computed them (tests/fixtures/authors)."""
    ref = torch.load(FIXTURES / "reference.pt", weights_only=True)
    encoder, _ = checkpoint.load_teacher(FIXTURES / "checkpoint_epoch_1.pth", dtype=torch.float64)
    force_path(monkeypatch, "reference")
    with torch.no_grad():
        cls, tokens = encoder(ref["x"].double())
    for got, want in ((cls, ref["teacher_cls"]), (tokens, ref["teacher_tokens"])):
        assert (got - want).abs().max().item() <= 1e-10 * max(1.0, want.abs().max().item())


class _FakeCuda:
    """A stand-in for a CUDA tensor: the rule looks only at `is_cuda`, so it is tested without a GPU."""
    is_cuda = True


@pytest.mark.parametrize("mode, cuda, cpu_interpreted, cpu", [
    # on CUDA, auto is the table of measured defaults; the interpreter runs the kernels (it exists to test them)
    ("auto", kernels.CUDA_DEFAULT, ("triton", "triton"), ("factored", "reference")),
    ("pytorch", ("factored", "reference"), ("factored", "reference"), ("factored", "reference")),
    ("triton", ("triton", "triton"), ("triton", "triton"), None),
    ("fused", ("fused", "triton"), ("fused", "triton"), None),
])
def test_kernel_modes_pick_the_paths_of_the_table(monkeypatch, mode, cuda, cpu_interpreted, cpu):
    monkeypatch.setattr(kernels, "_HAVE_TRITON", True)       # the rule, not the kernels: no triton needed
    monkeypatch.setattr(kernels, "_announced", {("tokenizer", p) for p in kernels.TOKENIZER_PATHS}
                        | {("MCR loss", p) for p in ("reference", "triton")})
    if isinstance(cuda, dict):
        cuda = (cuda["tokenizer"], cuda["MCR loss"])
    x = torch.zeros(1)
    with kernels.mode(mode):
        assert (kernels.tokenizer_path(_FakeCuda()), kernels.mcr_path(_FakeCuda())) == cuda
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert (kernels.tokenizer_path(x), kernels.mcr_path(x)) == cpu_interpreted
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        if cpu is None:                                        # a kernel asked for by name: never a fallback
            with pytest.raises(RuntimeError, match=f"kernels mode '{mode}' needs Triton"):
                kernels.tokenizer_path(x)
        else:
            assert (kernels.tokenizer_path(x), kernels.mcr_path(x)) == cpu


def test_cuda_default_is_the_measured_pytorch_paths():
    """The last GPU measurement (H100, BENCHMARKS.md) found the PyTorch paths faster: 0.093 vs 0.108 s
    per compiled step, MCR kernel below 1.5x. Changing the default means changing this with new figures."""
    assert kernels.CUDA_DEFAULT == {"tokenizer": "factored", "MCR loss": "reference"}


def test_kernels_mode_errors(monkeypatch):
    with pytest.raises(ValueError, match="--kernels 'cudnn': choose one of auto, pytorch, triton, fused"):
        kernels.set_mode("cudnn")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with kernels.mode("auto"):
        with pytest.raises(ValueError, match="--kernels fused runs Triton kernels, but .*not a CUDA device"):
            kernels.check_mode("fused", "cpu")
        kernels.check_mode("pytorch", "cpu")                   # fine anywhere
    monkeypatch.setattr(kernels, "_HAVE_TRITON", False)
    with kernels.mode("auto"), pytest.raises(ValueError, match="triton is not installed"):
        kernels.check_mode("triton", "cpu")


def test_rule_without_triton_is_the_factored_path(monkeypatch, caplog):
    """Where triton is not installed the rule falls back to the factored path, and says why, once."""
    monkeypatch.setattr(kernels, "_HAVE_TRITON", False)
    monkeypatch.setattr(kernels, "_announced", set())
    x = torch.zeros(1, 2, 4)
    with caplog.at_level("INFO", logger="brain_semantoks.kernels"), kernels.enabled(True):
        assert kernels.tokenizer_path(x) == kernels.tokenizer_path(x) == "factored"
    assert [r.getMessage() for r in caplog.records] == [
        "kernels: tokenizer runs the factored path (triton not installed)"]


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
    weight, bias = compose_weights(tok.linear_form())
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
    with pytest.raises(ValueError, match=r"patch_len and n_scales must be >= 1, got 0, 3"):
        SemanticTokenizer([0, 0, 1], dim=4, patch_len=0)
    with pytest.raises(ValueError, match=r"patch_len and n_scales must be >= 1, got 5, 0"):
        SemanticTokenizer([0, 0, 1], dim=4, patch_len=5, n_scales=0)
    with pytest.raises(ValueError, match=r"unknown init 'Authors'; choose one of \('authors', 'dino'\)"):
        SemanticTokenizer([0, 0, 1], dim=4, init="Authors")
