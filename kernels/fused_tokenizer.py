"""The tokenizer in factored form, fused in Triton: both branches, GELU and the time mean.

This file: the math and its cost, the op and its autograd.Function. The forward kernel and the
tiles are in fused_tokenizer_fwd.py, the backward's kernels in fused_tokenizer_bwd.py.

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
import functools

import torch

from .fused_tokenizer_bwd import backward
from .fused_tokenizer_fwd import FusedBlocks, forward


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



class FusedTokenizer(torch.autograd.Function):
    """Saves only the inputs: h is recomputed by the backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, dense_weight, dense_bias, sg_taps, lin_weight, lin_bias, meta):
        ctx.save_for_backward(x, dense_weight, dense_bias, sg_taps, lin_weight, lin_bias)
        ctx.meta = meta                          # (offsets, pair_offsets, patch_len, blocks, out_dtype)
        return forward(x, dense_weight, dense_bias, sg_taps, lin_weight, lin_bias, *meta)

    @staticmethod
    def backward(ctx, gout):
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
