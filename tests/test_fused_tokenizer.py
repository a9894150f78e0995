"""The fused factored tokenizer kernel (kernels/fused_tokenizer*.py) against its references: values
and the gradients of x and of all five weights of kernels.TokenizerWeights, under one shared random
upstream gradient per case; then the whole tokenizer module on the "fused" path against the paper
form, and the dispatch by name. The op's reference is kernels/factored.py in float64 (itself held
to tokenizer.py's paper form to 1e-10 in test_tokenizer.py); the module's is `paper_form`.

On a CPU everything runs under the Triton interpreter (conftest sets TRITON_INTERPRET=1): shapes
are small and tiles large, so that grids have a handful of programs. Skipped where triton is not
installed.

    python -m pytest -q tests/test_fused_tokenizer.py
"""
import copy
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import kernels  # noqa: E402
from bench.kernels import network_counts  # noqa: E402
from kernels.factored import factored_conv_gelu_mean  # noqa: E402
from kernels.fused_tokenizer import FusedBlocks, fused_tokenizer_triton  # noqa: E402
from tokenizer import SemanticTokenizer  # noqa: E402

NAMES = ("x", "dense_weight", "dense_bias", "sg_taps", "lin_weight", "lin_bias")
# fp32 kernel against a float64 reference: the kernel sums fp32 products of O(1) terms over at most
# a few thousand (pair, tap) or (patch, time) indices in its own order, so a few fp32 ulp of the
# largest partial sum (measured: at most 2e-7 of the largest entry here, 10x inside this);
# gradients are compared relative to their largest entry
FP32 = dict(rtol=2e-5, atol=2e-6)
# several tiles on every axis at these shapes (16 is the smallest tile tl.dot takes)
SMALL = FusedBlocks(rows=16, rows_b=16, d=16, ck=16, m=16, m_b=16, ck_w=16, r=16, split=16, num_warps=4)


def tokenizer_weights(counts, half, L, n_scales=3, seed=0):
    """A SemanticTokenizer's linear form for networks of `counts` ROIs (ROIs already sorted), with
    biases perturbed so that every one is really checked."""
    torch.manual_seed(seed)
    tok = SemanticTokenizer(np.repeat(np.arange(len(counts)), counts), dim=2 * half, patch_len=L, n_scales=n_scales)
    with torch.no_grad():
        tok.dense_bias.add_(0.3 * torch.randn_like(tok.dense_bias))
        tok.lin_bias.add_(0.3 * torch.randn_like(tok.lin_bias))
    return tok.linear_form()


def leaves(tensors, dtype):
    return [t.detach().to(dtype).requires_grad_() for t in tensors]


def op_parity(B, counts, half, L, P, blocks=None, n_scales=3, dtype=torch.float32, tol=FP32, grad_x=True):
    w = tokenizer_weights(counts, half, L, n_scales)
    x = torch.randn(B, sum(counts), P * L, generator=torch.Generator().manual_seed(1))
    got = leaves([x, *w[:5]], dtype)
    want = leaves(got, torch.float64)                       # the same (dtype-rounded) numbers
    got[0].requires_grad_(grad_x)
    with kernels.enabled(True):
        out = fused_tokenizer_triton(got[0], kernels.TokenizerWeights(*got[1:], *w[5:]), blocks=blocks)
    ref = factored_conv_gelu_mean(want[0], kernels.TokenizerWeights(*want[1:], *w[5:]))
    assert out.dtype == dtype and out.shape == ref.shape == (B, len(counts), P, 2 * half)
    torch.testing.assert_close(out.double(), ref, **tol)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    first = 0 if grad_x else 1
    grads = torch.autograd.grad(out, got[first:], g.to(dtype))
    for name, a, b in zip(NAMES[first:], grads, torch.autograd.grad(ref, want[first:], g)):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), b, rtol=tol["rtol"], atol=tol["atol"] * b.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("B,counts,half,L,P,blocks,n_scales", [
    (1, (1, 4, 2), 40, 8, 1, None, 3),        # batch 1, a 1-ROI network (H = D/2), P = 1, D = 80, K = 16 > L
    (7, (5, 1, 17), 24, 5, 3, SMALL, 3),      # prime batch and ROI counts, D = 48; 2 tiles or more per axis
    (1, (3, 7, 2), 24, 20, 2, None, 3),       # the paper's L = 20 > K: interior taps all in the patch
    (3, (2, 3), 24, 5, 2, SMALL, 2),          # an 8-tap kernel (S = 2), patch shorter than it
    (1, None, 8, 5, 1, None, 3),              # the nine SPEC networks (7 to 91 ROIs) in one launch
])
def test_fused_matches_factored_reference(B, counts, half, L, P, blocks, n_scales):
    op_parity(B, counts or network_counts(), half, L, P, blocks, n_scales)


def test_fused_gpu_tiles_on_interpreter():
    """FusedBlocks' GPU defaults: 2 forward row tiles (3 backward), 2 column tiles per branch, 3 pair
    chunks of the lin_weight/sg_taps kernels, 5 dense (ROI, tap) chunks; only the compiler is left."""
    op_parity(13, (40, 7, 3), 136, 2, 5, FusedBlocks())


def test_fused_data_input_gets_no_grad():
    """x is data in training: only the weights' gradients are asked for (and computed)."""
    op_parity(2, (3, 5), 24, 4, 2, grad_x=False)


def test_fused_bf16_input_on_interpreter():
    """bf16 in, bf16 out, fp32 inside (the interpreter's dots are fp32). Tolerance: the output and
    each gradient are rounded to bf16 once (8 bits: 2^-9 relative), and the input gradient's
    composed weight W_eff is a bf16 matmul's result -> 1e-2 of the largest entry."""
    op_parity(2, (3, 6, 1), 24, 4, 2, SMALL, dtype=torch.bfloat16, tol=dict(rtol=1e-2, atol=1e-2))


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.zeros(2, 5)), r"x must be \(B, C, T'\)"),
    (dict(offsets=(0, 2, 2, 5)), "offsets must rise strictly from 0 to C=5"),
    (dict(pair_offsets=(0, 5, 12)), "pair_offsets must give each network a positive multiple of its ROIs"),
    (dict(lin_bias=torch.zeros(3, 4)), r"lin_bias must be \(2, 4\)"),
    (dict(sg_taps=torch.zeros(10)), r"sg_taps must be \(M=10, K\), got \(10,\)"),
    (dict(patch_len=3), "crop length 8 is not a multiple of the patch length 3"),
    (dict(dense_bias=torch.zeros(2, 4, device="meta")), "on different devices"),
])
def test_fused_bad_input_raises(change, match):
    w = tokenizer_weights((2, 3), 4, 4)._asdict()
    x = change.pop("x", torch.zeros(2, 5, 8))
    with pytest.raises(ValueError, match=match):
        fused_tokenizer_triton(x, kernels.TokenizerWeights(**{**w, **change}))


def test_blocks_must_be_powers_of_two():
    with pytest.raises(ValueError, match="powers of two >= 16"):
        FusedBlocks(m=24)


# ---------------------------------------------------------------------------------------------
# the tokenizer module on the fused path, and the dispatch by name
# ---------------------------------------------------------------------------------------------
def module_grads(tok, x, g, path, autocast=False):
    tok.zero_grad()
    x = x.detach().requires_grad_()
    with kernels.enabled(True), kernels.tokenizer_path_named(path), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = tok(x)
    y.backward(g.to(y.dtype))
    return [y.detach(), x.grad] + [p.grad for _, p in tok.named_parameters()]


@pytest.mark.parametrize("autocast", [False, True])
def test_semantic_tokenizer_on_the_fused_path_matches_paper_form(autocast):
    """Unsorted ROIs, a 1-ROI network, D = 48: the output after the LayerNorm, x's gradient and every
    parameter's (the SG kernel scales and skip through linear_form) against paper_form in float64.
    Under bf16 autocast the kernel's operands are bf16 (as the factored path's matmuls are): 3e-2."""
    torch.manual_seed(0)
    tok = SemanticTokenizer([2, 0, 1, 1, 0, 3, 2, 2, 0, 1, 2], dim=48, patch_len=5)
    x, g = torch.randn(3, 11, 10), torch.randn(3, 4, 2, 48)
    got = module_grads(tok, x, g, "fused", autocast)
    want = module_grads(copy.deepcopy(tok).double(), x.double(), g.double(), "reference")
    tol = dict(rtol=3e-2, atol=3e-2) if autocast else FP32
    for name, a, b in zip(["y", "x"] + [k for k, _ in tok.named_parameters()], got, want):
        assert a.dtype == torch.float32, name          # the LayerNorm returns float32 either way
        torch.testing.assert_close(a.double(), b, rtol=tol["rtol"], atol=tol["atol"] * b.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


def test_dispatch_runs_the_path_named_and_the_rule_otherwise(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "fused_conv_gelu_mean", lambda *a: calls.append("fused"))
    monkeypatch.setattr(kernels, "grouped_conv_gelu_mean", lambda *a: calls.append("triton"))
    x, w = torch.zeros(1, 3, 4), tokenizer_weights((1, 2), 4, 4)
    with kernels.enabled(True):
        with kernels.tokenizer_path_named("fused"):
            assert kernels.tokenizer_path(x) == "fused"
            kernels.tokenizer_conv_gelu_mean(x, w, None)
        assert kernels.tokenizer_path(x) == "triton"   # today's rule is back, and unchanged
        kernels.tokenizer_conv_gelu_mean(x, w, None)
    with kernels.enabled(False):
        assert kernels.tokenizer_path(x) == "factored"
        with kernels.tokenizer_path_named("composed"):
            assert kernels.tokenizer_path(x) == "composed"
    assert calls == ["fused", "triton"]


def test_dispatch_by_name_refuses_what_cannot_run(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_announced", set())
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown tokenizer path 'cudnn'; choose one of"):
        kernels.set_tokenizer_path("cudnn")
    with kernels.enabled(False), kernels.tokenizer_path_named("fused"), \
            pytest.raises(RuntimeError, match="tokenizer path 'fused' needs Triton"):
        kernels.tokenizer_path(x)
    with caplog.at_level(logging.INFO, logger="brain_semantoks.kernels"), kernels.enabled(True), \
            kernels.tokenizer_path_named("fused"):
        kernels.tokenizer_path(x), kernels.tokenizer_path(x)
    assert [r.getMessage() for r in caplog.records] == ["kernels: tokenizer runs the fused path (interpreter)"]
