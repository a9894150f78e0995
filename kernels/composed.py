"""The tokenizer as one ragged convolution per network (PyTorch): the reference of the Triton kernel.

Math (SPEC §3, "useful fact for kernels"). Both tokenizer branches are linear in x before the
GELU, so each network's tokenizer g_n is ONE conv with K (= 16) taps from its R_n ROIs to D
channels: the dense 3-tap conv fills 3 of the 16 taps of channels [:D/2], and the structured
branch's effective weight is W_eff[r, k, o] = sum_h taps[(r, h), k] * Lin[(r, h), o] for channels
[D/2:] (skip folded into the centre tap). `compose_weights` builds these weights for all networks,
differentiably, so gradients reach the tokenizer's own parameters.

With ROIs sorted so that network n owns rows offsets[n]:offsets[n+1] of x, over the L time points
of each patch p, with zero padding of (K-1)//2 on the left and K//2 on the right *inside the patch*
(patches never see each other):

    h[b, n, p, t, o] = bias[n, o] + sum_{c in net n} sum_k weight[c, k, o] * x[b, c, p*L + t + k - (K-1)//2]
    out[b, n, p, o]  = mean_t GELU(h[b, n, p, t, o])                       (exact, erf GELU)

`weight` stacks every network's (R_n, K, D) block along the ROI axis, so it is (C, K, D) with no
padding; the block-diagonal structure is carried by `offsets` alone. Dense FLOPs suit tensor cores:
2*C*K*D = 11.2 MFLOP per time point at paper shapes (C = 457, K = 16, D = 768); on a CPU the
factored form (factored.py) does the same work in 2.7x fewer FLOPs.

    python -m pytest -q tests/test_tokenizer.py   # parity with tokenizer.py's paper form
"""
import torch
import torch.nn.functional as F


def compose_structured(sg_taps: torch.Tensor, lin_weight: torch.Tensor, offsets: tuple,
                       pair_offsets: tuple) -> torch.Tensor:
    """The structured branch's effective conv weight W_eff (C, K, D/2) from its taps (M, K) and
    Linear (M, D/2). Also the weight of fused_tokenizer_bwd's input gradient."""
    K, half = sg_taps.shape[1], lin_weight.shape[1]
    # H_n differs per network, so one matmul per network (padding all to max H_n would cost ~7x
    # the memory at paper shapes)
    w_sg = []
    for n in range(len(offsets) - 1):
        a, b = pair_offsets[n], pair_offsets[n + 1]
        R = offsets[n + 1] - offsets[n]
        H = (b - a) // R
        w_sg.append(torch.bmm(sg_taps[a:b].view(R, H, K).transpose(1, 2),        # (R, K, H)
                              lin_weight[a:b].view(R, H, half)))                 # (R, H, D/2)
    return torch.cat(w_sg)                                                       # (C, K, D/2)


def compose_weights(w) -> tuple:
    """kernels.TokenizerWeights -> every network's one-conv form: weight (C, K, D) for
    cross-correlation with zero padding (K-1)//2 left / K//2 right, and bias (N, D)."""
    K = w.sg_taps.shape[1]
    c = (K - 1) // 2
    w_sg = compose_structured(w.sg_taps, w.lin_weight, w.offsets, w.pair_offsets)  # (C, K, D/2)
    # 'same' 3-tap conv: its taps are offsets -1, 0, +1 = positions c-1, c, c+1 of K
    w_dense = F.pad(w.dense_weight, (0, 0, c - 1, K - c - 2))                    # (C, K, D/2)
    weight = torch.cat([w_dense, w_sg], -1)                                      # (C, K, D)
    bias = torch.cat([w.dense_bias, w.lin_bias], -1)                             # (N, D)
    return weight, bias


def grouped_conv_gelu_mean_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                     offsets: tuple, patch_len: int) -> torch.Tensor:
    """The ragged conv + GELU + time mean in plain PyTorch (ground truth of the Triton kernel).
    x (B, C, T'), weight (C, K, D), bias (N, D) -> (B, N, P, D)."""
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
