"""The semantic tokenizer's hot path: N ragged per-network convolutions, GELU, time mean.

Math (SPEC §3). ROIs are sorted so that network n owns rows offsets[n]:offsets[n+1] of x. Both
tokenizer branches are linear in x before the GELU, so each network's tokenizer is one conv with
K (= 16) taps from its R_n ROIs to D channels. Over the L time points of each patch p, with zero
padding of (K-1)//2 on the left and K//2 on the right *inside the patch* (patches never see each
other):

    h[b, n, p, t, o] = bias[n, o] + sum_{c in net n} sum_k weight[c, k, o] * x[b, c, p*L + t + k - (K-1)//2]
    out[b, n, p, o]  = mean_t GELU(h[b, n, p, t, o])                       (exact, erf GELU)

`weight` stacks every network's (R_n, K, D) block along the ROI axis, so it is (C, K, D) with no
padding; the block-diagonal structure is carried by `offsets` alone.
"""
import torch
import torch.nn.functional as F


def grouped_conv_gelu_mean_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                     offsets: tuple, patch_len: int) -> torch.Tensor:
    """Plain-PyTorch ground truth. x (B, C, T'), weight (C, K, D), bias (N, D) -> (B, N, P, D)."""
    B, C, T = x.shape
    K, D = weight.shape[1], weight.shape[2]
    L = patch_len
    P = T // L
    xp = F.pad(x.reshape(B, C, P, L), ((K - 1) // 2, K // 2))       # (B, C, P, L+K-1)
    win = xp.unfold(-1, K, 1).permute(0, 2, 3, 1, 4)               # (B, P, L, C, K)
    outs = []
    for n in range(len(offsets) - 1):
        a, b = offsets[n], offsets[n + 1]
        h = win[:, :, :, a:b, :].reshape(B * P * L, (b - a) * K) @ weight[a:b].reshape((b - a) * K, D)
        outs.append(F.gelu(h + bias[n]).reshape(B, P, L, D).mean(2))  # (B, P, D)
    return torch.stack(outs, 1)                                     # (B, N, P, D)
