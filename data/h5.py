"""The authors' HDF5 datasets, read as they are and streamed (SPEC §1, §2).

The authors' code keeps a dataset in one HDF5 file (their data/dataset.py reads it, their
example.ipynb writes one):

    timeseries/schaefer400   (S, 400, T)  Schaefer-400, 7-network order    float16 in their files
    timeseries/tian3         (S, 50, T)   Tian subcortex S3
    timeseries/buckner7      (S, 7, T)    Buckner cerebellum
    long_subject_id          (S,)         subject id per scan (bytes; ints work too)
    ts_len                   (S,)         optional: valid length per scan
    sex_bi, age, labels/sex  (S,)         labels: every other dataset of one value per scan

The three atlases are concatenated in that order into the default 457 ROIs (SPEC §2). Shorter scans
are NaN-padded at the end as in an .npy: the valid length is the index of the first NaN of ROI 0,
capped by ts_len when the file has one. Nothing is read whole: `H5Array` stands in for the (S, C, T)
array and reads only the scans asked for; valid lengths come from ROI 0 alone, in chunks. Unlike an
.npy, the other ROIs are not scanned for stray NaN/inf (that would read the whole file); like the
authors' code, z-scoring turns a NaN inside a scan into 0. `tr=` resampling builds the result in RAM.

load.load_scans dispatches .h5/.hdf5 files to `load_h5`; labels.py reads labels with `read_label`.

    python -m data.h5 dataset.h5     # describe a file: atlases, scans, lengths, label datasets
"""
import math
import sys
from pathlib import Path

import h5py
import numpy as np

from data.atlases import ALL as ATLASES, ATLASES as ATLAS_ROIS
from data.scans import Scans, check_lengths, resample_array, roi0_lengths
from machine.fileio import file_key
from machine.progress import Progress

NOT_LABELS = ("timeseries", "long_subject_id", "ts_len")


class H5Array:
    """The three atlas datasets as one lazily read (S, C, T) array, concatenated along ROIs.

    Serves what load.py and preprocess.py ask of Scans.data: `.shape`, `.dtype`, `len()`, and indexing
    whose first index picks scans (an int, a slice, or an array of indices; further indices apply to
    the (ROI, time) block read). No np.asarray: that would read the whole file into RAM. h5py needs increasing indices, so an index array is sorted and
    de-duplicated for the read and the rows are put back in the order asked."""

    def __init__(self, file, datasets):
        self.file, self.datasets = file, datasets        # the open file keeps the datasets readable
        S, _, T = datasets[0].shape
        self.shape = (S, sum(d.shape[1] for d in datasets), T)
        self.dtype = np.result_type(*(d.dtype for d in datasets))

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        one = isinstance(rows, (int, np.integer))
        idx = np.arange(self.shape[0])[rows]                      # int, slice, list, mask -> indices
        x = self._read(np.atleast_1d(idx))                        # (n, C, T)
        return x[0][rest] if one else x[(slice(None),) + rest]

    def _read(self, idx):
        """Scans idx (n,) -> (n, C, T) in the stored dtype, read in increasing order."""
        uniq, inverse = np.unique(idx, return_inverse=True)
        if len(uniq) == 0:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        # consecutive scans: one hyperslab, much faster in h5py than a list of points
        sel = slice(int(uniq[0]), int(uniq[-1]) + 1) if uniq[-1] - uniq[0] + 1 == len(uniq) else uniq
        x = np.concatenate([d[sel] for d in self.datasets], axis=1)   # (u, C, T)
        return x if np.array_equal(uniq, idx) else x[inverse]


def _open(path):
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: cannot read as an HDF5 file ({e})") from None


def _atlases(f, path):
    """The atlases the file holds -> (names, datasets), checked: at least one, (S, C, T) floats, one S
    and T for all; when one or two are absent, the others must have their full ROI counts (their ROIs
    are placed by position among the 457; atlases.fill_absent)."""
    group = f.get("timeseries")
    found = sorted(group) if isinstance(group, h5py.Group) else []
    names = [a for a in ATLASES if isinstance(f.get(f"timeseries/{a}"), h5py.Dataset)]
    if not names:
        raise ValueError(f"{path}: holds none of {', '.join('timeseries/' + a for a in ATLASES)}; the authors' layout "
                         f"holds these (or some of them), each (scans, ROIs, time) "
                         f"(found in timeseries/: {', '.join(found) if found else 'nothing'})")
    sets = [f[f"timeseries/{a}"] for a in names]
    for a, d in zip(names, sets):
        if d.ndim != 3 or not np.issubdtype(d.dtype, np.floating):
            raise ValueError(f"{path}: timeseries/{a} must be a 3-D float array (scans, ROIs, time); "
                             f"got shape {d.shape}, dtype {d.dtype}")
        if (d.shape[0], d.shape[2]) != (sets[0].shape[0], sets[0].shape[2]):
            raise ValueError(f"{path}: timeseries/{a} has shape {d.shape} but timeseries/{names[0]} has "
                             f"{sets[0].shape}; all atlases need the same scans and time points")
        if len(names) < len(ATLASES) and d.shape[1] != ATLAS_ROIS[a]:
            raise ValueError(f"{path}: timeseries/{a} has {d.shape[1]} ROIs, but with "
                             f"{', '.join(x for x in ATLASES if x not in names)} absent each atlas present needs its "
                             f"full {ATLAS_ROIS[a]} ROIs (the absent ones are masked by position)")
    S, _, T = sets[0].shape
    if S == 0 or T == 0:
        raise ValueError(f"{path}: timeseries/{names[0]} has shape {sets[0].shape}: no "
                         f"{'scans' if S == 0 else 'time points'}")
    return names, sets


def _lengths(first_atlas, ts_len):
    """Valid lengths (S,) from ROI 0 of the first atlas, read in ~64 MB chunks, capped by ts_len."""
    S, _, T = first_atlas.shape
    lengths = np.empty(S, dtype=np.int64)
    step = max(1, (64 << 20) // (T * 4))
    progress = Progress(S, "reading scan lengths", min_total=math.inf)   # shown after 2 s
    for s0 in range(0, S, step):
        first = np.isnan(first_atlas[s0:s0 + step, 0, :])                   # (b, T) ROI 0 only
        lengths[s0:s0 + len(first)] = roi0_lengths(first, s0, None)
        progress.update(s0 + len(first))
    return lengths if ts_len is None else np.minimum(lengths, ts_len)


def _per_scan(f, name, S, path):
    """Dataset `name` (None when absent) as a 1-D array; raises unless it has one value per scan."""
    ds = f.get(name)
    if ds is None:
        return None
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{path}: '{name}' is a group; it must be a dataset of exactly one value per scan, in "
                         f"scan order")
    if ds.ndim != 1 or len(ds) != S:
        raise ValueError(f"{path}: '{name}' has shape {ds.shape} but the file has {S} scans; it needs exactly one "
                         f"value per scan, in scan order")
    return ds[()]


def _subject_ids(f, S, path, need_ids):
    """long_subject_id as one str per scan; [] when not needed (--subjects gives them), so a bad
    long_subject_id is only an error when it is used. A missing or NaN id is an error then (a None
    subject would silently merge scans)."""
    if not need_ids:
        return []
    ids = _per_scan(f, "long_subject_id", S, path)
    if ids is None:
        raise ValueError(f"{path}: no 'long_subject_id' dataset (one subject id per scan); add one, or pass "
                         f"the ids as a text file (--subjects, one per line)")
    subjects = [_as_text(v) for v in ids]
    if None in subjects:
        i = subjects.index(None)
        raise ValueError(f"{path}: 'long_subject_id' of scan {i} is {ids[i]}, not an id; every scan needs its "
                         f"subject's id (or pass the ids as a text file, --subjects)")
    return subjects


def _ts_len(f, S, path):
    """The optional ts_len dataset as (S,) int64 (None when absent); raises unless every value is a
    whole number of time points >= 0 (a NaN would otherwise become -2**63)."""
    v = _per_scan(f, "ts_len", S, path)
    if v is None:
        return None
    if v.dtype == bool or not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)):
        raise ValueError(f"{path}: 'ts_len' has dtype {v.dtype}; it needs the valid length of each scan as a "
                         f"whole number of time points")
    bad = ~np.isfinite(v) | (v < 0) | (v != np.round(v))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: 'ts_len' of scan {i} is {v[i]}; it needs the valid length of each scan as a "
                         f"whole number of time points >= 0")
    return v.astype(np.int64)


def _as_text(v):
    """One stored value -> str (None for a non-finite float): bytes decoded, 3.0 -> "3"."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace").strip()
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return None if not math.isfinite(v) else str(int(v)) if v.is_integer() else repr(v)
    return str(v).strip()


def load_h5(path, tr=None, n_rois=None, need_ids=True) -> Scans:
    """An .h5 file in the authors' layout -> Scans whose data is an H5Array (or, with tr, the
    resampled scans in RAM). n_rois: the network map's length, checked. need_ids: require
    long_subject_id (False when the caller supplies the ids: it is then not read)."""
    path = Path(path)
    f = _open(path)
    try:
        names, sets = _atlases(f, path)
        x = H5Array(f, sets)
        S, C, _ = x.shape
        C_model = C if len(names) == len(ATLASES) else sum(ATLAS_ROIS.values())   # absent atlases: filled in
        if n_rois is not None and C_model != int(n_rois):
            raise ValueError(f"{path}: the atlases give {C} ROIs ({describe_sets(names, sets)}) but the network map "
                             f"has {int(n_rois)} entries; the map needs one network id per ROI of "
                             f"{', '.join(ATLASES)}, in this order (the default map is the authors' 400 + 50 + 7 = 457)")
        subjects = _subject_ids(f, S, path, need_ids)
        lengths = _lengths(sets[0], _ts_len(f, S, path))
        check_lengths(lengths, None)
        if tr is not None:
            x, lengths = resample_array(x, lengths, tr)
            check_lengths(lengths, None, resampled=True)
            f.close()
    except BaseException:
        f.close()
        raise
    return Scans(data=x, lengths=lengths, subjects=subjects, source=str(path.resolve()),
                 key=file_key([path], "h5", tr), atlases=tuple(names))


def describe_sets(names, sets):
    """'schaefer400 400 + tian3 50' from the datasets themselves (their ROI counts as stored)."""
    return " + ".join(f"{a} {d.shape[1]}" for a, d in zip(names, sets))


def label_names(path, n_scans) -> list:
    """Datasets of `path` usable as labels: one value per scan, outside timeseries/ (their full
    names, e.g. "sex_bi" or "labels/sex")."""
    names = []

    def visit(name, obj):
        if (isinstance(obj, h5py.Dataset) and name.split("/")[0] not in NOT_LABELS
                and obj.ndim == 1 and len(obj) == n_scans):
            names.append(name)

    with _open(path) as f:
        f.visititems(visit)
    return names


def read_label(path, name, n_scans) -> list:
    """Label dataset `name` of `path` -> one str per scan (None where a float is NaN)."""
    with _open(path) as f:
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset) or name.split("/")[0] in NOT_LABELS:
            available = label_names(path, n_scans)
            raise ValueError(f"unknown task '{name}': {path} has no such label dataset; available: "
                             + (", ".join(available) if available else
                                "none (no dataset of one value per scan besides long_subject_id; pass --labels)"))
        if ds.ndim != 1 or len(ds) != n_scans:
            raise ValueError(f"{path}: label dataset '{name}' has {len(ds) if ds.ndim == 1 else ds.shape} values "
                             f"but the file has {n_scans} scans; a label needs exactly one value per scan, in scan order")
        return [_as_text(v) for v in ds[()]]


if __name__ == "__main__":
    sc = load_h5(sys.argv[1])
    print(f"{sc.source}: {len(sc)} scans, {sc.n_subjects} subjects, {sc.n_rois} ROIs "
          f"({describe_sets(sc.atlases, sc.data.datasets)}), "
          f"{sc.data.dtype}, valid lengths {sc.lengths.min()}-{sc.lengths.max()}")
    print(f"labels: {', '.join(label_names(sys.argv[1], len(sc))) or 'none'}")
