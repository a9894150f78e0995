"""The tokenizer op by each of its paths at paper shapes, and the fused kernel's compile cases.

bench/kernels.py runs these (`--only tokenizer`, `--compile-check`) and bench/gpu_check.py's kernels
stage the timing, whose fastest right fwd+bwd is to decide kernels.CUDA_DEFAULT on CUDA:

- factored: the PyTorch GEMMs of kernels/factored.py (the CPU path);
- composed: the composed weight's conv in PyTorch, unfold + one matmul per network (kernels/composed.py);
- conv kernel: that composed conv in Triton (kernels/tokenizer_conv.py, `--kernels triton`);
- fused: the factored form fused in Triton (kernels/fused_tokenizer.py), whose speed-ups are printed.

    python bench/kernels.py --only tokenizer [--dtype bf16]
"""
import numpy as np
import torch

from bench.timing import PAPER_CONV, network_counts, run_case


def tokenizer_inputs(B, counts, T, L, D, dtype=torch.float32, device="cpu", seed=0):
    """Seeded x (B, C, T) (data: no grad) and a kernels.TokenizerWeights of the tokenizer's shapes
    (H_n = ceil((D/2)/R_n) heads, 16 taps), each weight scaled by its fan-in as the tokenizer's
    init does (O(1) pre-activations); the weights require grad."""
    import kernels
    g = torch.Generator(device=device).manual_seed(seed)
    half, N = D // 2, len(counts)
    pairs = [-(-half // r) * r for r in counts]                        # H_n * R_n

    def rows(sizes, fan_in, *shape):
        """sum(sizes) rows, those of network n ~ N(0, 1 / fan_in[n])."""
        std = torch.repeat_interleave(torch.tensor(fan_in, dtype=torch.float32) ** -0.5, torch.tensor(sizes))
        return torch.randn(sum(sizes), *shape, generator=g, device=device) * std.to(device).view(-1, *[1] * len(shape))

    w = [rows(counts, [3 * r for r in counts], 3, half), 0.1 * torch.randn(N, half, generator=g, device=device),
         rows(pairs, [16] * N, 16), rows(pairs, pairs, half), 0.1 * torch.randn(N, half, generator=g, device=device)]
    x = torch.randn(B, sum(counts), T, generator=g, device=device).to(dtype)
    offsets = [tuple(int(o) for o in np.concatenate([[0], np.cumsum(c)])) for c in (counts, pairs)]
    return x, kernels.TokenizerWeights(*(t.to(dtype).requires_grad_() for t in w), *offsets, L)


def fused_tokenizer_errors(x, w, g):
    """max |fused − factored| / max |factored| for the output and each weight's gradient under the
    upstream gradient g, the factored path in fp32 on the same numbers (a fast but wrong kernel
    must show); printed and returned as {name: error}."""
    from kernels.factored import factored_conv_gelu_mean
    from kernels.fused_tokenizer import fused_tokenizer_triton
    w32 = w._replace(**{k: t.detach().float().requires_grad_() for k, t in w._asdict().items() if torch.is_tensor(t)})
    got, want = ([y.float(), *torch.autograd.grad(y, tuple(v[:5]), g.to(y.dtype))]
                 for y, v in ((fused_tokenizer_triton(x, w), w), (factored_conv_gelu_mean(x.float(), w32), w32)))
    err = {k: ((a.float() - b).abs().max() / b.abs().max()).item()
           for k, a, b in zip(("output", *w._fields[:5]), got, want)}
    print("fused vs factored (fp32), max |error| / max |factored|: "
          + ", ".join(f"{k} {e:.1e}" for k, e in err.items()), flush=True)
    return err


def bench_tokenizer(dtype, iters, device="cuda", shape=None):
    """The tokenizer op by each path, fwd and fwd+bwd (the five weights' gradients; x is data) ->
    (fused_tokenizer_errors, [(case name, run_case result)])."""
    from kernels.composed import compose_weights, grouped_conv_gelu_mean_reference
    from kernels.factored import factored_conv_gelu_mean
    from kernels.fused_tokenizer import fused_tokenizer_triton
    from kernels.tokenizer_conv import grouped_conv_gelu_mean_triton
    sh = {**PAPER_CONV, **(shape or {})}
    counts = sh["counts"] or network_counts()
    B, T, L, D = (sh[k] for k in ("B", "T", "L", "D"))
    x, w = tokenizer_inputs(B, counts, T, L, D, dtype, device)
    g = torch.randn(B, len(counts), T // L, D, device=device, dtype=dtype)
    paths = {"factored": factored_conv_gelu_mean,
             "composed": lambda x, w: grouped_conv_gelu_mean_reference(x, *compose_weights(w), w.offsets, L),
             "conv kernel": lambda x, w: grouped_conv_gelu_mean_triton(x, *compose_weights(w), w.offsets, L),
             "fused": fused_tokenizer_triton}
    err = fused_tokenizer_errors(x, w, g)
    shape = f"B={B} C={sum(counts)} T'={T} L={L} D={D} N={len(counts)}"
    cases = {f"tokenizer fwd {shape}": lambda f: lambda: torch.no_grad()(f)(x, w),        # path -> timed call
             f"tokenizer fwd+bwd {shape}": lambda f: lambda: torch.autograd.grad(f(x, w), tuple(w[:5]), g)}
    return err, [(name, run_case(name, {k: make(f) for k, f in paths.items()}, iters, device, kernel="fused"))
                 for name, make in cases.items()]


PATHS = ("factored", "composed", "conv kernel", "fused")


def tokenizer_table(err, rows, tol):
    """bench_tokenizer's (errors, rows) -> Markdown lines: each path's time and the fastest, the fused
    kernel's errors, marked **WRONG** above `tol`."""
    lines = ["", "Tokenizer op by path; the fastest right fwd+bwd should be kernels.CUDA_DEFAULT's "
             "tokenizer entry. Fused kernel against the factored path (max |error| / max |factored|): "
             + ", ".join(f"{k} {e:.1e}" for k, e in err.items()) + (" **WRONG**" if max(err.values()) > tol else ""),
             "", "| case | " + " | ".join(f"{p} ms" for p in PATHS) + " | fastest |", "|---|" + "---|" * (len(PATHS) + 1)]
    for case, res in rows:
        ms = {p: res[p][0] for p in PATHS if p in res}
        lines.append(f"| {case} | " + " | ".join(f"{ms[p]:.3f}" if p in ms else "failed" for p in PATHS)
                     + f" | {min(ms, key=ms.get) if ms else 'none'} |")
    return lines


def fused_compile_cases(P, dot, prec):
    """compile_check's cases for the fused tokenizer (kernels/fused_tokenizer*.py) at its GPU tiles,
    the tokenizer_conv kernels its backward reuses included, at the constexprs it gives them."""
    from kernels import fused_tokenizer_fwd as ft
    from kernels import fused_tokenizer_bwd as fb
    from kernels import tokenizer_conv as tc
    bl, cc = ft.FusedBlocks(), dict(DOT_DTYPE=dot, PRECISION=prec)
    ints = {k: "i32" for k in ("BP", "C", "T", "HALF", "N", "P", "L")}
    ints_conv = {k: "i32" for k in ("BP", "C", "T", "D", "P", "L")}
    weights = dict(x_ptr=P, wd_ptr=P, bd_ptr=P, taps_ptr=P, wl_ptr=P, bl_ptr=P, offs_ptr="*i32", poffs_ptr="*i32")
    fwd = dict(K=16, PAD_L=7, BLOCK_D=bl.d, BLOCK_CK=bl.ck, BLOCK_M=bl.m, **cc)
    pairs = dict(K=16, PAD_L=7, BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_M=bl.m_b, **cc)
    return [
        ("fused", ft._fused_fwd_kernel, dict(**weights, out_ptr=P, **ints), dict(BLOCK_ROWS=bl.rows, **fwd)),
        ("fused", fb._fused_bwd_gh_kernel, dict(**weights, gout_ptr=P, gh_ptr=P, gbias_ptr="*fp32", **ints),
         dict(BLOCK_ROWS=bl.rows_b, **fwd)),
        ("fused", fb._fused_bwd_lin_kernel, dict(x_ptr=P, taps_ptr=P, gh_ptr=P, offs_ptr="*i32", poffs_ptr="*i32",
                                                 glin_ptr="*fp32", **ints), pairs),
        ("fused", fb._fused_bwd_taps_kernel, dict(x_ptr=P, wl_ptr=P, gh_ptr=P, offs_ptr="*i32", poffs_ptr="*i32",
                                                  gtaps_ptr="*fp32", **ints, M="i32", SPLIT="i32"),
         dict(BLOCK_K=16, **pairs)),
        ("fused, dense K=3", tc._conv_gelu_mean_bwd_weight_kernel,
         dict(x_ptr=P, gh_ptr=P, offs_ptr="*i32", gw_ptr="*fp32", **ints_conv),
         dict(K=3, PAD_L=1, BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_CK=bl.ck_w, **cc)),
        *((f"fused, {what}", tc._conv_gelu_mean_bwd_x_kernel,
           dict(w_ptr=P, gh_ptr=P, offs_ptr="*i32", gx_ptr="*fp32", **ints_conv),
           dict(K=k, PAD_L=(k - 1) // 2, BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_R=bl.r, **cc))
          for what, k in (("dense K=3", 3), ("W_eff K=16", 16))),
    ], bl.num_warps
