"""The semantic tokenizer (SPEC §3): one small conv tokenizer per functional network.

A crop x (B, C, T') is cut into P patches of L time points. Network n (R_n ROIs) has its own
tokenizer g_n, applied to every patch independently (`paper_form` writes it out):

1. a dense branch Conv1d(R_n -> D/2, kernel 3, 'same');
2. an SGConv-style structured branch: H_n = ceil((D/2)/R_n) multi-scale 16-tap kernels per ROI, a
   true depthwise convolution of each ROI with each of its kernels, a skip D, Linear(H_n*R_n -> D/2);
3. concat -> GELU -> mean over the L time points -> LayerNorm(D).

Output Z (B, N, P, D): 457 ROIs become N*P = 45 tokens.

`LinearTokenizer` is the paper's "linear projection instead of the semantic tokenizer" ablation
(train.py --tokenizer linear; the paper reports a partial collapse, CLS cosine ≈ 0.95): per network
one Linear(R_n·L -> D) of each patch's flattened ROI x time values, the same (B, N, P, D) grid, no
nonlinearity, no norm. It needs none of the fast paths of kernels/.

`paper_form` is the reference. Steps 1-3 up to the LayerNorm usually run through a faster path of
kernels/ (`kernels.tokenizer_conv_gelu_mean` picks it and logs which): the same numbers from the
same parameters in "linear form" (`linear_form`): on the CPU both branches as GEMMs over all time
points (kernels/factored.py), on the GPU one fused Triton conv per network (kernels/tokenizer_conv.py).
tests/test_tokenizer.py holds every path to this reference, values and gradients.

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
from data.networks import validate_network_map

INITS = ("authors", "dino")  # the tokenizer's structured-branch projection; encoder.py uses the same names
TOKENIZERS = ("semantic", "linear")


def make_tokenizer(kind, network_map, dim, patch_len, n_scales, init):
    """--tokenizer: "semantic" (SemanticTokenizer, the method) or "linear" (LinearTokenizer, its ablation)."""
    if kind == "semantic":
        return SemanticTokenizer(network_map, dim, patch_len, n_scales, init)
    if kind == "linear":
        return LinearTokenizer(network_map, dim, patch_len)
    raise ValueError(f"unknown tokenizer {kind!r}; choose one of {TOKENIZERS}")


class LinearTokenizer(nn.Module):
    """Per network n one Linear(R_n·L -> D) on each patch's (R_n, L) values, flattened ROI-major.
    weight (C·L, D) stacks the networks' weights (ROIs in network-sorted order), bias (N, D):
    C·L·D + N·D parameters. nn.Linear's default init per network (fan_in = R_n·L)."""

    def __init__(self, network_map, dim=768, patch_len=20):
        super().__init__()
        if isinstance(network_map, torch.Tensor):
            network_map = network_map.cpu().numpy()
        m = validate_network_map(network_map)
        if patch_len < 1:
            raise ValueError(f"patch_len must be >= 1, got {patch_len}")
        self.dim, self.patch_len = dim, patch_len
        self.n_rois, self.n_networks = m.size, int(m.max()) + 1
        self.counts = tuple(np.bincount(m).tolist())                     # R_n
        self.register_buffer("perm", torch.from_numpy(np.argsort(m, kind="stable")), persistent=False)
        self.weight = nn.Parameter(torch.empty(m.size * patch_len, dim))
        self.bias = nn.Parameter(torch.empty(self.n_networks, dim))
        with torch.no_grad():
            for n, (w, r) in enumerate(zip(self.weight.split([c * patch_len for c in self.counts]), self.counts)):
                bound = 1 / math.sqrt(r * patch_len)
                w.uniform_(-bound, bound)
                self.bias[n].uniform_(-bound, bound)

    def forward(self, x):
        """x (B, C, T') in the data's ROI order -> Z (B, N, P, D)."""
        B, C, T = x.shape
        L = self.patch_len
        if C != self.n_rois or T == 0 or T % L:
            raise ValueError(f"linear tokenizer input must be (B, {self.n_rois}, a multiple of {L}), "
                             f"got {tuple(x.shape)}")
        P = T // L
        xs = x.index_select(1, self.perm).view(B, C, P, L)               # (B, C, P, L) networks contiguous
        out = [xn.transpose(1, 2).reshape(B, P, -1) @ w                   # (B, P, R_n·L) @ (R_n·L, D)
               for xn, w in zip(xs.split(self.counts, 1), self.weight.split([c * L for c in self.counts]))]
        return torch.stack(out, 1) + self.bias[:, None]                  # (B, N, P, D)


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
        if init not in INITS:  # any other string would silently get the "dino" init below
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
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

    def sg_kernels(self):
        """The SG kernel of every (roi, head) pair, divided by its norm at the first forward -> (M, K)."""
        return self._sg_kernel_raw() / self.sg_norm                      # (M, K)

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
        z = kernels.tokenizer_conv_gelu_mean(xs, self.linear_form(), self.paper_form)  # (B, N, P, D)
        # step 3's LayerNorm(D), each network's tokens with that network's affine parameters
        z = F.layer_norm(z, (self.dim,))
        return z * self.norm_weight[:, None] + self.norm_bias[:, None]  # (B, N, P, D)

    def paper_form(self, xs):
        """SPEC §3 steps 1-3 before the LayerNorm, network by network, as the paper writes them.

        xs (B, C, T') with networks contiguous -> (B, N, P, D). Parameters are viewed in the
        SPEC's per-network layout (see the module docstring)."""
        B, C, T = xs.shape
        L, K, N, D = self.patch_len, self.n_taps, self.n_networks, self.dim
        P = T // L
        patches = xs.view(B, C, P, L).transpose(1, 2).reshape(B * P, C, L)  # (BP, C, L) patches independent
        sg_kernels = self.sg_kernels()                                  # (M, K) rows (roi, head)
        out = []
        for n in range(N):
            a, b, pa, pb = self.offsets[n], self.offsets[n + 1], self.pair_offsets[n], self.pair_offsets[n + 1]
            R, H = b - a, self.heads[n]
            x_n = patches[:, a:b]                                       # (BP, R, L)
            # 1. dense branch: Conv1d(R -> D/2, k=3, 'same'); its weight (D/2, R, 3)
            dense = F.conv1d(x_n, self.dense_weight[a:b].permute(2, 0, 1), self.dense_bias[n], padding="same")
            # 2. structured branch: each ROI convolved with its H kernels (conv1d cross-correlates,
            # so a true convolution flips the taps), zero padding (K-1)//2 left, K//2 right;
            # groups=R keeps ROIs apart and orders output channels (roi, head)
            x_pad = F.pad(x_n, ((K - 1) // 2, K // 2))                  # (BP, R, L+K-1)
            sg = F.conv1d(x_pad, sg_kernels[pa:pb].flip(-1)[:, None], groups=R)  # (BP, R*H, L)
            sg = sg + self.sg_skip[pa:pb, None] * x_n.repeat_interleave(H, 1)    # + D[h, r] x[r, t]
            sg = F.linear(sg.transpose(1, 2), self.lin_weight[pa:pb].T, self.lin_bias[n])  # (BP, L, D/2)
            # 3. concat, GELU, mean over the patch's L time points
            h = torch.cat([dense, sg.transpose(1, 2)], 1)               # (BP, D, L)
            out.append(F.gelu(h).mean(-1))                              # (BP, D)
        return torch.stack(out, 1).view(B, P, N, D).transpose(1, 2)     # (B, N, P, D)

    def linear_form(self):
        """The same parameters as the fast paths of kernels/ take them (kernels.TokenizerWeights):
        the SG kernel as cross-correlation taps, flipped, with the skip D as a centre-tap weight."""
        K, c = self.n_taps, (self.n_taps - 1) // 2
        # D at tap c, zeros elsewhere, in one op on the device (`centre[c] = 1.0` was a host sync per step on CUDA)
        centre = F.pad(self.sg_skip[:, None], (c, K - 1 - c))           # (M, K)
        taps = self.sg_kernels().flip(-1) + centre                      # (M, K)
        return kernels.TokenizerWeights(self.dense_weight, self.dense_bias, taps, self.lin_weight, self.lin_bias,
                                        self.offsets, self.pair_offsets, self.patch_len)
