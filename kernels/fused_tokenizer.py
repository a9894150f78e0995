"""The tokenizer in factored form, fused in Triton: both branches, GELU and the time mean.

This file: the math and its cost, the forward kernel, the op and its autograd.Function. The
backward's kernels are in fused_tokenizer_bwd.py.

Math (SPEC §3, in the linear form of kernels.TokenizerWeights). Patches are independent, so write
x[row, c, tau] for ROI c at time tau of patch row = (b, p), zero outside 0 <= tau < L. Network n owns
ROIs c_lo..c_lo+R_n-1 and (roi, head) pairs j = p_lo + r*H_n + h, H_n = ceil((D/2)/R_n). At each
time t of the patch, with c = (K-1)//2 the centre tap:

    dense[row, t, o] = bd[n, o] + sum_{r, i=0..2} Wd[c_lo+r, i, o] * x[row, c_lo+r, t+i-1]        (1)
    s[row, t, j]     =            sum_{k=0..K-1}  taps[j, k]      * x[row, roi(j), t+k-c]         (2)
    sg[row, t, o]    = bl[n, o] + sum_j           Wl[j, o]        * s[row, t, j]                  (3)
    out[b, n, p, :]  = mean_t GELU([dense | sg][row, t, :])                    (erf GELU, D = 2*D/2)

(1) is a 3-tap conv, a GEMM over (ROI, tap); (2) the depthwise structured conv (skip D folded into
the centre tap); (3) a GEMM over the H_n*R_n pairs. The composed form (composed.py, the kernel of
tokenizer_conv.py) multiplies (2) into (3) once and runs one 16-tap conv R_n -> D instead: fewer
steps, 2.8x the multiply-adds.

The kernel. A program owns (network n, BLOCK_ROWS patches, BLOCK_D columns of ONE branch): the grid
is (row tiles, 2 * cdiv(D/2, BLOCK_D), N), the first half of its second axis dense, the second
structured. It loops over t = 0..L-1 and, for each t, builds the pre-activation tile in registers:
a dense program runs (1) as tl.dot over (ROI, tap) chunks (tokenizer_conv._preact_t with 3 taps); a
structured program computes s for BLOCK_M pairs at a time with K multiply-adds per element
(CUDA cores, fp32) and feeds it straight into tl.dot with those pairs' rows of Wl. GELU(h) is added
to a running sum: neither s, nor h, nor GELU(h) ever reaches memory. The depthwise conv (2) is
recomputed by each of the cdiv(D/2, BLOCK_D) structured column tiles of a row tile (3 at the GPU
tiles): 3 x 1.9 MFLOP per patch, cheap next to the GEMMs, and it keeps one accumulator per program.

Work per patch (one (b, p), all nine networks) at the paper's shapes: C = 457 ROIs in networks of
61, 77, 46, 47, 26, 52, 91, 50, 7; D = 768; L = 20; K = 16; P = 5; H_n = 7, 5, 9, 9, 15, 8, 5, 8, 55,
so M = sum_n H_n*R_n = 3695 pairs; a tap counts where its source time lies in the patch (12.8 of 16
on average). MFLOP (multiply-add = 2); bytes in bf16 at the bench's B = 1024 crops (B*P = 5120
patches), compulsory HBM traffic (weights, 4.0 MB, are read from L2 after the first touch):

    op                                      fused            composed conv     factored (PyTorch)
    forward
      dense 3-tap GEMM (1)                  21.1             -                 21.1
      depthwise conv (2)                    1.9 (x3 tiles)   -                 5.2 (Toeplitz bmm)
      pair GEMM (3)                         56.8             -                 56.8
      16-tap conv R_n -> D                  -                224.6             -
      total                                 83.5             224.6             83.0
      HBM: x read 94 MB, out written 71 MB (every path); factored also saves activations for
      its backward: pre-activations N*L*D, pair values M*L, dense inputs 3*C*L = 240 k values per
      patch, 2.5 GB
    backward, weights only (x is data in training)
      recompute h, GELU', write gh          83.5             224.6             -
      dense_weight: x^T gh                  21.1             -                 21.1
      lin_weight: s^T gh (s recomputed)     56.8 + 1.9 x3    -                 56.8
      sg_taps: gs = gh Wl^T, then x * gs    56.8 + 1.9       -                 56.8 + 5.2
      composed weight: x^T gh               -                224.6             -
      total                                 225.6            449.2             ~140
      HBM: gh (2, N, B*P, L, D/2) bf16: 1.42 GB written, read by three kernels (>= 2.1 GB)
    input gradient, extra (when asked)      133.4            224.6             26.2

gh dominates the backward's bytes (276 KB per patch; x is 18 KB). Saving h in the forward instead
of recomputing it would move as many bytes again (written there, read back) to save one forward's
FLOPs (83.5 of 225.6). The factored path's input gradient is cheap because its gs is already made
for sg_taps; here it runs on the composed weight (fused_tokenizer_bwd.py says why).

Saved for the backward: the inputs only (x and the five weights). The backward
(fused_tokenizer_bwd.py) recomputes h tile by tile, as this forward computes it, to write gh.

    python -m pytest -q tests/test_fused_tokenizer.py   # parity with the paper form (CPU interpreter)
    python bench/kernels.py --only tokenizer            # fused vs factored vs composed on a GPU
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


def _check_inputs(x, w) -> tuple:
    """Validate the op's arguments (clear ValueErrors) -> (offsets, pair_offsets) as int tuples."""
    if x.ndim != 3:
        raise ValueError(f"x must be (B, C, T'), got shape {tuple(x.shape)}")
    B, C, T = x.shape
    offsets, pairs = tuple(int(o) for o in w.offsets), tuple(int(o) for o in w.pair_offsets)
    N, M, half = len(offsets) - 1, pairs[-1], w.lin_weight.shape[-1]
    rois, n_pairs = [b - a for a, b in zip(offsets, offsets[1:])], [b - a for a, b in zip(pairs, pairs[1:])]
    if N < 1 or offsets[0] != 0 or offsets[-1] != C or min(rois) < 1:
        raise ValueError(f"offsets must rise strictly from 0 to C={C}, got {offsets}")
    if len(pairs) != N + 1 or pairs[0] != 0 or any(p < r or p % r for p, r in zip(n_pairs, rois)):
        raise ValueError(f"pair_offsets must give each network a positive multiple of its ROIs, got {pairs}")
    if w.sg_taps.ndim != 2 or w.sg_taps.shape[0] != M:
        raise ValueError(f"sg_taps must be (M={M}, K), got {tuple(w.sg_taps.shape)}")
    want = dict(dense_weight=(C, 3, half), dense_bias=(N, half), lin_weight=(M, half), lin_bias=(N, half))
    for name, shape in want.items():
        if tuple(getattr(w, name).shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(getattr(w, name).shape)}")
    if w.patch_len < 1 or T % w.patch_len:
        raise ValueError(f"crop length {T} is not a multiple of the patch length {w.patch_len}")
    if len({t.device for t in (x, *w[:5])}) != 1:
        raise ValueError("x and the tokenizer weights are on different devices")
    return offsets, pairs


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


def _forward(x, wd, bd, taps, wl, lb, offsets, pairs, patch_len, blocks, out_dtype):
    mt = launch_meta(x, offsets, pairs, patch_len, wl.shape[1], taps.shape[1], blocks)
    bl, half, N = mt["blocks"], mt["half"], mt["N"]
    out = torch.empty(mt["B"], N, mt["P"], 2 * half, device=x.device, dtype=out_dtype)
    grid = (triton.cdiv(mt["BP"], bl.rows), 2 * triton.cdiv(half, bl.d), N)
    _fused_fwd_kernel[grid](x, wd, bd, taps, wl, lb, offsets_tensor(offsets, str(x.device)),
                            offsets_tensor(pairs, str(x.device)), out, *mt["ints"], K=mt["K"],
                            PAD_L=(mt["K"] - 1) // 2, BLOCK_ROWS=bl.rows, BLOCK_D=bl.d, BLOCK_CK=bl.ck,
                            BLOCK_M=bl.m, **mt["common"])
    return out


class FusedTokenizer(torch.autograd.Function):
    """Saves only the inputs: h is recomputed by the backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, dense_weight, dense_bias, sg_taps, lin_weight, lin_bias, meta):
        ctx.save_for_backward(x, dense_weight, dense_bias, sg_taps, lin_weight, lin_bias)
        ctx.meta = meta                          # (offsets, pair_offsets, patch_len, blocks, out_dtype)
        return _forward(x, dense_weight, dense_bias, sg_taps, lin_weight, lin_bias, *meta)

    @staticmethod
    def backward(ctx, gout):
        from .fused_tokenizer_bwd import backward   # here: that module builds on this one's helpers
        offsets, pairs, patch_len, blocks, _ = ctx.meta
        grads = backward(*ctx.saved_tensors, offsets, pairs, patch_len, blocks, gout, ctx.needs_input_grad[:6])
        return (*grads, None)


def fused_tokenizer_triton(x: torch.Tensor, w, *, blocks: FusedBlocks = None) -> torch.Tensor:
    """The tokenizer op (SPEC §3 up to the LayerNorm) in the fused factored form, differentiable in
    x and the five weights. x (B, C, T') with ROIs sorted by network, w a kernels.TokenizerWeights
    -> (B, N, P, D). Output dtype: the inputs' promoted dtype; under autocast x and every weight go
    to the autocast dtype first (so does the output, as the factored path's matmuls give it).
    Accumulation, the depthwise conv and GELU are fp32. `blocks` overrides the tiles."""
    offsets, pairs = _check_inputs(x, w)
    tensors = (x, *w[:5])
    if torch.is_autocast_enabled(x.device.type):
        dt = torch.get_autocast_dtype(x.device.type)
        tensors = tuple(t.to(dt) for t in tensors)
    out_dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    with torch.autocast(x.device.type, enabled=False):
        return FusedTokenizer.apply(*(t.to(tensors[0].dtype).contiguous() for t in tensors),
                                    (offsets, pairs, int(w.patch_len), blocks, out_dtype))
