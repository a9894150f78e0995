"""The tokenizer with both branches in factored form, as GEMMs over all time points (PyTorch; the CPU path).

Same numbers as tokenizer.py's paper form (SPEC §3), fewer FLOPs than the composed conv
(composed.py), which wastes most of its work on a CPU: the dense half uses 3 of its 16 taps, and the
structured half has rank M < C*K. Per time point of a crop at paper shapes (C = 457 ROIs, K = 16
taps, D = 768, M = sum_n H_n*R_n = 3695 (roi, head) pairs):

    dense 3-tap conv        2*C*3*(D/2)  = 1.1 MFLOP
    depthwise SG conv       2*M*(L+K-1)  = 0.3 MFLOP   (as a Toeplitz matmul)
    Linear over channels    2*M*(D/2)    = 2.8 MFLOP

4.2 MFLOP in all, 2.7x fewer forward (and ~1.6x fewer backward) than the composed conv's 11.2.

Every activation is laid out (channels, L*B*P) with columns ordered (t, b, p), so each branch of
each network is one GEMM with a column per time point, and the time mean is a sum over the middle
axis.

    python -m pytest -q tests/test_tokenizer.py   # parity with tokenizer.py's paper form
"""
import torch
import torch.nn.functional as F


def factored_conv_gelu_mean(xs: torch.Tensor, w) -> torch.Tensor:
    """xs (B, C, T') with ROIs sorted by network, w a kernels.TokenizerWeights -> (B, N, P, D)."""
    B, C, T = xs.shape
    if torch.amp.is_autocast_available(xs.device.type) and torch.is_autocast_enabled(xs.device.type):
        # every GEMM below would cast its copy of x (the 3-tap stack is 3x its size): cast once, first,
        # and pad, permute and stack in half the bytes. The same numbers: those only move values
        xs = xs.to(torch.get_autocast_dtype(xs.device.type))
    L, (K, half), N = w.patch_len, (w.sg_taps.shape[1], w.lin_weight.shape[1]), len(w.offsets) - 1
    P, c, W = T // L, (K - 1) // 2, L + K - 1                       # W: padded patch length
    xpad = F.pad(xs.view(B, C, P, L), (c, K - 1 - c))               # (B, C, P, W) zero pad inside patches
    xpad = xpad.permute(1, 3, 0, 2).reshape(C, W, B * P)            # (C, W, BP)
    # dense 'same' 3-tap conv: taps -1, 0, +1 sit at padded positions c-1, c, c+1
    xd = torch.stack([xpad[:, c + j:c + j + L] for j in (-1, 0, 1)], 1)  # (C, 3, L, BP)
    xd = xd.view(3 * C, L * B * P)                                  # rows (roi, tap)
    # depthwise SG conv as a matmul with Toeplitz rows toe[m, t, t:t+K] = taps[m]: row t of the
    # zero-padded taps tiled L times and cut to rows of length W is the taps shifted by t
    toe = F.pad(w.sg_taps, (0, L)).repeat(1, L)[:, :L * W]          # (M, L*W)
    toe = toe.reshape(-1, W)                                        # (M*L, W) rows ((roi, head), t), a copy
    rois = [w.offsets[n + 1] - w.offsets[n] for n in range(N)]                 # R_n
    pairs = [w.pair_offsets[n + 1] - w.pair_offsets[n] for n in range(N)]      # H_n*R_n
    # split/unbind rather than slicing: their backward is one cat/stack, where every slice
    # would allocate and zero a full-size gradient
    z = []
    for R, x_n, xd_n, wd, bd, toe_n, wl, bl in zip(
            rois, xpad.split(rois), xd.split([3 * r for r in rois]),
            w.dense_weight.split(rois), w.dense_bias.unbind(),
            toe.split([p * L for p in pairs]), w.lin_weight.split(pairs), w.lin_bias.unbind()):
        dense = torch.addmm(bd[:, None], wd.view(3 * R, half).T, xd_n)  # (D/2, L*BP)
        sg = torch.bmm(toe_n.view(R, -1, W), x_n)                    # (R, H*L, BP)
        sg = torch.addmm(bl[:, None], wl.T, sg.view(wl.shape[0], -1))  # (D/2, L*BP)
        z += [F.gelu(h).view(half, L, B * P).sum(1) for h in (dense, sg)]  # (D/2, BP) each
    # divide by L after the sum: mean's backward would write a full-size (D/2, L*BP) gradient
    z = torch.stack(z).view(N, 2 * half, B, P) / L                  # (N, D, B, P)
    return z.permute(2, 0, 3, 1)                                    # (B, N, P, D)
