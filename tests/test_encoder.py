"""Encoder (SPEC §5): presets, parameter counts, token layout, mask substitution, custom maps."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data import networks
from encoder import Attention, Encoder, EncoderConfig, attention, sincos_embedding, softmax_attention
from masking import slice_mask
from test_tokenizer import spec_tokenizer_parameters

TINY = dict(dim=32, depth=2, heads=4, proj_hidden=64, proj_dim=16)


def test_paper_preset_parameter_counts():
    cfg = EncoderConfig.preset("paper")
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.patch_len, cfg.crop_len) == (768, 8, 12, 20, 100)
    enc = Encoder(cfg, networks.default_network_map())
    blocks = sum(p.numel() for p in enc.blocks.parameters())
    tok = sum(p.numel() for p in enc.tokenizer.parameters())
    total = sum(p.numel() for p in enc.parameters())
    msg = f"transformer blocks {blocks:,}, 9 tokenizers {tok:,}, total encoder {total:,}"
    D, hidden = cfg.dim, cfg.mlp_ratio * cfg.dim
    per_block = (2 * D                                                    # LayerNorm
                 + 3 * D * D + D * D + D                                  # qkv (no bias), output projection
                 + D                                                      # LayerScale
                 + 2 * D                                                  # LayerNorm
                 + D * hidden + hidden + hidden * D + D                   # MLP
                 + D)                                                     # LayerScale
    assert blocks == cfg.depth * per_block, msg
    assert round(blocks / 1e6, 1) == 56.7, msg                            # SPEC §5: "≈ 56.7M"
    assert tok == spec_tokenizer_parameters(networks.default_network_map(), D), msg
    assert total - blocks - tok == 2 * D + D + D + enc.n_networks * D, msg   # final LN, CLS, mask, network emb
    print(msg)


def test_demo_preset_shapes_and_features():
    cfg = EncoderConfig.preset("demo")
    assert (cfg.dim, cfg.depth, cfg.heads) == (192, 4, 3)
    enc = Encoder(cfg, networks.default_network_map())
    assert enc.n_networks == 9 and enc.n_patches == 5
    x = torch.randn(2, 457, 100)
    with torch.no_grad():
        feats = enc.features(x)
        cls, tokens = enc(x)
    assert cls.shape == (2, 192) and tokens.shape == (2, 45, 192) and feats.shape == (2, 384)
    torch.testing.assert_close(feats, torch.cat([tokens.mean(1), cls], -1))


@pytest.mark.parametrize("n_networks", [4, 17])
def test_custom_maps_end_to_end(n_networks):
    rng = np.random.default_rng(n_networks)
    m = np.concatenate([np.arange(n_networks), rng.integers(0, n_networks, 40 - n_networks)])
    m = rng.permutation(m)                                          # scattered ROIs, every id used
    cfg = EncoderConfig(**TINY, patch_len=10, crop_len=30)
    enc = Encoder(cfg, networks.load_network_map(m, n_rois=40))
    x = torch.randn(3, 40, 30)
    cls, tokens = enc(x, slice_mask(3, n_networks, 3))
    assert cls.shape == (3, 32) and tokens.shape == (3, n_networks * 3, 32)
    (cls.sum() + tokens.sum()).backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_token_layout_and_embeddings():
    """depth 0: tokens = LN(Z + network emb + time emb) flattened n*P + p; CLS = LN(cls token)."""
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(**{**TINY, "depth": 0}, patch_len=5, crop_len=15), [0, 1, 1, 2, 0, 2])
    with torch.no_grad():
        enc.network_embed.normal_()
        enc.norm.weight.normal_()
        x = torch.randn(2, 6, 15)
        cls, tokens = enc(x)
        z = enc.tokenizer(x) + enc.network_embed[:, None] + sincos_embedding(3, 32)   # (B, N, P, D)
    torch.testing.assert_close(tokens.view(2, 3, 3, 32), enc.norm(z))
    torch.testing.assert_close(cls, enc.norm(enc.cls_token[:, 0].expand(2, -1)))


def test_autocast_bf16_runs_close_to_fp32():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(**TINY), [0, 1, 1, 2, 0, 2])
    x, mask = torch.randn(2, 6, 100), slice_mask(2, 3, 5)
    with torch.no_grad():
        ref = enc(x, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = enc(x, mask)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.float(), b, rtol=0.1, atol=0.1)


def test_sincos_embedding():
    e = sincos_embedding(5, 8)
    assert e.shape == (5, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(e[3, 0], torch.tensor(np.sin(3.0), dtype=torch.float32))
    torch.testing.assert_close(e[3, 5], torch.tensor(np.cos(0.3), dtype=torch.float32))  # w_1 = 1e4^(-2/8) = 0.1


def test_masked_network_is_invisible():
    """A masked token is replaced before anything sees it: the masked network's input is irrelevant."""
    torch.manual_seed(0)
    m = [0, 1, 1, 2, 0, 2]
    enc = Encoder(EncoderConfig(**TINY, patch_len=5, crop_len=15), m)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[:, 1] = True                                              # network 1 = ROIs 1, 2
    x = torch.randn(2, 6, 15)
    x2 = x.clone()
    x2[:, [1, 2]] = torch.randn(2, 2, 15)
    with torch.no_grad():
        torch.testing.assert_close(enc(x, mask)[0], enc(x2, mask)[0])
        assert not torch.allclose(enc(x)[0], enc(x2)[0])



def test_features_with_masked_networks_equal_the_hand_built_mask():
    """features(x, masked_networks) is the encoder run with those networks masked in every patch, the
    mean over all N*P tokens (masked included) next to CLS; ids and a bool vector say the same."""
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(**TINY, patch_len=5, crop_len=15), [0, 1, 1, 2, 0, 2]).eval()
    x = torch.randn(2, 6, 15)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[:, [0, 2]] = True
    with torch.no_grad():
        cls, tok = enc(x, mask)
        want = torch.cat([tok.mean(1), cls], -1)
        torch.testing.assert_close(enc.features(x, [0, 2]), want)
        torch.testing.assert_close(enc.features(x, torch.tensor([True, False, True])), want)
        torch.testing.assert_close(enc.features(x, []), enc.features(x))          # nothing masked
        assert not torch.allclose(enc.features(x, [0, 2]), enc.features(x))

def test_attention_matches_manual():
    torch.manual_seed(0)
    attn = Attention(16, 4)
    assert attn.qkv.bias is None
    x = torch.randn(2, 7, 16)
    q, k, v = attn.qkv(x).split(16, -1)
    heads = lambda t: t.view(2, 7, 4, 4).transpose(1, 2)           # (B, h, S, D/h)
    w = (heads(q) @ heads(k).transpose(-1, -2) / 2.0).softmax(-1)
    ref = attn.proj((w @ heads(v)).transpose(1, 2).reshape(2, 7, 16))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (2, 3, 7, 16), (3, 5, 46, 64), (2, 12, 13, 5)])
def test_written_out_attention_matches_fused(shape):
    """The CPU's written-out attention computes what the GPU's fused SDPA does: values and the
    gradients of q, k, v under one shared upstream gradient. Shapes: batch 1 with one token, odd head
    counts, the paper's 46 tokens, a prime token count with an odd head width."""
    torch.manual_seed(0)
    qkv = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    g = torch.randn(shape, dtype=torch.float64)
    outs = {}
    for name, fn in (("written", softmax_attention), ("fused", F.scaled_dot_product_attention)):
        out = fn(*qkv)
        outs[name] = (out, *torch.autograd.grad(out, qkv, g))
    for a, b in zip(outs["written"], outs["fused"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_written_out_attention_under_bf16_autocast():
    """Under CPU bf16 autocast the written-out form multiplies in bf16 (scores and probabilities are
    rounded to bf16's 8 bits) and takes the softmax in fp32: it stays within bf16 rounding of the exact
    attention, values and gradients (tolerance 3e-2: a few bf16 ulps of O(1) values)."""
    torch.manual_seed(0)
    qkv = [torch.randn(2, 3, 46, 64, requires_grad=True) for _ in range(3)]
    g = torch.randn(2, 3, 46, 64)
    exact = F.scaled_dot_product_attention(*[t.double() for t in qkv])
    exact = (exact, *torch.autograd.grad(exact, qkv, g.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = softmax_attention(*[t.bfloat16() for t in qkv])
    assert out.dtype == torch.bfloat16
    got = (out, *torch.autograd.grad(out, qkv, g))
    for a, b in zip(got, exact):
        torch.testing.assert_close(a.double(), b.double(), rtol=3e-2, atol=3e-2)


def test_attention_on_a_cpu_is_the_written_out_form():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 8).bfloat16()
    assert torch.equal(attention(q, k, v), softmax_attention(q, k, v))


def test_init():
    """Default "authors": nn.Linear's own init (uniform ±1/sqrt(fan_in)) in the blocks and the SG
    projection, as the published run; "dino": trunc-normal(0.02) with zero biases."""
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(**TINY), networks.default_network_map())
    assert torch.all(enc.blocks[0].ls1 == 0.1) and torch.all(enc.blocks[1].ls2 == 0.1)
    w, b = enc.blocks[0].mlp[0].weight, enc.blocks[0].mlp[0].bias     # fan_in 32: bound 0.177, std 0.102
    assert abs(w.std().item() - 1 / math.sqrt(3 * 32)) < 0.01 and w.abs().max() <= 1 / math.sqrt(32)
    assert b.abs().max() > 0
    tok = enc.tokenizer
    lin = tok.lin_weight[:tok.pair_offsets[1]]                       # network 0: fan_in = H_0 * R_0 = 61
    assert lin.abs().max() <= 1 / math.sqrt(61) and abs(lin.std().item() - 1 / math.sqrt(3 * 61)) < 0.01
    assert tok.lin_bias.abs().max() > 0
    dino = Encoder(EncoderConfig(**TINY, init="dino"), networks.default_network_map())
    assert abs(dino.blocks[0].mlp[0].weight.std().item() - 0.02) < 0.004
    assert dino.blocks[0].mlp[0].bias.abs().max() == 0 and dino.tokenizer.lin_bias.abs().max() == 0
    assert abs(dino.tokenizer.lin_weight.std().item() - 0.02) < 0.004
    assert dataclasses.asdict(enc.config)["dim"] == 32
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        Encoder(EncoderConfig(**TINY, init="xavier"), networks.default_network_map())


def test_bad_input():
    with pytest.raises(ValueError, match="unknown encoder preset 'huge'"):
        EncoderConfig.preset("huge")
    with pytest.raises(ValueError, match="not divisible by heads"):
        Encoder(EncoderConfig(dim=30, depth=1, heads=4), [0, 1])
    with pytest.raises(ValueError, match="crop_len 90 is not a multiple of patch_len 20"):
        Encoder(EncoderConfig(**TINY, crop_len=90), [0, 1])
    enc = Encoder(EncoderConfig(**TINY), [0, 1, 1])
    with pytest.raises(ValueError, match="built for crop_len=100"):
        enc(torch.randn(1, 3, 120))
    with pytest.raises(ValueError, match=r"mask must be \(B, N, P\)"):
        enc(torch.randn(1, 3, 100), torch.zeros(1, 2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="input has 4 ROIs but the network map has 3 entries"):
        enc(torch.randn(1, 4, 100))
    with pytest.raises(ValueError, match="not a positive multiple of the patch length"):
        enc(torch.randn(1, 3, 90))


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=32, depth=3, heads=2, patch_len=10, crop_len=30)
    enc = Encoder(cfg, np.repeat(np.arange(3), [4, 5, 2]))
    x, mask = torch.randn(3, 11, 30), slice_mask(3, 3, 3)
    runs, saved = [], []
    for recompute in (False, True):
        enc.grad_checkpointing = recompute
        enc.zero_grad()
        n = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: n.append(t.numel()) or t, lambda t: t):
            cls, tok = enc(x, mask)
        (cls.square().sum() + tok.sin().sum()).backward()
        runs.append([cls, tok] + [p.grad.clone() for p in enc.parameters()])
        saved.append(sum(n))
    assert saved[1] < 0.5 * saved[0], saved        # the blocks' activations are no longer kept
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():   # feature extraction never recomputes: nothing is saved without gradients
        torch.testing.assert_close(enc(x, mask)[0], runs[0][0].detach())
