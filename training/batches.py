"""The pretraining batch source: two cropped, augmented views of one scan per subject (SPEC §1, §8).

`TrainBatches(scans, device, ...)`: all randomness from a torch.Generator on the training device,
resumable bit for bit through `state_dict()` / `load_state_dict()`; `steps_per_epoch` is the one
rule of schedules.py. The crops and augmentations themselves are data/preprocess.py's.

    python -m pytest -q tests/test_scans.py
"""
import logging

import numpy as np
import torch

from data.preprocess import CROP_LEN, augment, gather_crops, read_zscored, zscore
from machine import seeding
from training import schedules

log = logging.getLogger("brain_semantoks.scans")


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
            src = read_zscored(self.scans, scan.cpu().numpy(), self.lengths[scan], dev, Tc)   # (B, C, T)
            rows = torch.arange(B, device=dev).repeat(2)
        x = gather_crops(src, rows, starts, Tc)                                  # (2B, C, T')
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
