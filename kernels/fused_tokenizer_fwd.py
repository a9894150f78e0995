"""The fused tokenizer's forward kernel and its tiles (the math and the op: fused_tokenizer.py).

A program owns (network n, BLOCK_ROWS patches, BLOCK_D columns of ONE branch); for each time t of
the patch it builds the pre-activation tile in registers (the dense 3-tap GEMM, or the depthwise
structured conv fed straight into the pair GEMM), adds GELU(h) to a running sum and writes the
time mean. `_program_tile` and `_preact_fused_t` are shared with the backward's recompute.
"""
import dataclasses
import functools

import torch
import triton
import triton.language as tl

from .tokenizer_conv import _dot_config, _gelu_erf, _preact_t


@triton.jit
def _sg_conv_t(x_ptr, taps_ptr, x_row, row_ok, roi, pair, pair_ok, t, T, L,
               K: tl.constexpr, PAD_L: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """(2) at time t for one tile: s[rows, pairs], each pair's ROI cross-correlated with its K taps.
    x_row (BLOCK_ROWS,) start of each patch at ROI 0; roi, pair (BLOCK_M,) global ROI and pair ids."""
    s = tl.zeros((BLOCK_ROWS, BLOCK_M), dtype=tl.float32)
    x_at = x_ptr + x_row[:, None] + (roi.to(tl.int64) * T + t - PAD_L)[None, :]   # x[row, roi, t - PAD_L]
    taps_at = taps_ptr + pair.to(tl.int64) * K
    ok = row_ok[:, None] & pair_ok[None, :]
    # only taps whose source time t + k - PAD_L lies inside the patch: the loop bounds are the padding
    for k in range(tl.maximum(PAD_L - t, 0), tl.minimum(L + PAD_L - t, K)):
        tap = tl.load(taps_at + k, mask=pair_ok, other=0.0).to(tl.float32)        # (BLOCK_M,)
        s += tl.load(x_at + k, mask=ok, other=0.0).to(tl.float32) * tap[None, :]
    return s


@triton.jit
def _preact_fused_t(x_ptr, wd_ptr, taps_ptr, wl_ptr, x_row, row_ok, cols, col_ok, c_lo, ck_dense,
                    p_lo, n_sg, heads, t, T, L, HALF,
                    K: tl.constexpr, PAD_L: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_CK: tl.constexpr, BLOCK_M: tl.constexpr, DOT_DTYPE: tl.constexpr,
                    PRECISION: tl.constexpr):
    """h_t minus bias, (BLOCK_ROWS, BLOCK_D), of one branch: a dense program has ck_dense = 3*R_n
    and n_sg = 0, a structured one ck_dense = 0 and n_sg = H_n*R_n, so the other loop runs no trips."""
    acc = _preact_t(x_ptr, wd_ptr, x_row, row_ok, cols, col_ok, c_lo, ck_dense, t, T, L, 3, 1,
                    BLOCK_ROWS, BLOCK_D, BLOCK_CK, DOT_DTYPE, PRECISION, HALF)          # (1)
    mm = tl.arange(0, BLOCK_M)
    for m0 in range(0, n_sg, BLOCK_M):
        m = m0 + mm                                                    # (BLOCK_M,) pairs of network n
        m_ok = m < n_sg
        pair = p_lo + m
        s = _sg_conv_t(x_ptr, taps_ptr, x_row, row_ok, c_lo + m // heads, pair, m_ok, t, T, L,
                       K, PAD_L, BLOCK_ROWS, BLOCK_M)                  # (2), (BLOCK_ROWS, BLOCK_M)
        wl = tl.load(wl_ptr + pair.to(tl.int64)[:, None] * HALF + cols[None, :],
                     mask=m_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        acc = tl.dot(s.to(DOT_DTYPE), wl.to(DOT_DTYPE), acc, input_precision=PRECISION)  # (3)
    return acc


@triton.jit
def _patches(r0, r_end, C, T, P, L, BLOCK_ROWS: tl.constexpr):
    """Patches r0.. of a tile (those below r_end are real) and where each starts in x (ROI 0)."""
    rows = r0 + tl.arange(0, BLOCK_ROWS)                               # (BLOCK_ROWS,) = (b, p)
    x_row = (rows // P).to(tl.int64) * C * T + (rows % P) * L          # x[b, 0, p*L]
    return rows, rows < r_end, x_row


@triton.jit
def _program_tile(offs_ptr, poffs_ptr, bd_ptr, bl_ptr, BP, C, T, N, P, L, HALF,
                  BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """What a program of the (row tiles, 2 * column tiles, N) grid owns, for the forward and for
    the backward's recompute: its network, branch (0 dense, 1 structured), patches and columns;
    out_row is where its patches' tokens start in a (B, N, P, 2*HALF) tensor."""
    pid_r, pid_d, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_col_tiles = tl.cdiv(HALF, BLOCK_D)
    branch = pid_d // n_col_tiles
    cols = (pid_d % n_col_tiles) * BLOCK_D + tl.arange(0, BLOCK_D)    # (BLOCK_D,) within the branch
    col_ok = cols < HALF
    c_lo = tl.load(offs_ptr + n)
    n_rois = tl.load(offs_ptr + n + 1) - c_lo
    p_lo = tl.load(poffs_ptr + n)
    n_pairs = tl.load(poffs_ptr + n + 1) - p_lo
    rows, row_ok, x_row = _patches(pid_r * BLOCK_ROWS, BP, C, T, P, L, BLOCK_ROWS)
    out_row = ((rows // P).to(tl.int64) * N + n) * P * (2 * HALF) + (rows % P) * (2 * HALF) + branch * HALF
    # each branch loads its own bias; the other's load is masked off (no column is below 0)
    bias = (tl.load(bd_ptr + n * HALF + cols, mask=cols < tl.where(branch == 0, HALF, 0), other=0.0).to(tl.float32)
            + tl.load(bl_ptr + n * HALF + cols, mask=cols < tl.where(branch == 1, HALF, 0), other=0.0).to(tl.float32))
    ck_dense = tl.where(branch == 0, 3 * n_rois, 0)
    n_sg = tl.where(branch == 1, n_pairs, 0)
    return (n, branch, cols, col_ok, rows, row_ok, x_row, out_row, bias, c_lo, ck_dense, p_lo, n_sg,
            n_pairs // n_rois)


@triton.jit
def _fused_fwd_kernel(
    x_ptr,       # (B, C, T) contiguous, ROIs sorted by network
    wd_ptr,      # (C, 3, HALF) dense_weight, read as (C*3, HALF)
    bd_ptr,      # (N, HALF) dense_bias
    taps_ptr,    # (M, K) sg_taps (cross-correlation, skip in the centre tap)
    wl_ptr,      # (M, HALF) lin_weight
    bl_ptr,      # (N, HALF) lin_bias
    offs_ptr,    # (N + 1,) int32 ROI offsets of the networks
    poffs_ptr,   # (N + 1,) int32 pair offsets of the networks
    out_ptr,     # (B, N, P, 2*HALF) out: dense columns first, then structured
    BP, C, T, HALF, N, P, L,
    K: tl.constexpr, PAD_L: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_CK: tl.constexpr, BLOCK_M: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    (n, branch, cols, col_ok, rows, row_ok, x_row, out_row, bias, c_lo, ck_dense, p_lo, n_sg,
     heads) = _program_tile(offs_ptr, poffs_ptr, bd_ptr, bl_ptr, BP, C, T, N, P, L, HALF, BLOCK_ROWS, BLOCK_D)
    total = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)
    for t in range(0, L):
        h = _preact_fused_t(x_ptr, wd_ptr, taps_ptr, wl_ptr, x_row, row_ok, cols, col_ok, c_lo, ck_dense,
                            p_lo, n_sg, heads, t, T, L, HALF, K, PAD_L, BLOCK_ROWS, BLOCK_D, BLOCK_CK,
                            BLOCK_M, DOT_DTYPE, PRECISION) + bias[None, :]
        total += _gelu_erf(h)
    tl.store(out_ptr + out_row[:, None] + cols[None, :], (total / L).to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FusedBlocks:
    """Tile sizes of the fused forward and backward (powers of two, >= 16: tl.dot's minimum). The
    GPU defaults were chosen so that ptxas (sm_90) reports no spills for bf16 (bench/kernels.py
    --compile-check: m=32 put the forward at 255 registers, m_b=32 spilled in the sg_taps kernel,
    ck_w=128 took the dense weight kernel to 210); they are not tuned by timing yet. The
    interpreter takes one tile per axis."""
    rows: int = 64       # BLOCK_ROWS of the forward: patches per program (tl.dot M)
    rows_b: int = 32     # BLOCK_ROWS of the backward kernels (more live tiles there)
    d: int = 128         # BLOCK_D: columns per program; the sg_taps kernel's reduction step over D/2
    ck: int = 32         # BLOCK_CK: (ROI, tap) pairs per step of the dense GEMM (1)
    m: int = 16          # BLOCK_M: (roi, head) pairs per step of the pair GEMM (3)
    m_b: int = 64        # BLOCK_M of the lin_weight and sg_taps kernels: pairs per program
    ck_w: int = 64       # BLOCK_CK of dense_weight's gradient (tokenizer_conv's weight kernel)
    r: int = 32          # BLOCK_R: ROIs per program of the input gradient (tokenizer_conv's kernel)
    split: int = 1024    # patches per program of the sg_taps kernel (partial sums, then one sum)
    num_warps: int = 8

    def __post_init__(self):
        tiles = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("split", "num_warps")}
        bad = {k: v for k, v in tiles.items() if v < 16 or v & (v - 1)}
        if bad or self.split < 1:
            raise ValueError(f"tiles must be powers of two >= 16 and split >= 1, got {bad or self.split}")


def _pow2(n: int, hi: int) -> int:
    return max(16, min(hi, triton.next_power_of_2(max(int(n), 1))))


def default_blocks(on_cuda: bool, BP: int, half: int, max_rois: int, max_pairs: int) -> FusedBlocks:
    """The GPU defaults on CUDA; under the CPU interpreter (cost per program and per op) one tile
    per axis wherever the shapes allow."""
    if on_cuda:
        return FusedBlocks()
    rows, m = _pow2(BP, 128), _pow2(max_pairs, 1024)
    return FusedBlocks(rows=rows, rows_b=rows, d=_pow2(half, 256), ck=_pow2(3 * max_rois, 1024), m=m, m_b=m,
                       ck_w=_pow2(3 * max_rois, 1024), r=_pow2(max_rois, 128), split=BP, num_warps=4)


@functools.lru_cache(maxsize=64)
def offsets_tensor(offsets: tuple, device: str) -> torch.Tensor:
    return torch.tensor(offsets, dtype=torch.int32, device=device)



def launch_meta(x, offsets, pairs, patch_len, half, K, blocks):
    """Shapes, tiles and the constexprs every kernel of the op shares."""
    B, C, T = x.shape
    max_rois = max(b - a for a, b in zip(offsets, offsets[1:]))
    max_pairs = max(b - a for a, b in zip(pairs, pairs[1:]))
    P, N = T // patch_len, len(offsets) - 1
    bl = blocks or default_blocks(x.is_cuda, B * P, half, max_rois, max_pairs)
    dot_dtype, precision = _dot_config(x.dtype, x.device)
    common = dict(DOT_DTYPE=dot_dtype, PRECISION=precision, num_warps=bl.num_warps)
    return dict(B=B, C=C, T=T, P=P, L=patch_len, BP=B * P, N=N, K=K, half=half, max_rois=max_rois,
                max_pairs=max_pairs, blocks=bl, common=common,
                ints=(B * P, C, T, half, N, P, patch_len))       # (BP, C, T, HALF, N, P, L) of the kernels


def forward(x, wd, bd, taps, wl, lb, offsets, pairs, patch_len, blocks, out_dtype):
    """Launch the forward kernel -> (B, N, P, 2*HALF) in out_dtype."""
    mt = launch_meta(x, offsets, pairs, patch_len, wl.shape[1], taps.shape[1], blocks)
    bl, half, N = mt["blocks"], mt["half"], mt["N"]
    out = torch.empty(mt["B"], N, mt["P"], 2 * half, device=x.device, dtype=out_dtype)
    grid = (triton.cdiv(mt["BP"], bl.rows), 2 * triton.cdiv(half, bl.d), N)
    _fused_fwd_kernel[grid](x, wd, bd, taps, wl, lb, offsets_tensor(offsets, str(x.device)),
                            offsets_tensor(pairs, str(x.device)), out, *mt["ints"], K=mt["K"],
                            PAD_L=(mt["K"] - 1) // 2, BLOCK_ROWS=bl.rows, BLOCK_D=bl.d, BLOCK_CK=bl.ck,
                            BLOCK_M=bl.m, **mt["common"])
    return out
