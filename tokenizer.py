"""The semantic tokenizer (SPEC §3): one small conv tokenizer per functional network.

A crop x (B, C, T') is cut into P patches of L time points. Network n (R_n ROIs) has its own
tokenizer g_n, applied to every patch: a dense branch Conv1d(R_n -> D/2, k=3, 'same') and an
SGConv-style structured branch (H_n = ceil((D/2)/R_n) multi-scale 16-tap kernels per ROI, true
depthwise convolution, skip D, Linear(H_n*R_n -> D/2)); concat -> GELU -> mean over L ->
LayerNorm(D). Output Z (B, N, P, D): 457 ROIs become N*P = 45 tokens.

Two ways to evaluate it, picked by `kernels.use_triton(x)` (numbers per time point of a crop at
paper shapes, C = 457 ROIs, K = 16 taps, D = 768, M = sum_n H_n*R_n = 3695 (roi, head) pairs):

- Triton (GPU): before the GELU everything is linear in x, so each g_n is ONE conv R_n -> D with
  K taps. Every forward composes these effective weights for all networks (differentiably, so
  gradients reach the original parameters), stacks them as (C, K, D) with ROIs sorted by network,
  and runs all N ragged convs + GELU + time mean fused in one kernel,
  `kernels.grouped_conv_gelu_mean`. Dense FLOPs suit tensor cores: 2*C*K*D = 11.2 MFLOP.
- PyTorch (CPU, --no-kernels): the composed conv wastes most of those FLOPs (the dense half uses
  3 of its 16 taps; the structured half has rank M < C*K), so the branches run in their factored
  form, as GEMMs over all time points: dense 2*C*3*(D/2) = 1.1 MFLOP, depthwise SG conv
  2*M*(L+K-1) = 0.3 MFLOP (as a Toeplitz matmul), Linear 2*M*(D/2) = 2.8 MFLOP; 4.2 MFLOP in
  all, 2.7x fewer forward (and ~1.6x fewer backward) than the composed conv. Both paths agree
  with a literal per-network SPEC §3 tokenizer (tests/test_tokenizer.py).

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

    def __init__(self, network_map, dim=768, patch_len=20, n_scales=3, init="authors"):
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
        self.lin_weight = nn.Parameter(torch.empty(M, half))
        self.lin_bias = nn.Parameter(torch.zeros(N, half))
        self.norm_weight = nn.Parameter(torch.ones(N, dim))
        self.norm_bias = nn.Parameter(torch.zeros(N, dim))
        with torch.no_grad():
            for n, r in enumerate(counts):  # nn.Conv1d's default init, fan_in = R_n * 3
                bound = 1 / math.sqrt(3 * r)
                self.dense_weight[self.offsets[n]:self.offsets[n + 1]].uniform_(-bound, bound)
                self.dense_bias[n].uniform_(-bound, bound)
            lin = self.lin_weight.split(pairs)
            for n, p in enumerate(pairs):
                if init == "authors":  # nn.Linear's default init, fan_in = H_n * R_n, as the published run
                    bound = 1 / math.sqrt(p)
                    lin[n].uniform_(-bound, bound)
                    self.lin_bias[n].uniform_(-bound, bound)
                else:                  # "dino": trunc-normal(0.02), zero bias
                    nn.init.trunc_normal_(lin[n], std=0.02)
            self.register_buffer("sg_norm", self._sg_kernel_raw().norm(dim=-1, keepdim=True))

    def _sg_kernel_raw(self):
        """Multi-scale SGConv kernel before normalisation: scale i nearest-upsampled by
        2^max(0, i-1) and weighted by 2^(S-i-1), concatenated over taps -> (M, K)."""
        S = self.n_scales
        parts = [self.sg_kernel[i].repeat_interleave(2 ** max(0, i - 1), dim=-1) * 2 ** (S - i - 1)
                 for i in range(S)]
        return torch.cat(parts, -1)                                      # (M, K)

    def _sg_taps(self):
        """The structured branch of each (roi, head) pair as cross-correlation taps (M, K), for zero
        padding (K-1)//2 left / K//2 right: the normalised kernel flipped (SGConv is a true
        convolution), plus the skip D as a centre-tap weight."""
        K, c = self.n_taps, (self.n_taps - 1) // 2
        k = (self._sg_kernel_raw() / self.sg_norm).flip(-1)             # (M, K)
        centre = torch.zeros(K, dtype=k.dtype, device=k.device)
        centre[c] = 1.0
        return k + self.sg_skip[:, None] * centre                       # (M, K)

    def effective_weights(self):
        """Compose every network's one-conv form: weight (C, K, D) for cross-correlation with zero
        padding (K-1)//2 left / K//2 right, and bias (N, D); channels [:D/2] dense, [D/2:] structured."""
        K, c, half = self.n_taps, (self.n_taps - 1) // 2, self.dim // 2
        k = self._sg_taps()                                             # (M, K)
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
        xs = x.index_select(1, self.perm)                               # (B, C, T') networks contiguous
        if kernels.use_triton(xs):
            with torch.autocast(x.device.type, enabled=False):  # compose in full precision, then cast once
                weight, bias = self.effective_weights()
            # the kernel is a conv: under autocast it runs in the autocast dtype, as torch's conv would
            # (x is fp32 data, so x.dtype alone would keep the GPU kernel in fp32 under bf16 autocast)
            dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            z = kernels.grouped_conv_gelu_mean(xs.to(dt), weight.to(dt), bias.to(dt),
                                               self.offsets, self.patch_len)  # (B, N, P, D)
        else:
            z = self._factored_conv_gelu_mean(xs)                        # (B, N, P, D)
        z = F.layer_norm(z, (self.dim,))
        return z * self.norm_weight[:, None] + self.norm_bias[:, None]  # (B, N, P, D)

    def _factored_conv_gelu_mean(self, xs):
        """The PyTorch path: both branches in factored form, GELU, time mean (see the docstring).

        xs (B, C, T') with networks contiguous -> (B, N, P, D). Every activation is laid out
        (channels, L*B*P) with columns ordered (t, b, p), so each branch of each network is one GEMM
        with a column per time point, and the time mean is a sum over the middle axis."""
        B, C, T = xs.shape
        L, K, half, N = self.patch_len, self.n_taps, self.dim // 2, self.n_networks
        P, c, W = T // L, (K - 1) // 2, L + K - 1                       # W: padded patch length
        xpad = F.pad(xs.view(B, C, P, L), (c, K - 1 - c))               # (B, C, P, W) zero pad inside patches
        xpad = xpad.permute(1, 3, 0, 2).reshape(C, W, B * P)            # (C, W, BP)
        # dense 'same' 3-tap conv: taps -1, 0, +1 sit at padded positions c-1, c, c+1
        xd = torch.stack([xpad[:, c + j:c + j + L] for j in (-1, 0, 1)], 1)  # (C, 3, L, BP)
        xd = xd.view(3 * C, L * B * P)                                  # rows (roi, tap)
        # depthwise SG conv as a matmul with Toeplitz rows toe[m, t, t:t+K] = taps[m]: row t of the
        # zero-padded taps tiled L times and cut to rows of length W is the taps shifted by t
        taps = self._sg_taps()                                          # (M, K)
        toe = F.pad(taps, (0, L)).repeat(1, L)[:, :L * W]               # (M, L*W)
        toe = toe.reshape(-1, W)                                        # (M*L, W) rows ((roi, head), t), a copy
        rois = [self.offsets[n + 1] - self.offsets[n] for n in range(N)]           # R_n
        pairs = [self.pair_offsets[n + 1] - self.pair_offsets[n] for n in range(N)]  # H_n*R_n
        # split/unbind rather than slicing: their backward is one cat/stack, where every slice
        # would allocate and zero a full-size gradient
        z = []
        for R, x_n, xd_n, wd, bd, toe_n, wl, bl in zip(
                rois, xpad.split(rois), xd.split([3 * r for r in rois]),
                self.dense_weight.split(rois), self.dense_bias.unbind(),
                toe.split([p * L for p in pairs]), self.lin_weight.split(pairs), self.lin_bias.unbind()):
            dense = torch.addmm(bd[:, None], wd.view(3 * R, half).T, xd_n)  # (D/2, L*BP)
            sg = torch.bmm(toe_n.view(R, -1, W), x_n)                    # (R, H*L, BP)
            sg = torch.addmm(bl[:, None], wl.T, sg.view(wl.shape[0], -1))  # (D/2, L*BP)
            z += [F.gelu(h).view(half, L, B * P).sum(1) for h in (dense, sg)]  # (D/2, BP) each
        # divide by L after the sum: mean's backward would write a full-size (D/2, L*BP) gradient
        z = torch.stack(z).view(N, self.dim, B, P) / L                   # (N, D, B, P)
        return z.permute(2, 0, 3, 1)                                    # (B, N, P, D)
