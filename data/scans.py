"""Scans: the one form every dataset takes, and the checks and resampling every reader shares (SPEC §1).

A dataset is S scans of C ROI time series on the 2.0 s grid, held as an (S, C, T) array that is
NaN-padded at the end for shorter scans (the valid length of a scan is the index of the first NaN
in its first ROI). `Scans` holds it with its valid lengths and subject ids. The readers (files.py:
.npy arrays and folders of per-scan files; h5.py: the authors' HDF5) build one with:

- `check_scans(data, names)`: valid lengths, and a ValueError naming the scan for every malformed
  one (NaN inside a scan, inf, all-NaN, too short); `roi0_lengths` is its length rule alone;
- `check_n_rois`, `check_float`, `check_lengths`: the cheap checks before and after a pass;
- `resample(x, tr)`, `resample_array(data, lengths, tr)`: band-limited resampling to TR 2.0 s;
- `check_constant(data, lengths, where)`: flat data (all-constant scans, ROIs flat in every scan) are
  an error, a scan with a few flat ROIs a warning.

    python -m data.load path/to/data [tr]   # load a dataset and print what was found
"""
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from machine.progress import Progress

TR = 2.0            # s; the grid the method (and every pretrained model) expects (SPEC §1)
PATCH_LEN = 20      # L; a scan must hold at least one patch


@dataclass
class Scans:
    """A dataset of parcellated scans on the 2.0 s grid.

    data:      (S, C, T) float16/float32, NaN-padded at the end; a read-only np.memmap (possibly a
               transposed view of an (S, T, C) file), an in-RAM array, or an h5.H5Array that
               reads the scans asked for from an open .h5 file. Code here only uses `.shape`,
               `.dtype` and indexing by scan rows (`data[idx]`, `data[a:b]`), which all three serve.
    lengths:   (S,) int64 valid time points per scan.
    subjects:  one subject id per scan (several scans may share one).
    source:    absolute path it was loaded from; `key` hashes path, sizes, mtimes, layout and tr
               so that callers can cache derived features.
    files:     per-scan file names when loaded from a folder, else None.
    roi_names: ROI names from a header row, when the files had one.
    ids_from_data: the ids came with the data (file names, X_subjects.txt, an .h5, `subjects`), not
               made up per scan: only then are labels matched to scans by subject (labels.py).
    atlases, absent_rois: which atlases the data hold and which of the 457 ROIs were filled in for
               the absent ones (data/atlases.py); bandpass: the filter applied on loading.
    """
    data: np.ndarray
    lengths: np.ndarray
    subjects: list
    source: str = ""
    key: str = ""
    files: list = None
    roi_names: list = None
    zeroed_rois: int = 0   # (scan, ROI) pairs that were all-NaN and are treated as flat (zeros)
    ids_from_data: bool = False
    atlases: tuple = None      # the atlases the data hold (data/atlases.py), when known
    absent_rois: np.ndarray = None   # ROIs of absent atlases, filled with zeros (their networks are masked)
    bandpass: tuple = None     # (low, high) Hz when filtered on loading (data/bandpass.py)

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



def check_n_rois(C, n_rois, where):
    """Before any pass over the data: a wrong atlas is the commonest mistake, and the cheapest to catch."""
    if n_rois is not None and C != int(n_rois):
        raise ValueError(f"{where}: the data have {C} ROIs but the network map has {int(n_rois)} entries; the data "
                         "must use the atlas (ROI set and order) the model was pretrained on")


def check_float(arr, where):
    """An .npy's values must be floats (an int or complex array would be cast, or its imaginary part
    dropped, without a word)."""
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{where}: expected float16/float32/float64 values, got dtype {arr.dtype}")



def check_scans(data, names):
    """Valid lengths (S,) of NaN-padded (S, C, T) data; raises on every malformed scan.

    Reads the data once, in chunks of ~64 MB, so a memmap never has to fit in RAM."""
    S, C, T = data.shape
    lengths = np.empty(S, dtype=np.int64)
    zeroed = 0
    step = max(1, (64 << 20) // max(1, C * T * 4))
    progress = Progress(S, "checking scans", min_total=math.inf)
    for s0 in range(0, S, step):
        x = np.asarray(data[s0:s0 + step])                                 # (b, C, T) stored dtype
        nan = np.isnan(x)
        n = roi0_lengths(nan[:, 0, :], s0, names)                         # (b,) ROI 0 defines length
        valid = np.arange(T)[None, :] < n[:, None]                         # (b, T)
        bad = nan & valid[:, None, :]                                      # (b, C, T)
        n_bad = bad.sum(-1)                                                # (b, C)
        whole = n_bad == n[:, None]                                        # no coverage at all: allowed
        partial = (n_bad > 0) & ~whole
        if partial.any():
            j, c = np.argwhere(partial)[0]
            t = int(np.flatnonzero(bad[j, c])[0])
            raise ValueError(f"{scan_name(s0 + j, names)}: NaN in the middle of the scan (ROI {c}, time {t}, "
                             f"valid length {n[j]}); only end padding may be NaN")
        if np.isinf(x).any():
            j, c, t = np.argwhere(np.isinf(x))[0]
            raise ValueError(f"{scan_name(s0 + j, names)}: infinite value at ROI {c}, time {t}")
        zeroed += int(whole.sum())
        lengths[s0:s0 + len(x)] = n
        progress.update(s0 + len(x))
    check_lengths(lengths, names)
    return lengths, zeroed


def roi0_lengths(first, s0, names):
    """Valid lengths (b,) of scans s0.. from the NaN mask (b, T) of their first ROI: the index of the
    first NaN (SPEC §1). Raises on an all-NaN scan and on values after the padding began."""
    T = first.shape[1]
    n = np.where(first.any(1), first.argmax(1), T)                        # (b,)
    if (n == 0).any():
        j = np.flatnonzero(n == 0)[0]
        raise ValueError(f"{scan_name(s0 + j, names)} is all NaN: no valid time points (the valid length "
                         "is the index of the first NaN in the scan's first ROI)")
    gap = ~first & (np.arange(T)[None, :] >= n[:, None])                   # values after the padding began
    if gap.any():
        j, t = np.argwhere(gap)[0]
        raise ValueError(f"{scan_name(s0 + j, names)}: NaN in the middle of the scan (ROI 0 is NaN at time "
                         f"{n[j]} but has values again at time {t}); only end padding may be NaN")
    return n


def check_lengths(lengths, names, resampled=False):
    short = np.flatnonzero(lengths < PATCH_LEN)
    if len(short):
        j = short[0]
        raise ValueError(f"{scan_name(j, names)} has {lengths[j]} valid time points"
                         f"{' after resampling to TR 2.0 s' if resampled else ''}, fewer than one patch "
                         f"({PATCH_LEN}); remove it" + (f" ({len(short)} such scans)" if len(short) > 1 else ""))


def scan_name(i, names):
    """How messages refer to a scan: its index in an array, or its file (checked one at a time)."""
    return names[0] if names else f"scan {i}"


def flat_rois(data, lengths, idx):
    """(len(idx), C) bool: ROIs without variation over the valid length of scans idx (constant, or all
    NaN). One chunked pass over those scans (~64 MB at a time)."""
    _, C, T = data.shape
    flat = np.empty((len(idx), C), dtype=bool)
    step = max(1, (64 << 20) // max(1, C * T * 4))
    progress = Progress(len(idx), "checking for constant ROIs", min_total=math.inf)
    for i in range(0, len(idx), step):
        j = idx[i:i + step]
        x = np.asarray(data[j])                                            # (b, C, T) stored dtype
        padding = np.arange(T)[None, None, :] >= lengths[j, None, None]    # (b, 1, T)
        # every valid point equal to the first; a NaN first point: an uncovered ROI (NaN throughout)
        flat[i:i + len(j)] = ((x == x[:, :, :1]) | padding).all(-1) | np.isnan(x[:, :, 0])
        progress.update(i + len(j))
    return flat


def check_constant(data, lengths, where, names=None, max_scans=None):
    """Scans constant in every ROI, or ROIs constant in every scan: a ValueError saying how many and
    where (nothing a model could learn from; often a failed extraction). Returns a warning (str) for
    scans with a few constant ROIs, else None. max_scans: check that many evenly spaced scans only
    (a streamed .h5, which is otherwise never read whole)."""
    S = len(lengths)
    idx = np.arange(S) if max_scans is None or S <= max_scans else np.unique(np.linspace(0, S - 1, max_scans).astype(int))
    flat = flat_rois(data, lengths, idx)                                   # (n, C)
    of = f"{len(idx)} scans checked" if len(idx) < S else f"{S} scans"
    name = lambda j: scan_name(idx[j], [names[idx[j]]] if names else None)  # noqa: E731
    dead = np.flatnonzero(flat.all(1))
    if len(dead):
        raise ValueError(f"{where}: {len(dead)} of {of} are constant in every ROI ({', '.join(map(name, dead[:5]))}"
                         f"{', ...' if len(dead) > 5 else ''}); remove them or redo their extraction")
    dead = np.flatnonzero(flat.all(0))
    if len(dead) and len(flat) > 1:
        raise ValueError(f"{where}: {len(dead)} of {flat.shape[1]} ROIs are constant (or NaN) in every one of {of} "
                         f"(ROI {', '.join(map(str, dead[:10]))}{', ...' if len(dead) > 10 else ''}): the atlas or "
                         f"the extraction is wrong for them")
    some = np.flatnonzero(flat.any(1))
    if len(some):
        return (f"{where}: {len(some)} of {of} have constant or uncovered ROIs (up to {int(flat.sum(1).max())} of "
                f"{flat.shape[1]}, e.g. {name(some[0])}); they read as zeros after z-scoring")
    return None


def resample(x, tr):
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


def resample_array(data, lengths, tr):
    """Resample every scan of (S, C, T) data into RAM, in the file's dtype (a float16 file stays
    float16: half the memory, no precision lost that the file had); scans of equal length go through
    scipy together."""
    S, C, _ = data.shape
    new_len = np.rint(lengths * tr / TR).astype(np.int64)
    out = np.full((S, C, max(1, new_len.max())), np.nan, dtype=data.dtype)   # (S, C, T_new)
    for idx, n in equal_length_chunks(lengths, C, "resampling to TR 2.0 s"):
        y = resample(np.asarray(data[idx][:, :, :n], dtype=np.float32), tr)   # (b, C, n_new)
        out[idx, :, :y.shape[-1]] = y
    return out, new_len


def equal_length_chunks(lengths, n_rois, what):
    """(scan indices, their length n) in chunks of scans of one length, ~64 MB of float64 each, so that
    a per-length operator (resampling, the band-pass matrix) runs on many scans at once; progress as `what`."""
    progress = Progress(len(lengths), what, min_total=200)
    done = 0
    for n in np.unique(lengths):
        group = np.flatnonzero(lengths == n)
        step = max(1, (64 << 20) // (n_rois * n * 8))
        for g0 in range(0, len(group), step):
            idx = group[g0:g0 + step]
            yield idx, int(n)
            done += len(idx)
            progress.update(done)
