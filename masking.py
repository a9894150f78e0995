"""Slice masking of the (network x patch) token grid (SPEC §4), and random masking, its ablation.

Per sample, with probability 1/2 each:
- network (row) masking: k whole networks, k uniform in {floor(lo*N), ..., floor(hi*N) - 1}
  (N=9 -> 5 or 6), masked across all P patches;
- temporal (column) masking: r ~ U(lo, hi), a contiguous run of ceil(r*P) - 1 patches
  (P=5 -> 3 if r <= 0.8, else 4) at a uniform valid start, masked across all N networks.
Counts are clamped to 1..N-1 / 1..P-1 so a mask is never empty and never everything; a grid with a
single row (column) only gets column (row) masks. Whether a batch is masked at all (prob 1/2) is
the training loop's decision.

`random_mask` (train.py --mask-type random, the paper's "random instead of slice masking" row,
51.03 against 52.39): the same ratio r ~ U(lo, hi) per sample, but each token masked on its own
with probability r, so a mask has no row or column structure. The authors' code has no such masker;
ours keeps slice_mask's rule that a mask is never empty and never everything. `make_mask` picks one.

    python -m pytest -q tests/test_masking.py
"""
import math

import torch

MASK_TYPES = ("slice", "random")


def _check(ratio, N, P):
    lo, hi = ratio
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"mask ratio must satisfy 0 < lo <= hi <= 1, got {ratio}")
    if N < 1 or P < 1 or (N == 1 and P == 1):
        raise ValueError(f"cannot mask a {N} x {P} token grid: need at least two networks or two patches")
    return lo, hi


def _devices(generator, device):
    gen_device = generator.device if generator is not None else torch.device(device or "cpu")
    return gen_device, (torch.device(device) if device is not None else gen_device)


def make_mask(mask_type, batch, n_networks, n_patches, generator=None, device=None):
    """The training mask of --mask-type: "slice" (slice_mask) or "random" (random_mask) -> bool (B, N, P)."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask type {mask_type!r}; choose one of {MASK_TYPES}")
    fn = slice_mask if mask_type == "slice" else random_mask
    return fn(batch, n_networks, n_patches, generator=generator, device=device)


def random_mask(batch, n_networks, n_patches, ratio=(0.65, 0.85), generator=None, device=None):
    """-> bool (B, N, P): per sample r ~ U(lo, hi), each token masked independently with probability r;
    the token with the lowest draw is always masked and the one with the highest never, so no mask is
    empty or total (on a 9 x 5 grid that changes at most 0.85^45 ≈ 7e-4 of the masks)."""
    lo, hi = _check(ratio, n_networks, n_patches)
    gen_device, device = _devices(generator, device)
    rand = dict(generator=generator, device=gen_device)
    r = lo + (hi - lo) * torch.rand(batch, 1, **rand)                    # (B, 1)
    u = torch.rand(batch, n_networks * n_patches, **rand)               # (B, N*P)
    mask = u < r
    mask.scatter_(1, u.argmin(1, keepdim=True), True)
    mask.scatter_(1, u.argmax(1, keepdim=True), False)
    return mask.view(batch, n_networks, n_patches).to(device)           # (B, N, P) network-major as the tokens


def slice_mask(batch, n_networks, n_patches, ratio=(0.65, 0.85), generator=None, device=None):
    """-> bool (B, N, P), True = masked. Random numbers come from `generator` (on its own device),
    the mask is returned on `device` (default: the generator's device, else CPU)."""
    N, P = n_networks, n_patches
    lo, hi = _check(ratio, N, P)
    gen_device, device = _devices(generator, device)
    rand = dict(generator=generator, device=gen_device)

    # type: row masking needs N >= 2, column masking P >= 2
    p_row = 0.0 if N == 1 else 1.0 if P == 1 else 0.5
    is_row = torch.rand(batch, **rand) < p_row                          # (B,)

    k_lo = min(max(1, math.floor(lo * N)), N - 1)
    k_hi = min(max(k_lo, math.floor(hi * N) - 1), N - 1)
    k = torch.randint(k_lo, k_hi + 1, (batch,), **rand)                 # (B,)
    rank = torch.rand(batch, N, **rand).argsort(1).argsort(1)           # (B, N) random permutation
    rows = rank < k[:, None]                                            # (B, N) k random networks

    r = lo + (hi - lo) * torch.rand(batch, dtype=torch.float64, **rand)
    width = (torch.ceil(r * P) - 1).long().clamp(1, max(1, P - 1))     # (B,)
    start = (torch.rand(batch, dtype=torch.float64, **rand) * (P - width + 1)).long()
    t = torch.arange(P, device=gen_device)
    cols = (t >= start[:, None]) & (t < (start + width)[:, None])      # (B, P) contiguous run

    mask = torch.where(is_row[:, None, None], rows[:, :, None].expand(batch, N, P),
                       cols[:, None, :].expand(batch, N, P))            # (B, N, P)
    return mask.to(device)
