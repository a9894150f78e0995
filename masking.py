"""Slice masking of the (network x patch) token grid (SPEC §4).

Per sample, with probability 1/2 each:
- network (row) masking: k whole networks, k uniform in {floor(lo*N), ..., floor(hi*N) - 1}
  (N=9 -> 5 or 6), masked across all P patches;
- temporal (column) masking: r ~ U(lo, hi), a contiguous run of ceil(r*P) - 1 patches
  (P=5 -> 3 if r <= 0.8, else 4) at a uniform valid start, masked across all N networks.
Counts are clamped to 1..N-1 / 1..P-1 so a mask is never empty and never everything; a grid with a
single row (column) only gets column (row) masks. Whether a batch is masked at all (prob 1/2) is
the training loop's decision.

    python -m pytest -q tests/test_masking.py
"""
import math

import torch


def slice_mask(batch, n_networks, n_patches, ratio=(0.65, 0.85), generator=None, device=None):
    """-> bool (B, N, P), True = masked. Random numbers come from `generator` (on its own device),
    the mask is returned on `device` (default: the generator's device, else CPU)."""
    lo, hi = ratio
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"mask ratio must satisfy 0 < lo <= hi <= 1, got {ratio}")
    N, P = n_networks, n_patches
    if N < 1 or P < 1 or (N == 1 and P == 1):
        raise ValueError(f"cannot slice-mask a {N} x {P} token grid: need at least two networks or two patches")
    gen_device = generator.device if generator is not None else torch.device(device or "cpu")
    device = torch.device(device) if device is not None else gen_device
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
