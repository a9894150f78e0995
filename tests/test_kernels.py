"""Triton kernels against their PyTorch references: values and gradients, the dispatch picking them,
and the full tokenizer path. On a CPU everything runs under the Triton interpreter (conftest sets
TRITON_INTERPRET=1), so shapes are small and tiles large (few programs); the CUDA section runs the
GPU tiles at paper-like shapes and is skipped without a GPU. The whole file is skipped where triton
is not installed (the PyTorch paths are checked in test_tokenizer.py and test_losses.py).

    python -m pytest -q tests/test_kernels.py
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import kernels  # noqa: E402
import losses  # noqa: E402
from bench.kernels import conv_inputs, conv_sweep, network_counts, sweep_conv, sweep_table  # noqa: E402
from kernels import coding_rate, factored  # noqa: E402
from kernels.coding_rate import McrBlocks, mcr_loss_triton  # noqa: E402
from kernels.composed import grouped_conv_gelu_mean_reference  # noqa: E402
from kernels.tokenizer_conv import ConvBlocks, grouped_conv_gelu_mean_triton  # noqa: E402
from losses import mcr_loss, mcr_loss_reference  # noqa: E402
from tokenizer import SemanticTokenizer  # noqa: E402

# fp32 on the interpreter: kernel and reference sum the same fp32 products in a different order
# (tiles over (ROI, tap), time, rows), so they agree to a few ulp of the largest partial sums.
FP32 = dict(rtol=1e-4, atol=1e-5)
PAPER_COUNTS = network_counts()                         # R_n of the SPEC §2 457-ROI map (data/networks.py)


def conv_parity(B, counts, T, L, K, D, blocks=None, tol=FP32):
    (x, w, b), offsets = conv_inputs(B, counts, T, K, D)
    with kernels.enabled(True):
        out = grouped_conv_gelu_mean_triton(x, w, b, offsets, L, blocks=blocks)
    ref = grouped_conv_gelu_mean_reference(x, w, b, offsets, L)
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(ref)                                        # shared upstream gradient
    for got, want in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(got, want, **tol)


# ---------------------------------------------------------------------------------------------
# tokenizer conv (CPU interpreter, fp32)
# ---------------------------------------------------------------------------------------------
SMALL = ConvBlocks(rows=16, rows_b=16, d=16, ck=64, ck_w=64, r=16, num_warps=4)   # several tiles per axis


@pytest.mark.parametrize("B,counts,T,L,K,D,blocks", [
    (1, (1, 4, 2), 16, 8, 16, 16, None),                 # batch 1, one-ROI network, K = 16 > L
    (3, (5, 1, 17), 12, 4, 16, 33, SMALL),               # prime batch, odd D, network > one ROI tile
    (7, (2, 17), 15, 5, 4, 20, SMALL),                   # N = 2, even K (asymmetric pad), ragged tails
    (2, (3, 3, 3, 1), 12, 3, 3, 24, SMALL),              # K = 3 (the dense branch alone), N = 4
])
def test_conv_matches_reference(B, counts, T, L, K, D, blocks):
    conv_parity(B, counts, T, L, K, D, blocks)


def test_conv_gpu_tiles_on_interpreter():
    """The exact GPU tiling (ConvBlocks defaults: several row, D, (ROI, tap) and ROI tiles here)
    computes the right thing; only the compiler is left between this and the GPU."""
    conv_parity(13, (40, 7, 3), 10, 5, 16, 130, ConvBlocks())


def test_conv_matches_reference_paper_network_map():
    """All nine SPEC networks (7 to 91 ROIs, several (ROI, tap) chunks each) in one launch."""
    conv_parity(1, PAPER_COUNTS, 5, 5, 16, 16)


def test_conv_data_input_gets_no_grad_kernel():
    """x is data in training: only weight and bias gradients are asked for (and computed)."""
    (x, w, b), offsets = conv_inputs(2, (3, 5), 8, 4, 16)
    x = x.detach()
    with kernels.enabled(True):
        out = grouped_conv_gelu_mean_triton(x, w, b, offsets, 4)
    ref = grouped_conv_gelu_mean_reference(x, w, b, offsets, 4)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (w, b), g), torch.autograd.grad(ref, (w, b), g)):
        torch.testing.assert_close(got, want, **FP32)


def test_conv_bf16_input_on_interpreter():
    """bf16 in, bf16 out (fp32 inside). Tolerance: the bf16 rounding of output and gradients (8 bits)."""
    (x, w, b), offsets = conv_inputs(2, (3, 6), 8, 4, 16, dtype=torch.bfloat16)
    with kernels.enabled(True):
        out = grouped_conv_gelu_mean_triton(x, w, b, offsets, 4)
    ref32 = [t.detach().float().requires_grad_() for t in (x, w, b)]
    ref = grouped_conv_gelu_mean_reference(*ref32, offsets, 4)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (x, w, b), g.bfloat16()), torch.autograd.grad(ref, ref32, g)):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def test_conv_under_autocast_matches_reference_dtype_and_values():
    """Autocast: bf16 operands into the dots, fp32 accumulation; the output dtype follows the
    reference (fp32 here, as its fp32 bias promotes the bf16 matmul). Tolerance: bf16 operands."""
    (x, w, b), offsets = conv_inputs(2, (3, 6), 8, 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), kernels.enabled(True):
        out = grouped_conv_gelu_mean_triton(x, w, b, offsets, 4)
        ref = grouped_conv_gelu_mean_reference(x, w, b, offsets, 4)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@pytest.mark.parametrize("args,match", [
    (dict(x=torch.zeros(2, 5)), r"x must be \(B, C, T'\)"),
    (dict(weight=torch.zeros(4, 16, 8)), "weight has 4 ROI rows but x has 5 ROIs"),
    (dict(offsets=(0, 2, 4)), "offsets must rise from 0 to C=5"),
    (dict(offsets=(0, 3, 2, 5)), "offsets must rise from 0 to C=5"),
    (dict(bias=torch.zeros(3, 8)), r"bias must be \(N, D\) = \(2, 8\)"),
    (dict(patch_len=3), "crop length 8 is not a multiple of the patch length 3"),
    (dict(bias=torch.zeros(2, 8, device="meta")), "x, weight, bias on different devices: cpu, cpu, meta"),
])
def test_conv_bad_input_raises(args, match):
    kw = dict(x=torch.zeros(2, 5, 8), weight=torch.zeros(5, 16, 8), bias=torch.zeros(2, 8), offsets=(0, 2, 5),
              patch_len=4)
    kw.update(args)
    with pytest.raises(ValueError, match=match):
        grouped_conv_gelu_mean_triton(**kw)


# ---------------------------------------------------------------------------------------------
# MCR loss (CPU interpreter, fp32)
# ---------------------------------------------------------------------------------------------
def mcr_inputs(m, p, unit=True, seed=0, device="cpu", dtype=torch.float32):
    """Unit rows as the projection head gives, or rows of norm 0.5..2 (the cosine must not assume 1)."""
    g = torch.Generator().manual_seed(seed)
    views = [F.normalize(torch.randn(m, p, generator=g), dim=-1) for _ in range(4)]
    if not unit:
        views = [v * (0.5 + 1.5 * torch.rand(m, 1, generator=g)) for v in views]
    views = [v.to(device=device, dtype=dtype) for v in views]
    return [v.requires_grad_() for v in views[:2]], views[2:]


def mcr_parity(m, p, blocks=None, unit=True, tol=FP32, device="cpu", dtype=torch.float32):
    s, t = mcr_inputs(m, p, unit, device=device, dtype=dtype)
    with kernels.enabled(True):
        got = mcr_loss_triton(s, t, blocks=blocks)
    want = mcr_loss_reference(s, t)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)
    w = torch.randn(3, device=device)             # shared upstream weights of (loss, comp, expa)
    g_got = torch.autograd.grad(sum(wi * o for wi, o in zip(w, got)), s)
    g_want = torch.autograd.grad(sum(wi * o for wi, o in zip(w, want)), s)
    # both sides compute fp32 gradients and round them to the input dtype: bf16 may differ by 1 ulp (2^-8)
    gtol = tol if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for a, b in zip(g_got, g_want):
        assert a.dtype == b.dtype
        # gradient entries are O(1/m); compare relative to the largest
        torch.testing.assert_close(a, b, rtol=gtol["rtol"], atol=gtol["atol"] * b.abs().max().item())


@pytest.mark.parametrize("m,p,blocks,unit", [
    (1, 16, None, True),                                                # batch 1
    (7, 5, None, True),                                                 # prime m, p < one tile
    (97, 33, McrBlocks(rows=16, p=16, rows_per_split=32, num_warps=4), True),   # splits x tiles, ragged
    (64, 128, None, False),                                             # CLS-like p, rows not unit-norm
])
def test_mcr_matches_reference(m, p, blocks, unit):
    mcr_parity(m, p, blocks, unit)


def test_mcr_gpu_tiles_on_interpreter():
    """McrBlocks defaults (64x64 Gram tiles, 256-row splits) with 2 splits and a 2x2 tile grid."""
    mcr_parity(300, 128, McrBlocks())


def test_mcr_tiny_rows_follow_cosine_similarity_eps():
    """A near-zero student row: the cosine's separate norm clamps (eps 1e-8) must match PyTorch's."""
    s, t = mcr_inputs(6, 16)
    with torch.no_grad():
        s[0][2] *= 1e-9
    with kernels.enabled(True):
        got = mcr_loss_triton(s, t)
    want = mcr_loss_reference(s, t)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **FP32)


def test_mcr_teacher_gets_no_grad():
    s, t = mcr_inputs(8, 16)
    t = [v.requires_grad_() for v in t]
    with kernels.enabled(True):
        loss = mcr_loss_triton(s, t)[0]
    loss.backward()
    assert all(v.grad is None for v in t) and all(v.grad is not None for v in s)


@pytest.mark.parametrize("student,teacher,match", [
    ([torch.zeros(4, 8)], [torch.zeros(4, 8)] * 2, "2 student and 2 teacher views"),
    ([torch.zeros(4, 8)] * 2, [torch.zeros(4, 8), torch.zeros(5, 8)], "one \\(m, p\\) shape"),
    ([torch.zeros(4, 8, 1)] * 2, [torch.zeros(4, 8, 1)] * 2, "one \\(m, p\\) shape"),
    ([torch.zeros(0, 8)] * 2, [torch.zeros(0, 8)] * 2, "at least one row"),
    ([torch.zeros(4, 8)] * 2, [torch.zeros(4, 8), torch.zeros(4, 8, device="meta")], "on different devices"),
])
def test_mcr_bad_views_raise(student, teacher, match):
    with pytest.raises(ValueError, match=match):
        mcr_loss_triton(student, teacher)


@pytest.mark.parametrize("flag", [True, False])
def test_mcr_dispatch_checks_views_before_picking_a_path(flag):
    """The rule looks at student_views[0]: no student view must give the message, not an IndexError."""
    with kernels.enabled(flag), pytest.raises(ValueError, match="expected 2 student and 2 teacher views, got 0 and 2"):
        mcr_loss([], [torch.zeros(4, 8)] * 2)


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------
def test_dispatch_picks_triton_when_enabled_and_pytorch_when_disabled(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "grouped_conv_gelu_mean", lambda *a: calls.append("triton"))
    monkeypatch.setattr(factored, "factored_conv_gelu_mean", lambda *a: calls.append("factored"))
    monkeypatch.setattr(coding_rate, "mcr_loss_triton", lambda *a: calls.append("mcr triton") or (0, 0, 0))
    monkeypatch.setattr(losses, "mcr_loss_reference", lambda *a: calls.append("mcr reference") or (0, 0, 0))
    tok = SemanticTokenizer([0, 1], dim=4, patch_len=4)
    x = torch.zeros(1, 2, 4)
    s, t = mcr_inputs(4, 8)
    with kernels.enabled(True):                   # CPU tensor, interpreter on
        assert kernels.tokenizer_path(x) == "triton" and kernels.mcr_path(s[0]) == "triton"
        kernels.tokenizer_conv_gelu_mean(x, tok.linear_form(), None)
        mcr_loss(s, t)
    with kernels.enabled(False):
        assert kernels.tokenizer_path(x) == "factored" and kernels.mcr_path(s[0]) == "reference"
        kernels.tokenizer_conv_gelu_mean(x, tok.linear_form(), None)
        mcr_loss(s, t)
    assert calls == ["triton", "mcr triton", "factored", "mcr reference"]


def test_dispatch_logs_each_path_once(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_announced", set())
    x = torch.zeros(1)
    with caplog.at_level(logging.INFO, logger="brain_semantoks.kernels"):
        for flag in (True, False):
            with kernels.enabled(flag):
                kernels.tokenizer_path(x), kernels.tokenizer_path(x), kernels.mcr_path(x), kernels.mcr_path(x)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["kernels: tokenizer runs the triton path (interpreter)",
                    "kernels: MCR loss runs the triton path (interpreter)",
                    "kernels: tokenizer runs the factored path (--kernels pytorch)",
                    "kernels: MCR loss runs the reference path (--kernels pytorch)"]


def test_mcr_through_losses_same_with_and_without_kernels():
    s, t = mcr_inputs(12, 16)
    with kernels.enabled(True):
        got = mcr_loss(s, t)
    with kernels.enabled(False):
        want = mcr_loss(s, t)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **FP32)


# ---------------------------------------------------------------------------------------------
# full path: the tokenizer module with kernels on and off
# ---------------------------------------------------------------------------------------------
def test_semantic_tokenizer_same_with_and_without_kernels():
    """Forward values and every parameter's gradient (through the composed conv weight) agree."""
    torch.manual_seed(0)
    network_map = np.array([0, 1, 0, 2, 2, 1, 2, 0, 2, 2, 1])       # unsorted ROIs, N = 3
    tok = SemanticTokenizer(network_map, dim=16, patch_len=5)
    x = torch.randn(3, 11, 10)
    g = torch.randn(3, 3, 2, 16)
    results = []
    for flag in (False, True):
        tok.zero_grad()
        with kernels.enabled(flag):
            z = tok(x)
        z.backward(g)
        results.append((z.detach(), {n: p.grad.clone() for n, p in tok.named_parameters()}))
    (z_ref, g_ref), (z_tri, g_tri) = results
    torch.testing.assert_close(z_tri, z_ref, **FP32)
    assert g_ref.keys() == g_tri.keys()
    for name in g_ref:
        torch.testing.assert_close(g_tri[name], g_ref[name], **FP32, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_tile_sweep_checks_every_variant_against_the_reference(capsys):
    """bench/kernels.py --sweep and gpu_check's tiles stage: every tile variant is checked against the
    reference (output, weight and bias gradients) and timed forward and fwd+bwd, the reference once
    (tiny shapes, interpreter)."""
    with kernels.enabled(True):
        rows = sweep_conv(torch.float32, 1, device="cpu", shape=dict(B=1, counts=(3, 2), T=20, D=8))
    assert [r[0] for r in rows] == [label for label, _ in conv_sweep()]
    assert all(err.keys() == {"output", "weight", "bias"} and max(err.values()) < 1e-5 for _, err, _ in rows), rows
    for i, (_, _, cases) in enumerate(rows):
        assert [case.split()[1] for case, _ in cases] == ["fwd", "fwd+bwd"]
        assert all(res.keys() == ({"ref", "triton"} if i == 0 else {"triton"}) for _, res in cases)
    assert capsys.readouterr().out.count("bias") == len(rows)


def test_sweep_table_names_the_fastest_right_variant_and_flags_the_wrong_ones():
    def row(label, err, fwd, fwd_bwd, ref=None):
        cases = [(f"conv {p}", {"triton": (t, 0), **({"ref": (r, 0)} if ref else {})})
                 for p, t, r in zip(("fwd", "fwd+bwd"), (fwd, fwd_bwd), ref or (None, None))]
        return label, {"output": err, "weight": err, "bias": err}, cases
    ok = [row("default", 1e-3, 5.0, 20.0, ref=(10.0, 20.0)), row("d=64", 1e-3, 4.0, 15.0)]
    md, wrong = sweep_table(ok + [row("fast but wrong", 0.5, 1.0, 2.0)], tol=2e-2)
    assert wrong and "Fastest right fwd+bwd: tiles d=64" in md and "| fast but wrong | 1.00 | 2.00 | 10.00× |" in md
    md, wrong = sweep_table(ok + [row("did not run", 1e-3, float("nan"), float("nan"))], tol=2e-2)
    assert wrong and "tiles d=64" in md and "| (reference) | 10.00 | 20.00 |" in md
    md, wrong = sweep_table(ok, tol=2e-2)
    assert not wrong and "| d=64 | 4.00 | 15.00 | 1.33× |" in md


# ---------------------------------------------------------------------------------------------
# GPU compilation without a GPU: the interpreter accepts things the compiler does not
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kernels_compile_for_h100_bf16():
    """Every kernel, bf16 training path, GPU tiles, compiled to sm_90 cubin (shared memory checked):
    the conv's 4, the MCR loss's 2, and the fused tokenizer's 7 (4 of its own, 3 reused conv kernels)."""
    from conftest import script_env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "kernels.py"), "--compile-check", "--dtype", "bf16"],
                       env=script_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" ok, ") == 13, r.stdout


# ---------------------------------------------------------------------------------------------
# CUDA: the GPU tiles at paper-like shapes (skipped without a GPU)
# ---------------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_conv_matches_reference(dtype):
    """fp32: both sides use PyTorch's matmul precision setting (ieee by default) -> fp32 tolerance
    scaled for 457*16 = 7312-term sums. bf16: the reference runs in fp32 on the same bf16-rounded
    inputs; the kernel rounds gh and outputs to bf16 (8 bits) -> 2e-2."""
    (x, w, b), offsets = conv_inputs(8, PAPER_COUNTS, 100, 16, 768, dtype=dtype, device="cuda")
    with kernels.enabled(True):
        out = kernels.grouped_conv_gelu_mean(x, w, b, offsets, 20)
    ref32 = [t.detach().float().requires_grad_() for t in (x, w, b)]
    ref = grouped_conv_gelu_mean_reference(*ref32, offsets, 20)
    tol = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), ref, **tol)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (x, w, b), g.to(dtype)), torch.autograd.grad(ref, ref32, g)):
        torch.testing.assert_close(got.float(), want, rtol=tol["rtol"], atol=tol["atol"] * want.abs().max().item())


@cuda
@pytest.mark.parametrize("m", [512, 4608])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_mcr_matches_reference(m, dtype):
    """The statistics are fp32 for either input dtype (as in the reference), so one fp32 tolerance
    (sums over m rows and a p x p Cholesky)."""
    mcr_parity(m, 128, tol=dict(rtol=1e-3, atol=1e-5), device="cuda", dtype=dtype)
