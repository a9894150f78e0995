"""Functional connectivity: Pearson correlations between ROIs over a scan, and their Fisher-z (SPEC §9).

The baseline every reviewer asks for (the FC probe of evaluation/features.py), and the data's own
network structure (`--networks auto:K` clusters the group FC, networks.py; bench/coupling.py).

- `scan_fc(scans, idx)`: (n, C, C) Pearson r of each scan over its valid length, after z-scoring.
- `group_fc(scans)`: the group mean, averaged in Fisher-z and turned back into r.
- `fisher_z(r)`: arctanh of correlations, clipped so that r = ±1 stays finite.
"""
import numpy as np
import torch

from data.preprocess import zscore

FISHER_CLIP = 1 - 1e-6   # |r| bound before arctanh: r = ±1 (a diagonal, a duplicated ROI) stays finite


def scan_fc(scans, idx=None, chunk=64) -> np.ndarray:
    """Pearson correlation over each scan's valid length: (len(idx), C, C) float32 (idx default all).
    All-NaN (no coverage) ROIs get zero rows."""
    idx = np.arange(len(scans)) if idx is None else np.asarray(idx, dtype=np.int64).reshape(-1)
    C = scans.n_rois
    out = np.empty((len(idx), C, C), dtype=np.float32)
    for i in range(0, len(idx), chunk):
        j = idx[i:i + chunk]
        n = torch.as_tensor(scans.lengths[j])
        z = zscore(torch.from_numpy(scans.read(j)), n)                            # (b, C, T)
        fc = z @ z.transpose(1, 2) / n.float()[:, None, None]                     # (b, C, C)
        out[i:i + len(j)] = fc.clamp(-1, 1).numpy()
    return out


def group_fc(scans, max_scans=None, seed=0) -> np.ndarray:
    """Group-mean FC (C, C) float64: per-scan Pearson r, Fisher-z (arctanh) averaged, tanh back,
    diagonal 1. max_scans: average a seeded random subset of that many scans (speed)."""
    S = len(scans)
    idx = np.arange(S)
    if max_scans is not None and max_scans < S:
        idx = np.sort(np.random.default_rng(seed).choice(S, int(max_scans), replace=False))
    total = np.zeros((scans.n_rois,) * 2)
    for i in range(0, len(idx), 64):
        fc = scan_fc(scans, idx[i:i + 64]).astype(np.float64)
        total += fisher_z(fc).sum(0)
    fc = np.tanh(total / len(idx))
    np.fill_diagonal(fc, 1.0)
    return fc


def fisher_z(r):
    """Fisher's z = arctanh(r) of correlations (array of any shape), |r| clipped below 1."""
    return np.arctanh(np.clip(r, -FISHER_CLIP, FISHER_CLIP))
