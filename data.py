"""Data: loading and validating the parcellated fMRI a user brings (SPEC §1).

A dataset is S scans of C ROI time series on a 2.0 s grid, held as an (S, C, T) array that is
NaN-padded at the end for shorter scans (the valid length of a scan is the index of the first NaN
in its first ROI). This module turns what a user has into that form, a `Scans`, and checks it:

- `load_scans(path, layout="SCT", tr=None, n_rois=None, subjects=None) -> Scans`: a memory-mapped
  `.npy` (S, C, T) or (S, T, C), a folder of per-scan `.npy`/`.csv`/`.tsv` files shaped (T, C) as
  nilearn maskers and XCP-D write them, or an `.h5` in the authors' layout (h5data.py, streamed).
  `tr` resamples every scan to the 2.0 s grid; subject ids come from BIDS file names, a sidecar
  `X_subjects.txt`, the .h5's ids or the `subjects` argument. Every input error is a ValueError
  that names the scan.

What the method does to scans (z-scoring, crops, augmentation, the training batches, FC) is
scans.py; the built-in synthetic cohort (used when no data are given, and by the tests) is
synthetic.py.

    python data.py path/to/data [tr]   # load a dataset and print what was found
"""
import io
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from fileio import file_key
from labels import MISSING
from progress import Progress

log = logging.getLogger("brain_semantoks.data")

TR = 2.0            # s; the grid the method (and every pretrained model) expects (SPEC §1)
PATCH_LEN = 20      # L; a scan must hold at least one patch
FILE_SUFFIXES = (".npy", ".csv", ".tsv")
H5_SUFFIXES = (".h5", ".hdf5")          # the authors' datasets (h5data.py)
# missing-value spellings (BIDS/XCP-D write n/a) that numpy does not parse, as whole fields only; an
# empty field stays a parse error: in a time-series table it means a malformed row, not a gap
_MISSING_FIELD = "(?:" + "|".join(re.escape(t) for t in sorted(MISSING - {"", "nan"}, key=len, reverse=True)) + ")"


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
    ids_from_data: the ids came with the data (file names, X_subjects.txt, an .h5, `subjects`), not
               made up per scan: only then are labels matched to scans by subject (labels.py).
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


def check_no_data_options(given, cohort):
    """Options that describe --data (--subjects, --tr, --layout), given without --data: an error
    naming the built-in `cohort` they would otherwise be applied to. given: the flags set, e.g. {"--tr"}."""
    for flag, why in (("--subjects", "carries its own ids"), ("--tr", "is at TR 2.0 s already"),
                      ("--layout", "is stored (scans, ROIs, time)")):
        if flag in given:
            raise ValueError(f"{flag} describes --data; {cohort} {why}")


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
    n_rois:   expected ROI count (the network map's length); when given, checked before any pass over the data.
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

    scans.ids_from_data = True   # a folder's file names, an .h5's ids, `subjects` or the sidecar
    if subjects is not None:
        scans.subjects = _read_subjects(subjects, len(scans))
    elif path.suffix == ".npy" and not path.is_dir():
        sidecar = subjects_path(path)
        scans.ids_from_data = sidecar.exists()
        scans.subjects = (_read_subjects(sidecar, len(scans)) if scans.ids_from_data
                          else [f"scan{i:05d}" for i in range(len(scans))])
    if scans.zeroed_rois:
        log.warning("%d (scan, ROI) time series are NaN over the whole scan (no coverage); "
                    "they are treated as flat (zeros after z-scoring)", scans.zeroed_rois)
    return scans


def is_h5(path) -> bool:
    """Whether `path` names an HDF5 file (read by h5data.py in the authors' layout)."""
    return Path(path).suffix.lower() in H5_SUFFIXES and not Path(path).is_dir()


def subjects_path(path) -> Path:
    """X_subjects.txt beside X.npy (or X.csv): the ids load_scans reads, embed.py and synthetic.py write."""
    return Path(path).with_name(Path(path).stem + "_subjects.txt")


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


def _check_n_rois(C, n_rois, where):
    """Before any pass over the data: a wrong atlas is the commonest mistake, and the cheapest to catch."""
    if n_rois is not None and C != int(n_rois):
        raise ValueError(f"{where}: the data have {C} ROIs but the network map has {int(n_rois)} entries; the data "
                         "must use the atlas (ROI set and order) the model was pretrained on")


def _check_float(arr, where):
    """An .npy's values must be floats (an int or complex array would be cast, or its imaginary part
    dropped, without a word)."""
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{where}: expected float16/float32/float64 values, got dtype {arr.dtype}")


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
    _check_float(arr, path)
    if 0 in arr.shape:   # else an IndexError or numpy's argmax error from deep inside the checks
        axes = ("scans", "time points", "ROIs") if layout == "STC" else ("scans", "ROIs", "time points")
        raise ValueError(f"{path}: shape {arr.shape} ({', '.join(axes)}) holds no {axes[arr.shape.index(0)]}")
    data = arr.transpose(0, 2, 1) if layout == "STC" else arr   # a strided view: nothing is read
    _check_n_rois(data.shape[1], n_rois, path)
    lengths, zeroed = _check_scans(data, names=None)
    if tr is not None:
        data, lengths = _resample_array(data, lengths, tr)
        _check_lengths(lengths, None, resampled=True)
    return Scans(data=data, lengths=lengths, subjects=[], source=str(path.resolve()),
                 key=file_key([path], layout, tr), zeroed_rois=zeroed)


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
        if f.lower() in MISSING:
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
    body = re.sub(rf"(?<![^{delim}\n]){_MISSING_FIELD}(?![^{delim}\n])", "nan", body, flags=re.IGNORECASE)
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
    progress = Progress(len(files), "loading scans", min_total=200)
    for i, f in enumerate(files):
        if f.suffix == ".npy":
            try:
                x = np.load(f)
            except Exception as e:
                raise ValueError(f"{f.name}: cannot read as .npy ({e})") from None
            names = None
            _check_float(x, f.name)
            if x.ndim != 2:
                raise ValueError(f"{f.name}: expected a 2-D array (time, ROIs) per file, got shape {x.shape}")
        else:
            x, names = _read_table(f)
        if x.size == 0:
            raise ValueError(f"{f.name}: no time points")
        if n_rois is None:
            n_rois, first_file = x.shape[1], f.name
            _check_n_rois(n_rois, n_expected, f.name)
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
                 source=str(folder.resolve()), key=file_key(files, tr), files=[f.name for f in files],
                 roi_names=roi_names, zeroed_rois=zeroed)


def _check_scans(data, names):
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
    progress = Progress(S, "resampling to TR 2.0 s", min_total=200)
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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) > 1:
        sc = load_scans(sys.argv[1], tr=float(sys.argv[2]) if len(sys.argv) > 2 else None)
        print(f"{sc.source}: {len(sc)} scans, {sc.n_subjects} subjects, {sc.n_rois} ROIs, valid lengths "
              f"{sc.lengths.min()}-{sc.lengths.max()} (median {int(np.median(sc.lengths))}) at TR 2.0 s")
    else:
        print("usage: python data.py path/to/data [tr]   (the built-in synthetic cohort: python synthetic.py)")
