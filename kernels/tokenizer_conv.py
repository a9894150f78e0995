"""The tokenizer's ragged conv + GELU + time mean fused in one Triton launch (forward and backward).

Computes exactly what `composed.grouped_conv_gelu_mean_reference` computes (the math is written
there): all N per-network convs of x (B, C, T') with weight (C, K, D) and bias (N, D), ROIs sorted
by network and split by `offsets`, each followed by GELU and the mean over the L time points of a
patch -> (B, N, P, D). The design of the kernels is described where they start, below.

    python -m pytest -q tests/test_kernels.py     # parity with the reference (CPU interpreter)
    python bench/kernels.py [--dtype bf16]        # timings on a CUDA GPU
"""
import dataclasses
import functools

import torch
import triton
import triton.language as tl


# ---------------------------------------------------------------------------------------------
# Forward. Write M for the (row, t) pairs, row = (b, p) in 0..B*P-1, and J_n = R_n*K for the
# reduction index j = (c, k) of network n (c = offsets[n] + j // K, k = j % K). With x_t[row, j] =
# x[b, c, p*L + t + k - (K-1)//2] (zero outside the patch), each network's pre-activation at time t
# is one GEMM (B*P, J_n) x (J_n, D) against weight[offsets[n]*K : offsets[n+1]*K] -- a contiguous
# slice of the (C*K, D) view of `weight`, so the block-diagonal structure costs nothing. A program
# owns (network n, BLOCK_ROWS rows, BLOCK_D channels) and loops over t = 0..L-1; for each t it runs
# the GEMM over J_n in BLOCK_CK chunks (tl.dot, M = BLOCK_ROWS, N = BLOCK_D, K = BLOCK_CK: all >= 16
# as tensor cores need), then adds GELU(h_t) into a running sum. The time mean is therefore a
# register accumulation and the (B*P*L, D) pre-activation never exists in memory. The grid covers
# the largest network; smaller networks mask their tail (and every program masks its rows/columns).
#
# Backward. With g = grad_out / L and gh[n, row, t, o] = g[b, n, p, o] * GELU'(h[b, n, p, t, o]):
#     grad_bias[n, o]      = sum_{row, t} gh[n, row, t, o]
#     grad_weight[c, k, o] = sum_{row, t} x_t[row, (c, k)] * gh[n, row, t, o]            (x_t^T gh)
#     grad_x[b, c, p*L+s]  = sum_k sum_o weight[c, k, o] * gh[n, row, s - k + (K-1)//2, o]  (conv^T)
# Three kernels: (1) recompute h exactly as the forward does (h is never saved), apply GELU' and
# write gh plus per-tile bias partial sums; (2) grad_weight: program per (n, J chunk, D tile)
# reducing over all rows and t; (3) grad_x: program per (n, row tile, ROI chunk) reducing over the
# valid taps k and all of D -- each x element belongs to exactly one program, so no atomics and the
# result is deterministic. gh is the one large temporary (N*B*P*L*D in x's dtype, backward only).
# ---------------------------------------------------------------------------------------------
@triton.jit
def _gelu_erf(h):
    return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))          # 1/sqrt(2)


@triton.jit
def _gelu_erf_grad(h):
    # d/dh [h * Phi(h)] = Phi(h) + h * phi(h); 0.39894... = 1/sqrt(2 pi)
    return 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476)) + h * 0.3989422804014327 * tl.exp(-0.5 * h * h)


@triton.jit
def _preact_t(x_ptr, w_ptr, x_row, row_ok, cols, col_ok, c_lo, ck_n, t, T, L,
              K: tl.constexpr, PAD_L: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_CK: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, D):
    """h_t minus bias for one (row tile, D tile) of network n at time t: sum over j of x_t w."""
    acc = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)
    jj = tl.arange(0, BLOCK_CK)
    for j0 in range(0, ck_n, BLOCK_CK):
        j = j0 + jj                                                  # (BLOCK_CK,) = (c, k) pairs
        j_ok = j < ck_n
        c = c_lo + j // K
        tau = t + j % K - PAD_L                                      # time inside the patch
        x_ok = j_ok & (tau >= 0) & (tau < L)                         # intra-patch zero padding
        xt = tl.load(x_ptr + x_row[:, None] + (c.to(tl.int64) * T + tau)[None, :],
                     mask=row_ok[:, None] & x_ok[None, :], other=0.0)           # (BLOCK_ROWS, BLOCK_CK)
        wt = tl.load(w_ptr + (c_lo * K + j).to(tl.int64)[:, None] * D + cols[None, :],
                     mask=j_ok[:, None] & col_ok[None, :], other=0.0)          # (BLOCK_CK, BLOCK_D)
        acc = tl.dot(xt.to(DOT_DTYPE), wt.to(DOT_DTYPE), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _conv_gelu_mean_fwd_kernel(
    x_ptr,       # (B, C, T) contiguous, ROIs sorted by network
    w_ptr,       # (C, K, D) contiguous, read as (C*K, D)
    bias_ptr,    # (N, D)
    offs_ptr,    # (N + 1,) int32 ROI offsets of the networks
    out_ptr,     # (B, N, P, D) output, x's dtype
    BP, C, T, D, N, P, L,
    K: tl.constexpr, PAD_L: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_CK: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_r, pid_d, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c_lo = tl.load(offs_ptr + n)
    ck_n = (tl.load(offs_ptr + n + 1) - c_lo) * K                    # J_n
    rows = pid_r * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)             # (BLOCK_ROWS,) = (b, p)
    row_ok = rows < BP
    b, p = rows // P, rows % P
    x_row = b.to(tl.int64) * C * T + p * L                           # start of patch p at ROI 0
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)                   # (BLOCK_D,) output channels
    col_ok = cols < D
    bias = tl.load(bias_ptr + n * D + cols, mask=col_ok, other=0.0).to(tl.float32)
    total = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)
    for t in range(0, L):
        h = _preact_t(x_ptr, w_ptr, x_row, row_ok, cols, col_ok, c_lo, ck_n, t, T, L, K, PAD_L,
                      BLOCK_ROWS, BLOCK_D, BLOCK_CK, DOT_DTYPE, PRECISION, D) + bias[None, :]
        total += _gelu_erf(h)
    out_off = ((b.to(tl.int64) * N + n) * P + p) * D                 # out[b, n, p, :]
    tl.store(out_ptr + out_off[:, None] + cols[None, :], (total / L).to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _conv_gelu_mean_bwd_gh_kernel(
    x_ptr,       # (B, C, T)
    w_ptr,       # (C, K, D)
    bias_ptr,    # (N, D)
    offs_ptr,    # (N + 1,) int32
    gout_ptr,    # (B, N, P, D) upstream gradient, contiguous
    gh_ptr,      # (N, B*P, L, D) out: grad of the pre-activation, DOT_DTYPE
    gbias_ptr,   # (N, n_row_tiles, D) out: fp32 partial sums of gh over this tile's rows and t
    BP, C, T, D, N, P, L,
    K: tl.constexpr, PAD_L: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_CK: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_r, pid_d, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c_lo = tl.load(offs_ptr + n)
    ck_n = (tl.load(offs_ptr + n + 1) - c_lo) * K
    rows = pid_r * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < BP
    b, p = rows // P, rows % P
    x_row = b.to(tl.int64) * C * T + p * L
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    ok = row_ok[:, None] & col_ok[None, :]
    bias = tl.load(bias_ptr + n * D + cols, mask=col_ok, other=0.0).to(tl.float32)
    g = tl.load(gout_ptr + (((b.to(tl.int64) * N + n) * P + p) * D)[:, None] + cols[None, :],
                mask=ok, other=0.0).to(tl.float32) / L                # (BLOCK_ROWS, BLOCK_D), 0 off-tile
    gh_row = (n * BP + rows).to(tl.int64) * L * D                    # gh[n, row, 0, 0]
    gbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t in range(0, L):
        h = _preact_t(x_ptr, w_ptr, x_row, row_ok, cols, col_ok, c_lo, ck_n, t, T, L, K, PAD_L,
                      BLOCK_ROWS, BLOCK_D, BLOCK_CK, DOT_DTYPE, PRECISION, D) + bias[None, :]
        gh = (g * _gelu_erf_grad(h)).to(DOT_DTYPE)
        tl.store(gh_ptr + gh_row[:, None] + t * D + cols[None, :], gh, mask=ok)
        gbias += tl.sum(gh.to(tl.float32), axis=0)
    tl.store(gbias_ptr + (n * tl.num_programs(0) + pid_r) * D + cols, gbias, mask=col_ok)


@triton.jit
def _conv_gelu_mean_bwd_weight_kernel(
    x_ptr,       # (B, C, T)
    gh_ptr,      # (N, B*P, L, D)
    offs_ptr,    # (N + 1,) int32
    gw_ptr,      # (C, K, D) out, fp32
    BP, C, T, D, P, L,
    K: tl.constexpr, PAD_L: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_CK: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_j, pid_d, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c_lo = tl.load(offs_ptr + n)
    ck_n = (tl.load(offs_ptr + n + 1) - c_lo) * K
    # the grid covers the largest network: tiles past this one's end run no iterations (and store nothing)
    n_rows = tl.where(pid_j * BLOCK_CK < ck_n, BP, 0)
    j = pid_j * BLOCK_CK + tl.arange(0, BLOCK_CK)                    # (BLOCK_CK,) = (c, k) pairs
    j_ok = j < ck_n
    c = c_lo + j // K
    k = j % K
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros((BLOCK_CK, BLOCK_D), dtype=tl.float32)
    for r0 in range(0, n_rows, BLOCK_ROWS):
        rows = r0 + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < BP
        b, p = rows // P, rows % P
        x_off = (b.to(tl.int64) * C * T + p * L)[None, :] + (c.to(tl.int64) * T)[:, None]
        gh_row = (n * BP + rows).to(tl.int64) * L * D
        for t in range(0, L):
            tau = t + k - PAD_L
            x_ok = j_ok & (tau >= 0) & (tau < L)
            xT = tl.load(x_ptr + x_off + tau[:, None], mask=x_ok[:, None] & row_ok[None, :],
                         other=0.0)                                              # (BLOCK_CK, BLOCK_ROWS)
            gh = tl.load(gh_ptr + gh_row[:, None] + t * D + cols[None, :],
                         mask=row_ok[:, None] & col_ok[None, :], other=0.0)      # (BLOCK_ROWS, BLOCK_D)
            acc = tl.dot(xT.to(DOT_DTYPE), gh.to(DOT_DTYPE), acc, input_precision=PRECISION)
    tl.store(gw_ptr + (c_lo * K + j).to(tl.int64)[:, None] * D + cols[None, :], acc,
             mask=j_ok[:, None] & col_ok[None, :])


@triton.jit
def _conv_gelu_mean_bwd_x_kernel(
    w_ptr,       # (C, K, D)
    gh_ptr,      # (N, B*P, L, D)
    offs_ptr,    # (N + 1,) int32
    gx_ptr,      # (B, C, T) out, fp32
    BP, C, T, D, P, L,
    K: tl.constexpr, PAD_L: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_r, pid_c, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c_lo = tl.load(offs_ptr + n)
    r_n = tl.load(offs_ptr + n + 1) - c_lo
    # the grid covers the largest network: chunks past this one's end run no iterations
    n_steps = tl.where(pid_c * BLOCK_R < r_n, L, 0)
    rr = pid_c * BLOCK_R + tl.arange(0, BLOCK_R)                     # (BLOCK_R,) ROIs of network n
    r_ok = rr < r_n
    c = c_lo + rr
    rows = pid_r * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < BP
    b, p = rows // P, rows % P
    gh_row = (n * BP + rows).to(tl.int64) * L * D
    dd = tl.arange(0, BLOCK_D)
    for s in range(0, n_steps):
        acc = tl.zeros((BLOCK_ROWS, BLOCK_R), dtype=tl.float32)
        # only taps whose source time t = s - k + PAD_L lies inside the patch contribute
        for k in range(tl.maximum(s + PAD_L - L + 1, 0), tl.minimum(s + PAD_L + 1, K)):
            t = s - k + PAD_L
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + dd
                col_ok = cols < D
                gh = tl.load(gh_ptr + gh_row[:, None] + t * D + cols[None, :],
                             mask=row_ok[:, None] & col_ok[None, :], other=0.0)   # (BLOCK_ROWS, BLOCK_D)
                wT = tl.load(w_ptr + ((c.to(tl.int64) * K + k) * D)[None, :] + cols[:, None],
                             mask=col_ok[:, None] & r_ok[None, :], other=0.0)     # (BLOCK_D, BLOCK_R)
                acc = tl.dot(gh.to(DOT_DTYPE), wT.to(DOT_DTYPE), acc, input_precision=PRECISION)
        x_off = (b.to(tl.int64) * C * T + p * L + s)[:, None] + (c.to(tl.int64) * T)[None, :]
        tl.store(gx_ptr + x_off, acc, mask=row_ok[:, None] & r_ok[None, :])


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ConvBlocks:
    """Tile sizes of the four kernels. The GPU defaults keep every tl.dot dimension >= 16 and were
    chosen so that ptxas (sm_90) reports no register spills for bf16 and tf32 and at most a few
    dozen bytes for fp32-ieee; they are not tuned by measurement yet: `bench/gpu_check.py` times
    the variants of `bench/kernels.py`'s conv_sweep, and `bench/kernels.py --compile-check --sweep`
    prints their registers (BENCHMARKS.md). Tests and the CPU interpreter use larger tiles: there
    the cost is per program and per op."""
    rows: int = 64       # BLOCK_ROWS of the forward: (b, p) rows per program (tl.dot M)
    rows_b: int = 32     # BLOCK_ROWS of the three backward kernels (more live tiles there)
    d: int = 128         # BLOCK_D: output channels per program / per reduction step of grad_x
    ck: int = 32         # BLOCK_CK: (ROI, tap) pairs per reduction step of the forward and of gh
    ck_w: int = 128      # BLOCK_CK of grad_weight: each program re-reads gh once, so this tile is large
    r: int = 32          # BLOCK_R: ROIs per grad_x program
    num_warps: int = 8


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def default_blocks(on_cuda: bool, BP: int, D: int, K: int, max_r: int) -> ConvBlocks:
    """GPU defaults on CUDA; few, large programs under the CPU interpreter."""
    if on_cuda:
        return ConvBlocks()
    ck = _pow2(max_r * K, 16, 2048)                                  # one chunk per network
    rows = _pow2(BP, 16, 128)
    return ConvBlocks(rows=rows, rows_b=rows, d=_pow2(D, 16, 256), ck=ck, ck_w=ck, r=_pow2(max_r, 16, 128),
                      num_warps=4)


def _dot_config(dtype: torch.dtype, device: torch.device):
    """(dtype fed to tl.dot, fp32 tensor-core mode). Half inputs go to tensor cores as they are; fp32
    follows PyTorch's own matmul setting so kernel and reference round alike. The interpreter computes
    in fp32 (it mishandles bf16 arithmetic)."""
    if device.type != "cuda":
        return tl.float32, "ieee"
    if dtype == torch.bfloat16:
        return tl.bfloat16, "ieee"
    if dtype == torch.float16:
        return tl.float16, "ieee"
    return tl.float32, ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")


_TORCH_DTYPE = {tl.float32: torch.float32, tl.bfloat16: torch.bfloat16, tl.float16: torch.float16}


@functools.lru_cache(maxsize=64)
def _offsets_tensor(offsets: tuple, device: str) -> torch.Tensor:
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def _check_inputs(x, weight, bias, offsets, patch_len) -> tuple:
    """Validate the op's arguments (clear ValueErrors) and return offsets as a tuple of ints."""
    if x.ndim != 3:
        raise ValueError(f"x must be (B, C, T'), got shape {tuple(x.shape)}")
    if weight.ndim != 3:
        raise ValueError(f"weight must be (C, K, D), got shape {tuple(weight.shape)}")
    B, C, T = x.shape
    if weight.shape[0] != C:
        raise ValueError(f"weight has {weight.shape[0]} ROI rows but x has {C} ROIs")
    offsets = tuple(int(o) for o in offsets)
    N, D = len(offsets) - 1, weight.shape[2]
    if N < 1 or offsets[0] != 0 or offsets[-1] != C or any(a > b for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"offsets must rise from 0 to C={C} (N+1 entries), got {offsets}")
    if tuple(bias.shape) != (N, D):
        raise ValueError(f"bias must be (N, D) = ({N}, {D}), got {tuple(bias.shape)}")
    if patch_len < 1 or T % patch_len:
        raise ValueError(f"crop length {T} is not a multiple of the patch length {patch_len}")
    if not (x.device == weight.device == bias.device):
        raise ValueError(f"x, weight, bias on different devices: {x.device}, {weight.device}, {bias.device}")
    return offsets


def _launch_meta(x, weight, offsets, patch_len, blocks):
    B, C, T = x.shape
    K, D = weight.shape[1], weight.shape[2]
    N = len(offsets) - 1
    max_r = max(b - a for a, b in zip(offsets, offsets[1:]))
    blocks = blocks or default_blocks(x.is_cuda, B * (T // patch_len), D, K, max_r)
    dot_dtype, precision = _dot_config(x.dtype, x.device)
    common = dict(K=K, PAD_L=(K - 1) // 2, DOT_DTYPE=dot_dtype, PRECISION=precision, num_warps=blocks.num_warps)
    return B, C, T, K, D, N, T // patch_len, max_r, blocks, common


def _forward(x, weight, bias, offs_t, offsets, patch_len, blocks, out_dtype):
    B, C, T, K, D, N, P, _, bl, common = _launch_meta(x, weight, offsets, patch_len, blocks)
    out = torch.empty(B, N, P, D, device=x.device, dtype=out_dtype)
    grid = (triton.cdiv(B * P, bl.rows), triton.cdiv(D, bl.d), N)
    _conv_gelu_mean_fwd_kernel[grid](x, weight, bias, offs_t, out, B * P, C, T, D, N, P, patch_len,
                                     BLOCK_ROWS=bl.rows, BLOCK_D=bl.d, BLOCK_CK=bl.ck, **common)
    return out


def _backward(x, weight, bias, offs_t, offsets, patch_len, blocks, gout, need_x, need_w):
    B, C, T, K, D, N, P, max_r, bl, common = _launch_meta(x, weight, offsets, patch_len, blocks)
    BP, L = B * P, patch_len
    n_row_tiles = triton.cdiv(BP, bl.rows_b)
    gh = torch.empty(N, BP, L, D, device=x.device, dtype=_TORCH_DTYPE[common["DOT_DTYPE"]])
    gbias = torch.empty(N, n_row_tiles, D, device=x.device, dtype=torch.float32)
    _conv_gelu_mean_bwd_gh_kernel[(n_row_tiles, triton.cdiv(D, bl.d), N)](
        x, weight, bias, offs_t, gout.contiguous(), gh, gbias, BP, C, T, D, N, P, L,
        BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_CK=bl.ck, **common)
    gx = gw = None
    if need_w:
        gw = torch.empty(C, K, D, device=x.device, dtype=torch.float32)
        _conv_gelu_mean_bwd_weight_kernel[(triton.cdiv(max_r * K, bl.ck_w), triton.cdiv(D, bl.d), N)](
            x, gh, offs_t, gw, BP, C, T, D, P, L,
            BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_CK=bl.ck_w, **common)
        gw = gw.to(weight.dtype)
    if need_x:
        gx = torch.empty(B, C, T, device=x.device, dtype=torch.float32)
        _conv_gelu_mean_bwd_x_kernel[(n_row_tiles, triton.cdiv(max_r, bl.r), N)](
            weight, gh, offs_t, gx, BP, C, T, D, P, L,
            BLOCK_ROWS=bl.rows_b, BLOCK_D=bl.d, BLOCK_R=bl.r, **common)
        gx = gx.to(x.dtype)
    return gx, gw, gbias.sum(1).to(bias.dtype)


class GroupedConvGeluMean(torch.autograd.Function):
    """Autograd wrapper: saves only x, weight, bias (h is recomputed in the backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, offsets, patch_len, blocks, out_dtype):
        offs_t = _offsets_tensor(offsets, str(x.device))
        ctx.save_for_backward(x, weight, bias)
        ctx.meta = (offsets, patch_len, blocks)
        return _forward(x, weight, bias, offs_t, offsets, patch_len, blocks, out_dtype)

    @staticmethod
    def backward(ctx, gout):
        x, weight, bias = ctx.saved_tensors
        offsets, patch_len, blocks = ctx.meta
        offs_t = _offsets_tensor(offsets, str(x.device))
        gx, gw, gb = _backward(x, weight, bias, offs_t, offsets, patch_len, blocks, gout,
                               ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return gx, gw, (gb if ctx.needs_input_grad[2] else None), None, None, None, None


def grouped_conv_gelu_mean_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                  offsets: tuple, patch_len: int, *, blocks: ConvBlocks = None) -> torch.Tensor:
    """Same contract as `composed.grouped_conv_gelu_mean_reference`, one fused launch (differentiable).
    x (B, C, T'), weight (C, K, D), bias (N, D), offsets N+1 ints -> (B, N, P, D), in the dtype the
    reference returns (x, weight, bias promoted). Under autocast, x and weight go to the tensor cores
    in the autocast dtype (as the reference's matmul would); accumulation and GELU are always fp32.
    `blocks` overrides the tile sizes (tests, tuning)."""
    offsets = _check_inputs(x, weight, bias, offsets, patch_len)
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), bias.dtype)
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    weight = weight.to(x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        return GroupedConvGeluMean.apply(x.contiguous(), weight.contiguous(), bias.contiguous(),
                                         offsets, int(patch_len), blocks, out_dtype)
