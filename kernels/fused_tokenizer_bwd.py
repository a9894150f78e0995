"""The fused tokenizer's backward (the math is in fused_tokenizer.py, the forward in fused_tokenizer_fwd.py).

With g = grad_out / L and, for both branches, gh[row, t, o] = g[row, o] * GELU'(h[row, t, o]):

    grad dense_bias[n, o]   = sum_{row, t} gh_dense[row, t, o]
    grad dense_weight[c,i,o] = sum_{row, t} x[row, c, t+i-1] * gh_dense[row, t, o]
    grad lin_bias[n, o]     = sum_{row, t} gh_sg[row, t, o]
    grad lin_weight[j, o]   = sum_{row, t} s[row, t, j] * gh_sg[row, t, o]              (s of (2))
    gs[row, t, j]           = sum_o Wl[j, o] * gh_sg[row, t, o]
    grad sg_taps[j, k]      = sum_{row, t} gs[row, t, j] * x[row, roi(j), t+k-c]
    grad x                  = the transposed convs of both branches

Kernels, in order:
1. `_fused_bwd_gh_kernel` (the forward's grid): recompute h exactly as the forward does, apply
   GELU', write gh (2, N, B*P, L, D/2) in the dot dtype and per-tile bias partial sums. h is never
   saved: storing it would cost as many bytes as gh, and recomputing it is one forward.
2. dense_weight: tokenizer_conv's weight-gradient kernel with 3 taps on gh's dense half: it is the
   same x^T gh reduction, tested there.
3. `_fused_bwd_lin_kernel`: a program per (pair chunk, column tile, network) reduces s^T gh over all
   patches and t, recomputing s as the forward does (never stored: M*L values per patch, 4x x).
4. `_fused_bwd_taps_kernel`: a program per (pair chunk, patch split, network) computes its gs tile
   with tl.dot over D/2, then the K tap sums against x; gs exists only in registers. Splits over
   patches give the GPU enough programs (pair chunks alone: 8 x 9 = 72 at the GPU tiles; with the
   bench's 5120 patches in splits of 1024: 360); their partial sums are added in one PyTorch sum,
   deterministic where atomics would not be.
5. x (only when asked: x is data in training): tokenizer_conv's input-gradient kernel, once with the
   dense taps and once with the structured branch's composed weight W_eff (C, K, D/2). The factored
   transpose would need gs at K shifts of t, i.e. a (B*P*L, M) temporary (0.8 GB at the bench's
   shapes) or K times the gs GEMM; on this cold path the composed weight does it in one tested kernel.
"""
import torch
import triton
import triton.language as tl

from .composed import compose_structured
from .fused_tokenizer_fwd import _patches, _preact_fused_t, _program_tile, _sg_conv_t, launch_meta, offsets_tensor
from .tokenizer_conv import (_TORCH_DTYPE, _conv_gelu_mean_bwd_weight_kernel, _conv_gelu_mean_bwd_x_kernel,
                             _gelu_erf_grad)


@triton.jit
def _fused_bwd_gh_kernel(
    x_ptr, wd_ptr, bd_ptr, taps_ptr, wl_ptr, bl_ptr, offs_ptr, poffs_ptr,   # as _fused_fwd_kernel's
    gout_ptr,    # (B, N, P, 2*HALF) upstream gradient, contiguous
    gh_ptr,      # (2, N, BP, L, HALF) out: gradient of the pre-activation, DOT_DTYPE
    gbias_ptr,   # (2, N, n_row_tiles, HALF) out: fp32 sums of gh over this tile's patches and t
    BP, C, T, HALF, N, P, L,
    K: tl.constexpr, PAD_L: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_CK: tl.constexpr, BLOCK_M: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    (n, branch, cols, col_ok, rows, row_ok, x_row, out_row, bias, c_lo, ck_dense, p_lo, n_sg,
     heads) = _program_tile(offs_ptr, poffs_ptr, bd_ptr, bl_ptr, BP, C, T, N, P, L, HALF, BLOCK_ROWS, BLOCK_D)
    ok = row_ok[:, None] & col_ok[None, :]
    g = tl.load(gout_ptr + out_row[:, None] + cols[None, :], mask=ok, other=0.0).to(tl.float32) / L
    gh_row = ((branch * N + n) * BP + rows).to(tl.int64) * L * HALF   # gh[branch, n, row, 0, 0]
    gbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t in range(0, L):
        h = _preact_fused_t(x_ptr, wd_ptr, taps_ptr, wl_ptr, x_row, row_ok, cols, col_ok, c_lo, ck_dense,
                            p_lo, n_sg, heads, t, T, L, HALF, K, PAD_L, BLOCK_ROWS, BLOCK_D, BLOCK_CK,
                            BLOCK_M, DOT_DTYPE, PRECISION) + bias[None, :]
        gh = (g * _gelu_erf_grad(h)).to(DOT_DTYPE)
        tl.store(gh_ptr + gh_row[:, None] + t * HALF + cols[None, :], gh, mask=ok)
        gbias += tl.sum(gh.to(tl.float32), axis=0)   # the bias gradient of what the weights will see
    tl.store(gbias_ptr + ((branch * N + n) * tl.num_programs(0) + tl.program_id(0)) * HALF + cols, gbias,
             mask=col_ok)


@triton.jit
def _pair_chunk(offs_ptr, poffs_ptr, n, pid_m, BLOCK_M: tl.constexpr):
    """BLOCK_M pairs of network n: global pair ids, which are real, their ROIs, and whether the chunk
    holds any (the grid covers the largest network)."""
    c_lo = tl.load(offs_ptr + n)
    p_lo = tl.load(poffs_ptr + n)
    n_pairs = tl.load(poffs_ptr + n + 1) - p_lo
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    heads = n_pairs // (tl.load(offs_ptr + n + 1) - c_lo)
    return p_lo + m, m < n_pairs, c_lo + m // heads, pid_m * BLOCK_M < n_pairs


@triton.jit
def _fused_bwd_lin_kernel(
    x_ptr,       # (B, C, T)
    taps_ptr,    # (M, K)
    gh_ptr,      # (2, N, BP, L, HALF); the structured half gh[1] is read
    offs_ptr,    # (N + 1,) int32
    poffs_ptr,   # (N + 1,) int32
    glin_ptr,    # (M, HALF) out, fp32
    BP, C, T, HALF, N, P, L,
    K: tl.constexpr, PAD_L: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m, pid_d, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pair, m_ok, roi, live = _pair_chunk(offs_ptr, poffs_ptr, n, pid_m, BLOCK_M)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < HALF
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for r0 in range(0, tl.where(live, BP, 0), BLOCK_ROWS):
        rows, row_ok, x_row = _patches(r0, BP, C, T, P, L, BLOCK_ROWS)
        gh_row = ((N + n) * BP + rows).to(tl.int64) * L * HALF
        for t in range(0, L):
            s = _sg_conv_t(x_ptr, taps_ptr, x_row, row_ok, roi, pair, m_ok, t, T, L,
                           K, PAD_L, BLOCK_ROWS, BLOCK_M)                      # (BLOCK_ROWS, BLOCK_M)
            gh = tl.load(gh_ptr + gh_row[:, None] + t * HALF + cols[None, :],
                         mask=row_ok[:, None] & col_ok[None, :], other=0.0)    # (BLOCK_ROWS, BLOCK_D)
            acc = tl.dot(tl.trans(s.to(DOT_DTYPE)), gh.to(DOT_DTYPE), acc, input_precision=PRECISION)
    tl.store(glin_ptr + pair.to(tl.int64)[:, None] * HALF + cols[None, :], acc,
             mask=m_ok[:, None] & col_ok[None, :])


@triton.jit
def _fused_bwd_taps_kernel(
    x_ptr,       # (B, C, T)
    wl_ptr,      # (M, HALF)
    gh_ptr,      # (2, N, BP, L, HALF); gh[1] is read
    offs_ptr,    # (N + 1,) int32
    poffs_ptr,   # (N + 1,) int32
    gtaps_ptr,   # (n_splits, M, K) out: fp32 sums over this split's patches
    BP, C, T, HALF, N, P, L, M, SPLIT,
    K: tl.constexpr, PAD_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m, pid_s, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pair, m_ok, roi, live = _pair_chunk(offs_ptr, poffs_ptr, n, pid_m, BLOCK_M)
    r_lo = pid_s * SPLIT
    r_end = tl.where(live, tl.minimum(r_lo + SPLIT, BP), r_lo)
    kk = tl.arange(0, BLOCK_K)
    dd = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for r0 in range(r_lo, r_end, BLOCK_ROWS):
        rows, row_ok, x_row = _patches(r0, r_end, C, T, P, L, BLOCK_ROWS)
        gh_row = ((N + n) * BP + rows).to(tl.int64) * L * HALF
        ok = row_ok[:, None] & m_ok[None, :]
        x_at = x_ptr + x_row[:, None] + (roi.to(tl.int64) * T - PAD_L)[None, :]   # x[row, roi, -PAD_L]
        for t in range(0, L):
            gs = tl.zeros((BLOCK_ROWS, BLOCK_M), dtype=tl.float32)
            for d0 in range(0, HALF, BLOCK_D):
                cols = d0 + dd
                col_ok = cols < HALF
                gh = tl.load(gh_ptr + gh_row[:, None] + t * HALF + cols[None, :],
                             mask=row_ok[:, None] & col_ok[None, :], other=0.0)   # (BLOCK_ROWS, BLOCK_D)
                wlT = tl.load(wl_ptr + pair.to(tl.int64)[None, :] * HALF + cols[:, None],
                              mask=col_ok[:, None] & m_ok[None, :], other=0.0)    # (BLOCK_D, BLOCK_M)
                gs = tl.dot(gh.to(DOT_DTYPE), wlT.to(DOT_DTYPE), gs, input_precision=PRECISION)
            # tap k of pair j saw x at t + k - PAD_L: only taps whose source lies inside the patch
            for k in range(tl.maximum(PAD_L - t, 0), tl.minimum(L + PAD_L - t, K)):
                xv = tl.load(x_at + (t + k), mask=ok, other=0.0).to(tl.float32)
                acc = tl.where(kk[None, :] == k, acc + tl.sum(gs * xv, axis=0)[:, None], acc)
    tl.store(gtaps_ptr + (pid_s * M + pair.to(tl.int64))[:, None] * K + kk[None, :], acc,
             mask=m_ok[:, None] & (kk < K)[None, :])


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
def _grad_dense_weight(x, gh, mt, offs):
    bl = mt["blocks"]
    gw = torch.empty(mt["C"], 3, mt["half"], device=x.device, dtype=torch.float32)
    _conv_gelu_mean_bwd_weight_kernel[(triton.cdiv(3 * mt["max_rois"], bl.ck_w), triton.cdiv(mt["half"], bl.d),
                                       mt["N"])](
        x, gh[0], offs, gw, mt["BP"], mt["C"], mt["T"], mt["half"], mt["P"], mt["L"], K=3, PAD_L=1,
        BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_CK=bl.ck_w, **mt["common"])
    return gw


def _grad_lin_weight(x, taps, gh, mt, offs, poffs):
    bl = mt["blocks"]
    g = torch.empty(taps.shape[0], mt["half"], device=x.device, dtype=torch.float32)
    _fused_bwd_lin_kernel[(triton.cdiv(mt["max_pairs"], bl.m_b), triton.cdiv(mt["half"], bl.d), mt["N"])](
        x, taps, gh, offs, poffs, g, *mt["ints"], K=mt["K"], PAD_L=(mt["K"] - 1) // 2,
        BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_M=bl.m_b, **mt["common"])
    return g


def _grad_taps(x, wl, gh, mt, offs, poffs):
    bl, K = mt["blocks"], mt["K"]
    n_splits = triton.cdiv(mt["BP"], bl.split)
    g = torch.empty(n_splits, wl.shape[0], K, device=x.device, dtype=torch.float32)
    _fused_bwd_taps_kernel[(triton.cdiv(mt["max_pairs"], bl.m_b), n_splits, mt["N"])](
        x, wl, gh, offs, poffs, g, *mt["ints"], wl.shape[0], bl.split, K=K, PAD_L=(K - 1) // 2,
        BLOCK_K=triton.next_power_of_2(K), BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_M=bl.m_b, **mt["common"])
    return g.sum(0)                                                        # (M, K)


def _grad_x(x, wd, taps, wl, gh, mt, offs, offsets, pairs):
    bl, gx = mt["blocks"], 0
    w_sg = compose_structured(taps, wl, offsets, pairs)                    # (C, K, D/2) W_eff
    for weight, gh_branch in ((wd, gh[0]), (w_sg, gh[1])):
        K = weight.shape[1]
        part = torch.empty(x.shape, device=x.device, dtype=torch.float32)
        _conv_gelu_mean_bwd_x_kernel[(triton.cdiv(mt["BP"], bl.rows_b), triton.cdiv(mt["max_rois"], bl.r), mt["N"])](
            weight.contiguous(), gh_branch, offs, part, mt["BP"], mt["C"], mt["T"], mt["half"], mt["P"], mt["L"],
            K=K, PAD_L=(K - 1) // 2, BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_R=bl.r, **mt["common"])
        gx = gx + part
    return gx


def backward(x, wd, bd, taps, wl, lb, offsets, pairs, patch_len, blocks, gout, needs):
    """Gradients of (x, dense_weight, dense_bias, sg_taps, lin_weight, lin_bias) under gout
    (B, N, P, D); None where `needs` (ctx.needs_input_grad) says no."""
    mt = launch_meta(x, offsets, pairs, patch_len, wl.shape[1], taps.shape[1], blocks)
    bl, N, half, BP = mt["blocks"], mt["N"], mt["half"], mt["BP"]
    offs, poffs = offsets_tensor(offsets, str(x.device)), offsets_tensor(pairs, str(x.device))
    n_row_tiles = triton.cdiv(BP, bl.rows_b)
    gh = torch.empty(2, N, BP, patch_len, half, device=x.device, dtype=_TORCH_DTYPE[mt["common"]["DOT_DTYPE"]])
    gbias = torch.empty(2, N, n_row_tiles, half, device=x.device, dtype=torch.float32)
    _fused_bwd_gh_kernel[(n_row_tiles, 2 * triton.cdiv(half, bl.d), N)](
        x, wd, bd, taps, wl, lb, offs, poffs, gout.contiguous(), gh, gbias, *mt["ints"], K=mt["K"],
        PAD_L=(mt["K"] - 1) // 2, BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_CK=bl.ck, BLOCK_M=bl.m, **mt["common"])
    gbias = gbias.sum(2)                                                   # (2, N, D/2)
    grads = (lambda: _grad_x(x, wd, taps, wl, gh, mt, offs, offsets, pairs),
             lambda: _grad_dense_weight(x, gh, mt, offs), lambda: gbias[0],
             lambda: _grad_taps(x, wl, gh, mt, offs, poffs), lambda: _grad_lin_weight(x, taps, gh, mt, offs, poffs),
             lambda: gbias[1])
    return tuple(make().to(like.dtype) if need else None
                 for make, need, like in zip(grads, needs, (x, wd, bd, taps, wl, lb)))
