"""Data: loading parcellated fMRI, normalising it, and serving crops (SPEC §1, §9).

A dataset is S scans of C ROI time series on a 2.0 s grid, held as an (S, C, T) array that is
NaN-padded at the end for shorter scans (the valid length of a scan is the index of the first NaN
in its first ROI). Everything downstream sees scans only through this module:

- `load_scans(path, layout="SCT", tr=None, n_rois=None) -> Scans`: a memory-mapped `.npy`
  (S, C, T) or (S, T, C), or a folder of per-scan `.npy`/`.csv`/`.tsv` files shaped (T, C) as
  nilearn maskers and XCP-D write them, or an `.h5` in the authors' layout (h5data.py, streamed).
  Every input error is a ValueError that names the scan.
- `zscore(x, lengths)`: per-ROI z-scoring over each scan's valid length; padding becomes 0.
- `TrainBatches(scans, device, ...)`: the pretraining batch source. Two independently cropped and
  augmented views per scan, all randomness from a torch.Generator on the training device,
  resumable bit for bit through `state_dict()` / `load_state_dict()`.
- `augment(x, generator)`: the four SPEC §1 augmentations, vectorised over the batch.
- `probe_crops(scans, idx)`: 8 evenly spaced, z-scored, un-augmented crops per scan (SPEC §9).
- `scan_fc(scans, idx)`, `group_fc(scans)`: Pearson functional connectivity (the FC baseline and
  `--networks auto:K`).

The built-in synthetic cohort (used when no data are given, and by the tests) is synthetic.py.

    python data.py path/to/data   # load a dataset and print what was found
"""
import hashlib
import io
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("brain_semantoks.data")

TR = 2.0            # s; the grid the method (and every pretrained model) expects (SPEC §1)
PATCH_LEN = 20      # L; a scan must hold at least one patch
CROP_LEN = 100      # T'
N_PROBE_CROPS = 8
EPS = 1e-8          # z-score guard for flat ROIs (SPEC §1)
FILE_SUFFIXES = (".npy", ".csv", ".tsv")
H5_SUFFIXES = (".h5", ".hdf5")          # the authors' datasets (h5data.py)
_NAN_TOKENS = ("n/a", "na", "nan", "")   # what BIDS/XCP-D TSVs write for missing values


# ----------------------------------------------------------------------------------------------
# Loading

@dataclass
class Scans:
    """A dataset of parcellated scans on the 2.0 s grid.

    data:      (S, C, T) float16/float32, NaN-padded at the end; a read-only np.memmap (possibly a
               transposed view of an (S, T, C) file), an in-RAM array, or an h5data.H5Array that
               reads the scans asked for from an open .h5 file. Code here only uses `.shape`,
               `.dtype` and indexing by scan rows (`data[idx]`, `data[a:b]`), which all three serve.
    lengths:   (S,) int64 valid time points per scan.
    subjects:  one subject id per scan (several scans may share one).
    source:    absolute path it was loaded from; `key` hashes path, sizes, mtimes, layout and tr
               so that callers can cache derived features.
    files:     per-scan file names when loaded from a folder, else None.
    roi_names: ROI names from a header row, when the files had one.
    """
    data: np.ndarray
    lengths: np.ndarray
    subjects: list
    source: str = ""
    key: str = ""
    files: list = None
    roi_names: list = None
    zeroed_rois: int = 0   # (scan, ROI) pairs that were all-NaN and are treated as flat (zeros)

    @property
    def n_rois(self) -> int:
        return int(self.data.shape[1])

    @property
    def n_subjects(self) -> int:
        return len(set(self.subjects))

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def read(self, idx, dtype=np.float32) -> np.ndarray:
        """Scans `idx` as a (len(idx), C, T) array (dtype None: the stored one, e.g. float16 to halve a
        host-to-device copy); sorted reads keep memmap I/O sequential."""
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx),) + self.data.shape[1:], dtype=dtype or self.data.dtype)
        out[order] = self.data[idx[order]]
        return out


def load_scans(path, layout="SCT", tr=None, n_rois=None, subjects=None) -> Scans:
    """Load a dataset of parcellated scans.

    path:     an `.npy` file holding (S, C, T) (or (S, T, C) with layout="STC"), float16/float32,
              opened memory-mapped, shorter scans NaN-padded at the end; or a folder of per-scan
              `.npy`/`.csv`/`.tsv` files, each (T, C) with time in rows (nilearn/XCP-D layout), an
              optional header row of ROI names, any lengths; or an `.h5`/`.hdf5` file in the authors'
              layout (timeseries/schaefer400, tian3, buckner7 concatenated into 457 ROIs, streamed
              scan by scan; see h5data.py).
    layout:   "SCT" or "STC", for a single `.npy` only (folder files are always time × ROIs).
    tr:       repetition time of the data in seconds. The method works on a 2.0 s grid; with
              tr given, every scan is resampled (band-limited, scipy.signal.resample_poly) to
              round(T·tr/2.0) points before anything else. With tr=None the data are ASSUMED to be
              at TR 2.0 s already: pass --tr for any other acquisition (e.g. 0.72 for HCP, 0.735
              for UK Biobank), or every time scale the model learned is off. Resampling a single
              `.npy` or `.h5` builds the result in RAM (in the file's dtype); a folder is held in RAM as
              float32 either way.
    n_rois:   expected ROI count (the network map's length); checked when given.
    subjects: one subject id per scan (list, or a text file with one per line). Default: for a
              folder, the BIDS id of each file name (`sub-XXXX_ses-YY_...` -> "XXXX", else the
              file stem); for `X.npy`, the lines of `X_subjects.txt` beside it when present,
              else every scan is its own subject; for an `.h5`, its long_subject_id dataset.

    Folder files with header rows must all list the same ROI names in the same order.
    ROIs that are NaN over a scan's whole valid length (no coverage; XCP-D writes n/a) are kept
    and treated as flat (they z-score to 0, like a dropped ROI); any other NaN/inf is an error.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if layout not in ("SCT", "STC"):
        raise ValueError(f"layout must be 'SCT' (scans, ROIs, time) or 'STC' (scans, time, ROIs); got {layout!r}")
    if tr is not None and not (float(tr) > 0 and math.isfinite(float(tr))):
        raise ValueError(f"tr must be a positive number of seconds; got {tr!r}")
    tr = None if tr is None or float(tr) == TR else float(tr)

    if path.is_dir():
        scans = _load_folder(path, tr, n_rois)
    elif is_h5(path):
        if layout != "SCT":
            raise ValueError(f"{path}: --layout applies to a single .npy; an .h5 file in the authors' layout is "
                             "always (scans, ROIs, time)")
        from h5data import load_h5   # imported here: h5py is needed only for .h5 files
        scans = load_h5(path, tr, n_rois, need_ids=subjects is None)
    else:
        scans = _load_array(path, layout, tr, n_rois)

    if subjects is not None:
        scans.subjects = _read_subjects(subjects, len(scans))
    elif path.suffix == ".npy" and not path.is_dir():
        sidecar = path.with_name(path.stem + "_subjects.txt")
        scans.subjects = (_read_subjects(sidecar, len(scans)) if sidecar.exists()
                          else [f"scan{i:05d}" for i in range(len(scans))])
    if scans.zeroed_rois:
        log.warning("%d (scan, ROI) time series are NaN over the whole scan (no coverage); "
                    "they are treated as flat (zeros after z-scoring)", scans.zeroed_rois)
    return scans


def is_h5(path) -> bool:
    """Whether `path` names an HDF5 file (read by h5data.py in the authors' layout)."""
    return Path(path).suffix.lower() in H5_SUFFIXES and not Path(path).is_dir()


def _read_subjects(subjects, n):
    where = ""
    if isinstance(subjects, (str, os.PathLike)):
        p = Path(subjects)
        if not p.exists():
            raise ValueError(f"no such file: {p}")
        subjects, where = [s.strip() for s in p.read_text().splitlines() if s.strip()], f"{p}: "
    subjects = [str(s) for s in subjects]
    if len(subjects) != n:
        raise ValueError(f"{where}got {len(subjects)} subject ids for {n} scans (one id per scan, in scan order)")
    return subjects


def _file_key(paths, *extra):
    h = hashlib.sha1()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(repr(extra).encode())
    return h.hexdigest()[:16]


def _check_n_rois(C, n_rois):
    if n_rois is not None and C != int(n_rois):
        raise ValueError(f"data have {C} ROIs but the network map has {int(n_rois)} entries")


def _load_array(path, layout, tr, n_rois):
    if path.suffix != ".npy":
        raise ValueError(f"{path}: expected an .npy file (S, C, T), an .h5 file in the authors' layout, "
                         "or a folder of per-scan files")
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception as e:  # truncated/corrupt/not-an-npy: say which file
        raise ValueError(f"{path}: cannot read as .npy ({e})") from None
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D array (scans, ROIs, time) "
                         f"{'(layout STC: scans, time, ROIs) ' if layout == 'STC' else ''}got shape {arr.shape}")
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{path}: expected float16/float32 values, got dtype {arr.dtype}")
    data = arr.transpose(0, 2, 1) if layout == "STC" else arr   # a strided view: nothing is read
    _check_n_rois(data.shape[1], n_rois)
    lengths, zeroed = _check_scans(data, names=None)
    if tr is not None:
        data, lengths = _resample_array(data, lengths, tr)
        _check_lengths(lengths, None, resampled=True)
    return Scans(data=data, lengths=lengths, subjects=[], source=str(path.resolve()),
                 key=_file_key([path], layout, tr), zeroed_rois=zeroed)


def _bids_subject(stem):
    m = re.search(r"(?:^|_)sub-([A-Za-z0-9]+)", stem)
    return m.group(1) if m else stem


def _read_table(path):
    """A (T, C) float32 array and the header's ROI names (or None) from one .csv/.tsv file."""
    text = path.read_text()
    delim = "\t" if path.suffix == ".tsv" else ","
    lines = text.splitlines() or [""]
    first = [f.strip().strip('"') for f in lines[0].split(delim)]

    def numeric(f):
        if f.lower() in _NAN_TOKENS:
            return True
        try:
            float(f)
            return True
        except ValueError:
            return False

    names = None
    if not all(numeric(f) for f in first):
        names, lines = first, lines[1:]
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path.name}: no time points")
    body = "\n".join(lines)
    # missing-value spellings numpy does not parse (BIDS writes n/a), as whole fields only
    body = re.sub(rf"(?<![^{delim}\n])(?:n/a|na)(?![^{delim}\n])", "nan", body, flags=re.IGNORECASE)
    try:
        x = np.loadtxt(io.StringIO(body), delimiter=delim, dtype=np.float32, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path.name}: cannot parse as a {path.suffix[1:].upper()} table of numbers "
                         f"(time in rows, ROIs in columns): {e}") from None
    if names is not None and names[0] in ("", "Unnamed: 0") and x.shape[1] == len(names):
        x, names = x[:, 1:], names[1:]   # a pandas index column
    return x, names


def _load_folder(folder, tr, n_expected):
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix in FILE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder}: folder contains no {'/'.join(FILE_SUFFIXES)} files")
    series, roi_names, n_rois, zeroed = [], None, None, 0
    progress = _Progress(len(files), "loading scans")
    for i, f in enumerate(files):
        if f.suffix == ".npy":
            try:
                x = np.load(f)
            except Exception as e:
                raise ValueError(f"{f.name}: cannot read as .npy ({e})") from None
            names = None
            if x.ndim != 2:
                raise ValueError(f"{f.name}: expected a 2-D array (time, ROIs) per file, got shape {x.shape}")
        else:
            x, names = _read_table(f)
        if x.size == 0:
            raise ValueError(f"{f.name}: no time points")
        if n_rois is None:
            n_rois, first_file = x.shape[1], f.name
            _check_n_rois(n_rois, n_expected)
        elif x.shape[1] != n_rois:
            raise ValueError(f"{f.name}: has {x.shape[1]} ROIs (columns) but {first_file} has {n_rois}; "
                             "all files must share one atlas, stored time × ROIs (time in rows)")
        if names is not None:   # a header is the only guard against files with different ROI orders
            if roi_names is None:
                roi_names, names_file = names, f.name
            elif names != roi_names:
                c = next(i for i, (a, b) in enumerate(zip(names, roi_names)) if a != b)
                raise ValueError(f"{f.name}: header ROI names differ from {names_file}'s (column {c}: "
                                 f"{names[c]!r} vs {roi_names[c]!r}); all files must list ROIs in one order")
        x = np.ascontiguousarray(x.T, dtype=np.float32)   # (C, T)
        lengths, z = _check_scans(x[None], names=[f.name])
        zeroed += z
        x = x[:, :lengths[0]]
        if tr is not None:
            x = _resample(x, tr)
            _check_lengths(np.array([x.shape[1]]), [f.name], resampled=True)
        series.append(x)
        progress.update(i + 1)
    lengths = np.array([x.shape[1] for x in series], dtype=np.int64)
    data = np.full((len(series), n_rois, lengths.max()), np.nan, dtype=np.float32)   # (S, C, T)
    for i, x in enumerate(series):
        data[i, :, :x.shape[1]] = x
        series[i] = None   # keep the peak at one copy
    return Scans(data=data, lengths=lengths, subjects=[_bids_subject(f.stem) for f in files],
                 source=str(folder.resolve()), key=_file_key(files, tr), files=[f.name for f in files],
                 roi_names=roi_names, zeroed_rois=zeroed)


def _check_scans(data, names):
    """Valid lengths (S,) of NaN-padded (S, C, T) data; raises on every malformed scan.

    Reads the data once, in chunks of ~64 MB, so a memmap never has to fit in RAM."""
    S, C, T = data.shape
    lengths = np.empty(S, dtype=np.int64)
    zeroed = 0
    step = max(1, (64 << 20) // max(1, C * T * 4))
    progress = _Progress(S, "checking scans", min_total=math.inf)
    for s0 in range(0, S, step):
        x = np.asarray(data[s0:s0 + step])                                 # (b, C, T) stored dtype
        nan = np.isnan(x)
        n = _roi0_lengths(nan[:, 0, :], s0, names)                         # (b,) ROI 0 defines length
        valid = np.arange(T)[None, :] < n[:, None]                         # (b, T)
        bad = nan & valid[:, None, :]                                      # (b, C, T)
        n_bad = bad.sum(-1)                                                # (b, C)
        whole = n_bad == n[:, None]                                        # no coverage at all: allowed
        partial = (n_bad > 0) & ~whole
        if partial.any():
            j, c = np.argwhere(partial)[0]
            t = int(np.flatnonzero(bad[j, c])[0])
            raise ValueError(f"{_name(s0 + j, names)}: NaN in the middle of the scan (ROI {c}, time {t}, "
                             f"valid length {n[j]}); only end padding may be NaN")
        if np.isinf(x).any():
            j, c, t = np.argwhere(np.isinf(x))[0]
            raise ValueError(f"{_name(s0 + j, names)}: infinite value at ROI {c}, time {t}")
        zeroed += int(whole.sum())
        lengths[s0:s0 + len(x)] = n
        progress.update(s0 + len(x))
    _check_lengths(lengths, names)
    return lengths, zeroed


def _roi0_lengths(first, s0, names):
    """Valid lengths (b,) of scans s0.. from the NaN mask (b, T) of their first ROI: the index of the
    first NaN (SPEC §1). Raises on an all-NaN scan and on values after the padding began."""
    T = first.shape[1]
    n = np.where(first.any(1), first.argmax(1), T)                        # (b,)
    if (n == 0).any():
        j = np.flatnonzero(n == 0)[0]
        raise ValueError(f"{_name(s0 + j, names)} is all NaN: no valid time points (the valid length "
                         "is the index of the first NaN in the scan's first ROI)")
    gap = ~first & (np.arange(T)[None, :] >= n[:, None])                   # values after the padding began
    if gap.any():
        j, t = np.argwhere(gap)[0]
        raise ValueError(f"{_name(s0 + j, names)}: NaN in the middle of the scan (ROI 0 is NaN at time "
                         f"{n[j]} but has values again at time {t}); only end padding may be NaN")
    return n


def _check_lengths(lengths, names, resampled=False):
    short = np.flatnonzero(lengths < PATCH_LEN)
    if len(short):
        j = short[0]
        raise ValueError(f"{_name(j, names)} has {lengths[j]} valid time points"
                         f"{' after resampling to TR 2.0 s' if resampled else ''}, fewer than one patch "
                         f"({PATCH_LEN}); remove it" + (f" ({len(short)} such scans)" if len(short) > 1 else ""))


def _name(i, names):
    """How messages refer to a scan: its index in an array, or its file (checked one at a time)."""
    return names[0] if names else f"scan {i}"


def _resample(x, tr):
    """(..., T) at TR `tr` -> (..., round(T·tr/2.0)) on the 2.0 s grid, band-limited.

    resample_poly low-passes at the new Nyquist before decimating; padtype="line" avoids the edge
    dip that zero padding causes on signals with a DC offset."""
    from scipy.signal import resample_poly
    T = x.shape[-1]
    n_new = int(round(T * tr / TR))
    ratio = Fraction(tr / TR).limit_denominator(64)
    y = resample_poly(np.asarray(x, dtype=np.float64), ratio.numerator, ratio.denominator, axis=-1,
                      padtype="line")
    if y.shape[-1] < n_new:   # a rational approximation of tr/2 can fall one sample short
        y = np.concatenate([y, np.repeat(y[..., -1:], n_new - y.shape[-1], axis=-1)], axis=-1)
    return y[..., :n_new].astype(np.float32)


def _resample_array(data, lengths, tr):
    """Resample every scan of (S, C, T) data into RAM, in the file's dtype (a float16 file stays
    float16: half the memory, no precision lost that the file had); scans of equal length go through
    scipy together."""
    S, C, _ = data.shape
    new_len = np.rint(lengths * tr / TR).astype(np.int64)
    out = np.full((S, C, max(1, new_len.max())), np.nan, dtype=data.dtype)   # (S, C, T_new)
    progress = _Progress(S, "resampling to TR 2.0 s")
    done = 0
    for n in np.unique(lengths):
        group = np.flatnonzero(lengths == n)
        step = max(1, (64 << 20) // (C * n * 8))
        for g0 in range(0, len(group), step):
            idx = group[g0:g0 + step]
            y = _resample(np.asarray(data[idx][:, :, :n], dtype=np.float32), tr)   # (b, C, n_new)
            out[idx, :, :y.shape[-1]] = y
            done += len(idx)
            progress.update(done)
    return out, new_len


class _Progress:
    """A stderr progress counter with ETA for jobs worth waiting on (at least `min_total` items, or
    running for more than 2 s): one rewritten line on a terminal, a line every 5 s in a log file."""

    def __init__(self, total, what, min_total=200):
        self.total, self.what, self.t0, self.last = total, what, time.time(), 0.0
        self.on = total >= min_total
        self.tty = sys.stderr.isatty()

    def update(self, done):
        now = time.time()
        self.on = self.on or now - self.t0 > 2.0
        if not self.on or (now - self.last < (0.5 if self.tty else 5.0) and done < self.total):
            return
        self.last = now
        eta = (now - self.t0) / done * (self.total - done)
        start, end = ("\r", "\n" if done >= self.total else "") if self.tty else ("", "\n")
        sys.stderr.write(f"{start}{self.what}: {done}/{self.total} "
                         f"({100 * done / self.total:.0f}%, ETA {eta:.0f} s)   {end}")
        sys.stderr.flush()


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
    z = _pad_time(zscore(torch.from_numpy(scans.read(idx, None)).to(device), lengths), crop_len)  # (b, C, T)
    starts = torch.as_tensor(crop_starts(scans.lengths[idx], crop_len, n_crops), device=device)
    b = len(idx)
    rows = torch.arange(b, device=device).repeat_interleave(n_crops)             # (b·n,)
    crops = _gather_crops(z, rows, starts.reshape(-1), crop_len)                 # (b·n, C, T')
    return crops.reshape(b, n_crops, scans.n_rois, crop_len)                     # (b, n, C, T')


# ----------------------------------------------------------------------------------------------
# Pretraining batches

def _mix(*ints) -> int:
    """A 63-bit seed from integers (seed, stream, counter): splitmix-style, stable across runs."""
    h = 0x9E3779B97F4A7C15
    for v in ints:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


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

    Randomness: the epoch permutation is drawn from a torch.Generator seeded by (seed, epoch), each
    batch's draws from one seeded by (seed, step, rank), all on `device`. So a run is reproducible
    for a seed and device type, `state_dict()` is just counters, and `load_state_dict()` resumes
    with bitwise the same batches. With several processes (rank/world_size), all ranks share the
    epoch permutation and each takes its own slice of the global batch.

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
        return self.n_subjects // (batch_size * self.world_size)

    def _epoch_order(self):
        if self._order_epoch != self.epoch:
            self._gen.manual_seed(_mix(self.seed, 0, self.epoch))
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
        g.manual_seed(_mix(self.seed, 1, self.step, self.rank))
        u = torch.rand(B, generator=g, device=dev)
        pick = (u * self._count[subj]).long().minimum(self._count[subj] - 1)
        scan = self._scans_by_subject[self._first[subj] + pick]                   # (B,)
        span = (self.lengths[scan] - Tc).clamp(min=0).repeat(2)                   # (2B,) both views
        starts = (torch.rand(2 * B, generator=g, device=dev) * (span + 1)).long().minimum(span)
        if self.resident:
            src, rows = self._data, scan.repeat(2)
        else:
            x = torch.from_numpy(self.scans.read(scan.cpu().numpy(), None)).to(dev)   # (B, C, T)
            src = _pad_time(zscore(x, self.lengths[scan]), Tc)
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
        total += np.arctanh(np.clip(fc, -1 + 1e-6, 1 - 1e-6)).sum(0)
    fc = np.tanh(total / len(idx))
    np.fill_diagonal(fc, 1.0)
    return fc


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) > 1:
        sc = load_scans(sys.argv[1], tr=float(sys.argv[2]) if len(sys.argv) > 2 else None)
        print(f"{sc.source}: {len(sc)} scans, {sc.n_subjects} subjects, {sc.n_rois} ROIs, valid lengths "
              f"{sc.lengths.min()}-{sc.lengths.max()} (median {int(np.median(sc.lengths))}) at TR 2.0 s")
    else:
        print("usage: python data.py path/to/data [tr]   (the built-in synthetic cohort: python synthetic.py)")
