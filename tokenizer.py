"""The semantic tokenizer (SPEC §3): one small conv tokenizer per functional network.

A crop x (B, C, T') is cut into P patches of L time points. Network n (R_n ROIs) has its own
tokenizer g_n, applied to every patch: a dense branch Conv1d(R_n -> D/2, k=3, 'same') and an
SGConv-style structured branch (H_n = ceil((D/2)/R_n) multi-scale 16-tap kernels per ROI, true
depthwise convolution, skip D, Linear(H_n*R_n -> D/2)); concat -> GELU -> mean over L ->
LayerNorm(D). Output Z (B, N, P, D): 457 ROIs become N*P = 45 tokens.

Why it is fast: before the GELU everything is linear in x, so each g_n is ONE conv R_n -> D with
K = 16 taps. Every forward composes these effective weights for all networks (differentiably, so
gradients reach the original parameters), stacks them as (C, K, D) with ROIs sorted by network,
and runs all N ragged convs + GELU + time mean in one call, `kernels.grouped_conv_gelu_mean`
(Triton on GPU, PyTorch reference otherwise).

Parameter storage (flat, ROIs in network-sorted order; "pair" j = (network n, roi r, head h) with
j = pair_offsets[n] + r*H_n + h, i.e. the SPEC's (roi, head) channel order):
    dense_weight (C, 3, D/2)   = per-network Conv1d weight (D/2, R_n, 3), permuted
    dense_bias   (N, D/2)
    sg_kernel    (S, M, 4)     = per-network scale tensors (H_n, R_n, 4), M = sum_n H_n*R_n
    sg_skip      (M,)          = per-network skip D (H_n, R_n)
    lin_weight   (M, D/2)      = per-network Linear weight (D/2, H_n*R_n), transposed
    lin_bias     (N, D/2)
    norm_weight, norm_bias (N, D)  per-network LayerNorm
    buffer sg_norm (M, 1): L2 norm of each initial multi-scale kernel over taps (SGConv measures
    it at the first forward; parameters are untouched until then, so construction time is the same).

    python -m pytest -q tests/test_tokenizer.py
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from networks import validate_network_map


class SemanticTokenizer(nn.Module):

    def __init__(self, network_map, dim=768, patch_len=20, n_scales=3):
        super().__init__()
        if isinstance(network_map, torch.Tensor):
            network_map = network_map.cpu().numpy()
        m = validate_network_map(network_map)
        if dim < 2 or dim % 2:
            raise ValueError(f"tokenizer width dim must be even (two branches of dim/2), got {dim}")
        if patch_len < 1 or n_scales < 1:
            raise ValueError(f"patch_len and n_scales must be >= 1, got {patch_len}, {n_scales}")
        self.dim, self.patch_len, self.n_scales = dim, patch_len, n_scales
        self.n_rois, self.n_networks = m.size, int(m.max()) + 1
        self.n_taps = 4 * 2 ** (n_scales - 1)  # scale lengths 4, 4, 8, 16, ... -> 16 for S=3
        half = dim // 2
        counts = np.bincount(m).tolist()                                 # R_n
        self.heads = tuple(math.ceil(half / r) for r in counts)         # H_n
        self.offsets = tuple(np.concatenate([[0], np.cumsum(counts)]).tolist())
        pairs = [h * r for h, r in zip(self.heads, counts)]              # H_n * R_n (roi, head) pairs
        self.pair_offsets = tuple(np.concatenate([[0], np.cumsum(pairs)]).tolist())
        M, C, N = self.pair_offsets[-1], self.n_rois, self.n_networks
        self.register_buffer("network_map", torch.from_numpy(m), persistent=False)
        self.register_buffer("perm", torch.from_numpy(np.argsort(m, kind="stable")), persistent=False)

        self.dense_weight = nn.Parameter(torch.empty(C, 3, half))
        self.dense_bias = nn.Parameter(torch.empty(N, half))
        self.sg_kernel = nn.Parameter(torch.randn(n_scales, M, 4))
        self.sg_skip = nn.Parameter(torch.randn(M))
        self.lin_weight = nn.Parameter(nn.init.trunc_normal_(torch.empty(M, half), std=0.02))
        self.lin_bias = nn.Parameter(torch.zeros(N, half))
        self.norm_weight = nn.Parameter(torch.ones(N, dim))
        self.norm_bias = nn.Parameter(torch.zeros(N, dim))
        with torch.no_grad():
            for n, r in enumerate(counts):  # nn.Conv1d's default init, fan_in = R_n * 3
                bound = 1 / math.sqrt(3 * r)
                self.dense_weight[self.offsets[n]:self.offsets[n + 1]].uniform_(-bound, bound)
                self.dense_bias[n].uniform_(-bound, bound)
            self.register_buffer("sg_norm", self._sg_kernel_raw().norm(dim=-1, keepdim=True))

    def _sg_kernel_raw(self):
        """Multi-scale SGConv kernel before normalisation: scale i nearest-upsampled by
        2^max(0, i-1) and weighted by 2^(S-i-1), concatenated over taps -> (M, K)."""
        S = self.n_scales
        parts = [self.sg_kernel[i].repeat_interleave(2 ** max(0, i - 1), dim=-1) * 2 ** (S - i - 1)
                 for i in range(S)]
        return torch.cat(parts, -1)                                      # (M, K)

    def effective_weights(self):
        """Compose every network's one-conv form: weight (C, K, D) for cross-correlation with zero
        padding (K-1)//2 left / K//2 right, and bias (N, D); channels [:D/2] dense, [D/2:] structured."""
        K, c, half = self.n_taps, (self.n_taps - 1) // 2, self.dim // 2
        # the SG branch is a true convolution: as cross-correlation its taps are flipped
        k = (self._sg_kernel_raw() / self.sg_norm).flip(-1)             # (M, K)
        centre = torch.zeros(K, dtype=k.dtype, device=k.device)
        centre[c] = 1.0
        k = k + self.sg_skip[:, None] * centre                          # skip D = a centre-tap weight
        # W_eff[r, k, o] = sum_h K[(r,h), k] * Lin[(r,h), o]; H_n differs per network, so one
        # matmul per network (padding all to max H_n would cost ~7x the memory at paper shapes)
        w_sg = []
        for n in range(self.n_networks):
            a, b = self.pair_offsets[n], self.pair_offsets[n + 1]
            R, H = self.offsets[n + 1] - self.offsets[n], self.heads[n]
            w_sg.append(torch.bmm(k[a:b].view(R, H, K).transpose(1, 2),  # (R, K, H)
                                  self.lin_weight[a:b].view(R, H, half)))  # (R, H, D/2)
        w_sg = torch.cat(w_sg)                                          # (C, K, D/2)
        # 'same' 3-tap conv: its taps are offsets -1, 0, +1 = positions c-1, c, c+1 of K
        w_dense = F.pad(self.dense_weight, (0, 0, c - 1, K - c - 2))    # (C, K, D/2)
        weight = torch.cat([w_dense, w_sg], -1)                         # (C, K, D)
        bias = torch.cat([self.dense_bias, self.lin_bias], -1)          # (N, D)
        return weight, bias

    def forward(self, x):
        """x (B, C, T') in the data's ROI order -> Z (B, N, P, D)."""
        if x.ndim != 3:
            raise ValueError(f"tokenizer input must be (B, C, T') = (batch, ROIs, time), got shape {tuple(x.shape)}")
        B, C, T = x.shape
        if C != self.n_rois:
            raise ValueError(f"input has {C} ROIs but the network map has {self.n_rois} entries")
        if T == 0 or T % self.patch_len:
            raise ValueError(f"crop length T'={T} is not a positive multiple of the patch length L={self.patch_len}")
        with torch.autocast(x.device.type, enabled=False):  # compose in full precision; the conv picks its own
            weight, bias = self.effective_weights()
        xs = x.index_select(1, self.perm)                               # (B, C, T') networks contiguous
        z = kernels.grouped_conv_gelu_mean(xs, weight.to(x.dtype), bias.to(x.dtype),
                                           self.offsets, self.patch_len)  # (B, N, P, D)
        z = F.layer_norm(z, (self.dim,))
        return z * self.norm_weight[:, None] + self.norm_bias[:, None]  # (B, N, P, D)
