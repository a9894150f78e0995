"""What the method does to scans: z-scoring, crops, augmentation, the pretraining batch source,
and functional connectivity (SPEC §1, §8, §9).

data.py loads and validates what a user brings into a `data.Scans`: (S, C, T) ROI series on the
2.0 s grid, NaN-padded at the end, with valid lengths and subject ids. Everything here takes
scans in that form:

- `zscore(x, lengths)`: per-ROI z-scoring over each scan's valid length; padding becomes 0.
- `augment(x, generator)`: the four SPEC §1 augmentations, vectorised over the batch.
- `TrainBatches(scans, device, ...)`: the pretraining batch source. Two independently cropped and
  augmented views per scan, all randomness from a torch.Generator on the training device,
  resumable bit for bit through `state_dict()` / `load_state_dict()`; `steps_per_epoch`.
- `crop_starts`, `probe_crops(scans, idx)`: 8 evenly spaced, z-scored, un-augmented crops per scan
  (SPEC §9): the input of features.encoder_features (probe.py, embed.py), of monitor.py's subject
  separation during training, and of bench/coupling.py.
- `scan_fc(scans, idx)`, `group_fc(scans)`, `fisher_z(r)`: Pearson functional connectivity and its
  Fisher-z transform (the FC probe baseline, `--networks auto:K`, bench/coupling.py).

    python scans.py path/to/data   # z-score a dataset, draw a training batch and probe crops, print shapes
"""
import logging
import sys

import numpy as np
import torch

import schedules
import seeding

log = logging.getLogger("brain_semantoks.scans")

CROP_LEN = 100      # T'
N_PROBE_CROPS = 8
EPS = 1e-8          # z-score guard for flat ROIs (SPEC §1)
FISHER_CLIP = 1 - 1e-6   # |r| bound before arctanh: r = ±1 (a diagonal, a duplicated ROI) stays finite


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


def augment(x, generator=None) -> torch.Tensor:
    """The four SPEC §1 augmentations, drawn independently per sample (crop).

    x (B, C, T') -> (B, C, T') float32: zero k = max(1, ⌊C·U(0,0.1)⌋) random ROIs; zero a
    contiguous run of max(1, ⌊T'·U(0,0.3)⌋) time points at a uniform start; multiply by
    U(0.8, 1.2); add N(0, 0.1²) noise. All draws come from `generator` (on x's device)."""
    B, C, T = x.shape
    kw = dict(generator=generator, device=x.device)
    k = (C * 0.1 * torch.rand(B, **kw)).floor().long().clamp(1, C)              # (B,) ROIs to drop
    r = torch.rand(B, C, **kw)
    kth = r.sort(dim=1).values.gather(1, (k - 1)[:, None])                      # (B, 1) k-th smallest
    keep_roi = r > kth                                                            # (B, C) exactly k False
    n = (T * 0.3 * torch.rand(B, **kw)).floor().long().clamp(1, T)              # (B,) run length
    s = (torch.rand(B, **kw) * (T - n + 1)).long().clamp(max=T - n)             # (B,) run start
    t = torch.arange(T, device=x.device)
    keep_t = (t < s[:, None]) | (t >= (s + n)[:, None])                          # (B, T')
    scale = 0.8 + 0.4 * torch.rand(B, **kw)                                       # (B,)
    # ROI drop and scale fold into one (B, C) factor: three full passes over x, the noise included
    x = x * (keep_roi * scale[:, None])[:, :, None]                              # (B, C, T') float32
    x.mul_(keep_t[:, None, :])
    return x.add_(torch.randn(B, C, T, **kw), alpha=0.1)


def _gather_crops(src, rows, starts, crop_len):
    """src (R, C, T) with T >= starts + crop_len; rows (M,), starts (M,) -> (M, C, T').

    Indexing a sliding-window view copies each crop as C contiguous runs of T' (3x faster on CPU
    than indexing time points one by one)."""
    return src.unfold(2, crop_len, 1)[rows, :, starts]                           # (M, C, T')


def _pad_time(x, crop_len):
    """Zero-pad (B, C, T) at the end to at least crop_len time points (scans shorter than T')."""
    return torch.nn.functional.pad(x, (0, max(0, crop_len - x.shape[-1])))


def _read_zscored(scans, idx, lengths, device, crop_len):
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
    z = _read_zscored(scans, idx, lengths, device, crop_len)                     # (b, C, T)
    starts = torch.as_tensor(crop_starts(scans.lengths[idx], crop_len, n_crops), device=device)
    b = len(idx)
    rows = torch.arange(b, device=device).repeat_interleave(n_crops)             # (b·n,)
    crops = _gather_crops(z, rows, starts.reshape(-1), crop_len)                 # (b·n, C, T')
    return crops.reshape(b, n_crops, scans.n_rois, crop_len)                     # (b, n, C, T')


# ----------------------------------------------------------------------------------------------
# Pretraining batches

class TrainBatches:
    """Pretraining batches on the training device (SPEC §1, §8).

    next_batch(batch_size) -> (x1, x2), each (B, C, T') float32 on `device`: one scan per subject,
    two crops with independent uniform starts in [0, T_valid − T'] (shorter scans zero-padded at
    the end), each augmented independently.

    Epochs: an epoch is a random permutation of the subjects, taken batch by batch; each subject
    contributes one of its scans, drawn at random each time. A tail smaller than a global batch is
    dropped (a batch never holds a subject twice), so steps_per_epoch = n_subjects // (B·world).

    Data placement: when the z-scored data fit `budget_bytes` (default: 35% of the GPU's memory,
    2 GiB on CPU), they are z-scored once, chunk by chunk, and kept on the device as float16
    (S, C, max(T, T')); otherwise each batch's scans are read from the (memory-mapped) array and
    z-scored on the fly. Both give the same batches up to float16 rounding.

    Randomness: the epoch permutation is drawn from a torch.Generator seeded by the key (seed, 0,
    epoch), each batch's draws from one seeded by (seed, 1, step, rank) (seeding.torch_seed), all on
    `device`. So a run is reproducible for a seed and device type, `state_dict()` is just counters,
    and `load_state_dict()` resumes with bitwise the same batches. With several processes
    (rank/world_size), all ranks share the epoch permutation and each takes its own slice of the
    global batch.

    augment=False returns the bare z-scored crops (ablations, tests).
    """

    def __init__(self, scans, device="cpu", crop_len=CROP_LEN, seed=0, rank=0, world_size=1,
                 resident=None, budget_bytes=None, augment=True):
        if len(scans) == 0:
            raise ValueError("no scans to train on")
        self.scans, self.device, self.crop_len = scans, torch.device(device), int(crop_len)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.augment = augment
        self.last_scans = None   # (B,) scan indices of the last batch (logging, tests)
        names, subj_of_scan = np.unique(np.asarray(scans.subjects, dtype=str), return_inverse=True)
        self.n_subjects = len(names)
        order = np.argsort(subj_of_scan, kind="stable")                         # scans grouped by subject
        count = np.bincount(subj_of_scan, minlength=self.n_subjects)
        first = np.concatenate([[0], np.cumsum(count)[:-1]])
        dev = self.device
        self._scans_by_subject = torch.as_tensor(order, device=dev)             # (S,)
        self._first = torch.as_tensor(first, device=dev)                         # (U,)
        self._count = torch.as_tensor(count, device=dev)                         # (U,)
        self.lengths = torch.as_tensor(scans.lengths, device=dev)               # (S,)
        self._gen = torch.Generator(device=dev)
        self.epoch = self.pos = self.step = 0
        self._order, self._order_epoch = None, -1

        n_short = int((scans.lengths < self.crop_len).sum())
        if n_short:
            log.warning("%d of %d scans are shorter than the crop length %d; they are zero-padded at the end",
                        n_short, len(scans), self.crop_len)
        S, C, T = scans.data.shape
        Tp = max(T, self.crop_len)
        if budget_bytes is None:
            budget_bytes = (0.35 * torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda"
                            else 2 << 30)
        need = S * C * Tp * 2
        self.resident = need <= budget_bytes if resident is None else bool(resident)
        self._data = None
        if self.resident:
            self._data = torch.zeros(S, C, Tp, dtype=torch.float16, device=dev)   # (S, C, T) z-scored
            step = max(1, (64 << 20) // (C * T * 4))
            for s0 in range(0, S, step):   # raw dtype over the bus; the float32 work happens on the device
                x = torch.from_numpy(np.array(scans.data[s0:s0 + step])).to(dev)   # (b, C, T)
                self._data[s0:s0 + len(x), :, :T] = zscore(x, self.lengths[s0:s0 + len(x)]).half()
        log.info("training data: %d scans of %d subjects, %s", S, self.n_subjects,
                 f"z-scored once and kept on {dev} as float16 ({need / 2**30:.2f} GiB)" if self.resident
                 else f"read and z-scored per batch ({need / 2**30:.2f} GiB would exceed the device budget)")

    def steps_per_epoch(self, batch_size) -> int:
        return schedules.steps_per_epoch(self.n_subjects, batch_size * self.world_size)

    def _epoch_order(self):
        if self._order_epoch != self.epoch:
            self._gen.manual_seed(seeding.torch_seed(self.seed, 0, self.epoch))
            self._order = torch.randperm(self.n_subjects, generator=self._gen, device=self.device)  # (U,)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self, batch_size):
        """Two augmented views (x1, x2), each (B, C, T') float32 on the device."""
        B, Tc, dev = int(batch_size), self.crop_len, self.device
        if B < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if B * self.world_size > self.n_subjects:
            raise ValueError(f"batch size {B}{f' x {self.world_size} processes' if self.world_size > 1 else ''} "
                             f"is larger than the number of subjects ({self.n_subjects}); use a smaller batch")
        lo = self.pos + self.rank * B
        subj = self._epoch_order()[lo:lo + B]                                     # (B,)
        g = self._gen
        g.manual_seed(seeding.torch_seed(self.seed, 1, self.step, self.rank))
        u = torch.rand(B, generator=g, device=dev)
        pick = (u * self._count[subj]).long().minimum(self._count[subj] - 1)
        scan = self._scans_by_subject[self._first[subj] + pick]                   # (B,)
        span = (self.lengths[scan] - Tc).clamp(min=0).repeat(2)                   # (2B,) both views
        starts = (torch.rand(2 * B, generator=g, device=dev) * (span + 1)).long().minimum(span)
        if self.resident:
            src, rows = self._data, scan.repeat(2)
        else:
            src = _read_zscored(self.scans, scan.cpu().numpy(), self.lengths[scan], dev, Tc)   # (B, C, T)
            rows = torch.arange(B, device=dev).repeat(2)
        x = _gather_crops(src, rows, starts, Tc)                                  # (2B, C, T')
        x = augment(x, g) if self.augment else x.float()
        self.last_scans = scan

        self.step += 1
        self.pos += B * self.world_size
        if self.pos + B * self.world_size > self.n_subjects:
            self.epoch, self.pos = self.epoch + 1, 0
        return x[:B], x[B:]

    def state_dict(self) -> dict:
        """Plain ints: enough to continue exactly (the generators are re-seeded from them)."""
        return {"version": 1, "seed": self.seed, "epoch": self.epoch, "pos": self.pos, "step": self.step,
                "n_subjects": self.n_subjects, "crop_len": self.crop_len}

    def load_state_dict(self, state):
        if state.get("version") != 1:
            raise ValueError(f"unknown sampler state version {state.get('version')!r}")
        if state["n_subjects"] != self.n_subjects or state["crop_len"] != self.crop_len:
            raise ValueError(f"sampler state is for {state['n_subjects']} subjects and crop length "
                             f"{state['crop_len']}, but the data have {self.n_subjects} subjects and crop "
                             f"length {self.crop_len}: resume with the same data")
        self.seed, self.epoch, self.pos, self.step = (int(state[k]) for k in ("seed", "epoch", "pos", "step"))


# ----------------------------------------------------------------------------------------------
# Functional connectivity

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


if __name__ == "__main__":
    from data import load_scans
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) < 2:
        sys.exit("usage: python scans.py path/to/data   (the built-in synthetic cohort: synthetic/pretrain.npy "
                 "after python synthetic.py)")
    sc = load_scans(sys.argv[1])
    x1, x2 = TrainBatches(sc, seed=0).next_batch(min(8, sc.n_subjects))
    print(f"{len(sc)} scans: a training batch of two views {tuple(x1.shape)}, probe crops "
          f"{tuple(probe_crops(sc, [0]).shape)} for one scan, FC {scan_fc(sc, [0]).shape[1:]} per scan")
