"""What the method does to a scan before the model sees it: z-scoring, augmentation, crops (SPEC §1, §9).

load.py gives a `Scans` (scans.py): (S, C, T) ROI series on the 2.0 s grid, NaN-padded at the
end, with valid lengths and subject ids. Everything here takes scans in that form:

- `zscore(x, lengths)`: per-ROI z-scoring over each scan's valid length; padding becomes 0.
- `augment(x, generator)`: the four SPEC §1 augmentations, vectorised over the batch.
- `read_zscored`, `gather_crops`: a batch of z-scored scans on the device, and crops cut from it
  (the pretraining batches of training/batches.py are built from these).
- `crop_starts`, `probe_crops(scans, idx)`: 8 evenly spaced, z-scored, un-augmented crops per scan
  (SPEC §9): the input of evaluation/features.py (probe.py, embed.py), of training/monitor.py's
  subject separation during training, and of bench/coupling.py.

    python -m data.preprocess path/to/data   # z-score a dataset, cut probe crops, print shapes
"""
import logging
import sys

import numpy as np
import torch

CROP_LEN = 100      # T'
N_PROBE_CROPS = 8
EPS = 1e-8          # z-score guard for flat ROIs (SPEC §1)


# ----------------------------------------------------------------------------------------------
# Normalisation, augmentation, crops (torch, any device)

def zscore(x, lengths, eps=EPS) -> torch.Tensor:
    """Per-ROI z-scoring over each scan's valid length (SPEC §1).

    x (B, C, T) float tensor/array (NaN padding allowed), lengths (B,) -> float32 (B, C, T), zero
    beyond the valid length and for all-NaN ROIs. Population std, guarded by eps."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:   # a memmap: torch wants a writable buffer
        x = np.array(x)
    x = torch.as_tensor(x)
    lengths = torch.as_tensor(lengths, device=x.device)
    T = x.shape[-1]
    valid = (torch.arange(T, device=x.device) < lengths[:, None])[:, None, :]   # (B, 1, T)
    # Subtract the first sample before the moments: removes the DC offset (often 1e2-1e4 in raw BOLD)
    # so float32 sums stay exact enough, and a flat ROI becomes exactly 0 instead of noise/eps.
    # NaN (padding, uncovered ROIs) -> 0, then padding -> 0: few full passes, this runs on whole datasets.
    x = torch.nan_to_num_(x.float() - x[:, :, :1].float(), nan=0.0).mul_(valid)   # (B, C, T)
    n = lengths.clamp(min=1).float()[:, None, None]                                # (B, 1, 1)
    xc = (x - x.sum(-1, keepdim=True) / n).mul_(valid)
    std = torch.linalg.vector_norm(xc, dim=-1, keepdim=True) / n.sqrt()
    return xc.div_(std + eps)


def augment(x, generator=None, drop_rois=True) -> torch.Tensor:
    """The four SPEC §1 augmentations, drawn independently per sample (crop).

    x (B, C, T') -> (B, C, T') float32: zero k = max(1, ⌊C·U(0,0.1)⌋) random ROIs; zero a
    contiguous run of max(1, ⌊T'·U(0,0.3)⌋) time points at a uniform start; multiply by
    U(0.8, 1.2); add N(0, 0.1²) noise. All draws come from `generator` (on x's device).
    drop_rois=False skips the ROI drop, as the authors' fine-tuning does (their augment_level [0, 1, 1, 1])."""
    B, C, T = x.shape
    kw = dict(generator=generator, device=x.device)
    keep_roi = torch.ones(B, C, dtype=torch.bool, device=x.device)
    if drop_rois:
        k = (C * 0.1 * torch.rand(B, **kw)).floor().long().clamp(1, C)          # (B,) ROIs to drop
        r = torch.rand(B, C, **kw)
        kth = r.sort(dim=1).values.gather(1, (k - 1)[:, None])                  # (B, 1) k-th smallest
        keep_roi = r > kth                                                        # (B, C) exactly k False
    n = (T * 0.3 * torch.rand(B, **kw)).floor().long().clamp(1, T)              # (B,) run length
    s = (torch.rand(B, **kw) * (T - n + 1)).long().clamp(max=T - n)             # (B,) run start
    t = torch.arange(T, device=x.device)
    keep_t = (t < s[:, None]) | (t >= (s + n)[:, None])                          # (B, T')
    scale = 0.8 + 0.4 * torch.rand(B, **kw)                                       # (B,)
    # ROI drop and scale fold into one (B, C) factor: three full passes over x, the noise included
    x = x * (keep_roi * scale[:, None])[:, :, None]                              # (B, C, T') float32
    x.mul_(keep_t[:, None, :])
    return x.add_(torch.randn(B, C, T, **kw), alpha=0.1)


def gather_crops(src, rows, starts, crop_len):
    """src (R, C, T) with T >= starts + crop_len; rows (M,), starts (M,) -> (M, C, T').

    Indexing a sliding-window view copies each crop as C contiguous runs of T' (3x faster on CPU
    than indexing time points one by one)."""
    return src.unfold(2, crop_len, 1)[rows, :, starts]                           # (M, C, T')


def _pad_time(x, crop_len):
    """Zero-pad (B, C, T) at the end to at least crop_len time points (scans shorter than T')."""
    return torch.nn.functional.pad(x, (0, max(0, crop_len - x.shape[-1])))


def read_zscored(scans, idx, lengths, device, crop_len):
    """Scans idx (numpy (b,)) -> (b, C, max(T, T')) float32 on `device`, z-scored over `lengths` (b,)
    (a tensor on `device`) and zero-padded for cropping. Read in the stored dtype (float16 halves the
    host-to-device copy); the float32 work happens on the device."""
    x = torch.from_numpy(scans.read(idx, None)).to(device)                       # (b, C, T)
    return _pad_time(zscore(x, lengths), crop_len)


def crop_starts(lengths, crop_len=CROP_LEN, n_crops=N_PROBE_CROPS) -> np.ndarray:
    """Probe crop starts (S, n_crops) int64: round(linspace(0, T−T', n_crops)) per scan (SPEC §9);
    a scan shorter than T' gives starts 0 (and is zero-padded)."""
    span = np.maximum(np.asarray(lengths, dtype=np.int64) - crop_len, 0)        # (S,)
    return np.rint(np.linspace(0, span, n_crops, axis=-1)).astype(np.int64)


def probe_crops(scans, idx=None, crop_len=CROP_LEN, n_crops=N_PROBE_CROPS, device="cpu") -> torch.Tensor:
    """Probe inputs for scans `idx` (default all): (len(idx), n_crops, C, T') float32 on `device`,
    z-scored over each scan's valid length, no augmentation. Call it on chunks of indices to bound
    memory (each scan costs n_crops·C·T'·4 bytes, 1.5 MB at the defaults)."""
    idx = np.arange(len(scans)) if idx is None else np.asarray(idx, dtype=np.int64).reshape(-1)
    lengths = torch.as_tensor(scans.lengths[idx], device=device)
    z = read_zscored(scans, idx, lengths, device, crop_len)                     # (b, C, T)
    starts = torch.as_tensor(crop_starts(scans.lengths[idx], crop_len, n_crops), device=device)
    b = len(idx)
    rows = torch.arange(b, device=device).repeat_interleave(n_crops)             # (b·n,)
    crops = gather_crops(z, rows, starts.reshape(-1), crop_len)                 # (b·n, C, T')
    return crops.reshape(b, n_crops, scans.n_rois, crop_len)                     # (b, n, C, T')


if __name__ == "__main__":
    from data.load import load_scans
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) < 2:
        sys.exit("usage: python -m data.preprocess path/to/data   (the built-in synthetic cohort: "
                 "synthetic/pretrain.npy after python -m data.synthetic)")
    sc = load_scans(sys.argv[1])
    print(f"{len(sc)} scans: probe crops {tuple(probe_crops(sc, [0]).shape)} for one scan")
