"""The Brain-Semantoks encoder (SPEC §5): semantic tokenizer (or its linear ablation, tokenizer.py) + a ViT
over network x patch tokens.

x (B, C, T') -> tokenizer -> Z (B, N, P, D) -> masked tokens replaced by one learned mask
embedding -> + learned network embedding (N, D) + fixed sin-cos temporal embedding (P, D) ->
flatten network-major (token n*P + p) -> prepend CLS (no position) -> pre-LN blocks with
LayerScale -> final LayerNorm. Returns CLS (B, D) and tokens (B, N*P, D).

    python -m pytest -q tests/test_encoder.py      # presets, parameter counts, token layout
"""
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tokenizer import make_tokenizer


@dataclass
class EncoderConfig:
    dim: int = 768              # D, token width
    depth: int = 8              # transformer blocks
    heads: int = 12             # attention heads (D / heads = 64 at paper size)
    mlp_ratio: int = 4          # MLP hidden = mlp_ratio * D
    patch_len: int = 20         # L, time points per patch
    crop_len: int = 100         # T', time points per crop -> P = T' / L patches
    n_scales: int = 3           # SGConv scales -> 16-tap kernels
    layerscale_init: float = 0.1
    proj_hidden: int = 1024     # projection head hidden width (SPEC §6)
    proj_dim: int = 128         # p, projection output dim
    init: str = "authors"       # "authors": as the published run (PyTorch's default init for the block Linears and
                                #   the tokenizer's structured-branch projection; CLS, mask and network embeddings
                                #   N(0, 0.02²)); "dino": trunc-normal(0.02) Linears with zero biases, as in DINO
    tokenizer: str = "semantic"  # "semantic" (SPEC §3); "linear": one Linear(R_n·L -> D) per network, the
                                 #   paper's ablation (tokenizer.py, train.py --tokenizer)

    @classmethod
    def preset(cls, name):
        """"paper": D 768, depth 8, 12 heads (SPEC). "demo": D 192, depth 4, 3 heads (CPU in minutes)."""
        presets = {"paper": dict(dim=768, depth=8, heads=12), "demo": dict(dim=192, depth=4, heads=3)}
        if name not in presets:
            raise ValueError(f"unknown encoder preset {name!r}; choose one of {sorted(presets)}")
        return cls(**presets[name])


def sincos_embedding(n_pos, dim):
    """Fixed 1-D sin-cos position embedding (n_pos, dim): [sin(pos*w_i), cos(pos*w_i)], w_i = 10000^(-2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angle = torch.arange(n_pos, dtype=torch.float64)[:, None] * omega    # (P, D/2)
    return torch.cat([angle.sin(), angle.cos()], 1).float()              # (P, D)


class Attention(nn.Module):

    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, S, D/h)
        x = attention(q, k, v)                                           # (B, h, S, D/h)
        return self.proj(x.transpose(1, 2).reshape(B, S, D))


def softmax_attention(q, k, v):
    """softmax(q kᵀ / √d) v per head: q, k, v (B, h, S, d) -> (B, h, S, d). The softmax runs in
    fp32 or wider, also under bf16 autocast."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)            # (B, h, S, S)
    weights = scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    return weights.to(v.dtype) @ v                                       # (B, h, S, d)


def attention(q, k, v):
    """softmax_attention, computed by PyTorch's fused scaled_dot_product_attention except in bf16 on
    a CPU. There, with 46 tokens, the fused kernel is overhead-bound and its bf16 backward slow: the
    written-out form is about 2x faster forward and over 2x fwd+bwd than the fused kernel even on
    fp32 casts (the former path); in fp32 the fused kernel is the faster one. Measured with
    bench/attention.py (BENCHMARKS.md, "bf16 on the CPU"); on a GPU it is flash attention."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return softmax_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


class Block(nn.Module):

    def __init__(self, dim, heads, mlp_ratio, layerscale_init):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ls1 = nn.Parameter(torch.full((dim,), layerscale_init))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.ls2 = nn.Parameter(torch.full((dim,), layerscale_init))

    def forward(self, x):
        x = x + self.ls1 * self.attn(self.norm1(x))
        return x + self.ls2 * self.mlp(self.norm2(x))


class Encoder(nn.Module):

    def __init__(self, config: EncoderConfig, network_map):
        super().__init__()
        if config.crop_len % config.patch_len:
            raise ValueError(f"crop_len {config.crop_len} is not a multiple of patch_len {config.patch_len}")
        self.config = config
        D = config.dim
        self.tokenizer = make_tokenizer(config.tokenizer, network_map, D, config.patch_len, config.n_scales,
                                        config.init)
        self.n_networks = self.tokenizer.n_networks
        self.n_patches = config.crop_len // config.patch_len
        embed_init = nn.init.normal_ if config.init == "authors" else nn.init.trunc_normal_
        self.mask_token = nn.Parameter(torch.randn(1, D) * 0.02)
        self.network_embed = nn.Parameter(embed_init(torch.empty(self.n_networks, D), std=0.02))
        self.cls_token = nn.Parameter(embed_init(torch.empty(1, 1, D), std=0.02))
        self.register_buffer("time_embed", sincos_embedding(self.n_patches, D), persistent=False)
        self.blocks = nn.ModuleList(Block(D, config.heads, config.mlp_ratio, config.layerscale_init)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(D)
        # activation checkpointing: keep only each block's input and recompute the block in the backward.
        # A run-time choice (train.py --grad-checkpoint), not part of the architecture: at batch 512 the
        # blocks' saved activations are most of a paper step's GPU memory
        self.grad_checkpointing = False
        if config.init == "dino":  # "authors" keeps nn.Linear's default (uniform, fan-in scaled) init
            for mod in self.blocks.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.trunc_normal_(mod.weight, std=0.02)
                    if mod.bias is not None:
                        nn.init.zeros_(mod.bias)

    def forward(self, x, mask=None):
        """x (B, C, T'), mask bool (B, N, P) or None -> (cls (B, D), tokens (B, N*P, D))."""
        z = self.tokenizer(x)                                            # (B, N, P, D)
        B, N, P, D = z.shape
        if P != self.n_patches:
            raise ValueError(f"a crop of {x.shape[-1]} time points gives {P} patches, but the encoder "
                             f"was built for crop_len={self.config.crop_len} ({self.n_patches} patches)")
        if mask is not None:
            if mask.shape != (B, N, P):
                raise ValueError(f"mask must be (B, N, P) = {(B, N, P)}, got {tuple(mask.shape)}")
            z = torch.where(mask[..., None], self.mask_token.to(z.dtype), z)
        z = z + self.network_embed[:, None] + self.time_embed           # (B, N, P, D)
        z = torch.cat([self.cls_token.expand(B, -1, -1), z.reshape(B, N * P, D)], 1)  # (B, 1+N*P, D)
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            z = checkpoint(blk, z, use_reentrant=False) if recompute else blk(z)
        z = self.norm(z)
        return z[:, 0], z[:, 1:]

    def set_crop_len(self, crop_len):
        """Read crops of `crop_len` time points (a multiple of L): P = crop_len / L patches, the fixed
        sin-cos temporal embedding rebuilt for P (the paper's task-fMRI use of shorter inputs). A
        model pretrained on 100-point crops is then used out of its training length."""
        L = self.config.patch_len
        if crop_len < L or crop_len % L:
            raise ValueError(f"--crop-len {crop_len}: must be a positive multiple of the patch length {L} "
                             f"(e.g. {L}, {2 * L}, ...)")
        self.config = replace(self.config, crop_len=int(crop_len))
        self.n_patches = crop_len // L
        self.time_embed = sincos_embedding(self.n_patches, self.config.dim).to(self.time_embed.device)
        return self

    def network_mask(self, batch, masked_networks, device=None):
        """The token mask (B, N, P) that hides whole networks in every patch: True for the networks in
        `masked_networks` (ids, or a bool (N,)), None when it is None or names no network."""
        if masked_networks is None:
            return None
        hide = torch.zeros(self.n_networks, dtype=torch.bool)
        ids = torch.as_tensor(masked_networks).reshape(-1)
        hide[ids if ids.dtype == torch.bool else ids.long()] = True
        if not hide.any():
            return None
        return hide.to(device)[None, :, None].expand(batch, self.n_networks, self.n_patches)

    def features(self, x, masked_networks=None):
        """Probe features (B, 2D) = concat[mean of the N*P output tokens, CLS] (SPEC §9).

        masked_networks: networks whose tokens the mask embedding replaces in every patch, as the
        authors' extract_features(..., network_mask=the others) does (atlases a scan lacks; what one
        network carries). The mean still runs over all N*P tokens, masked ones included, as theirs.
        Gradients flow as usual: wrap in torch.no_grad() for frozen extraction."""
        cls, tokens = self(x, self.network_mask(x.shape[0], masked_networks, x.device))
        return torch.cat([tokens.mean(1), cls], -1)
