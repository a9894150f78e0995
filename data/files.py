"""The files a user brings: one .npy array, or a folder of per-scan .npy/.csv/.tsv tables (SPEC §1).

- `load_array(path, layout, tr, n_rois)`: a memory-mapped `.npy` (S, C, T), or (S, T, C) with
  layout "STC", float16/32/64, NaN-padded at the end; nothing is read whole but by the checks.
- `load_folder(folder, tr, n_rois)`: per-scan files shaped (T, C), time in rows, as nilearn maskers
  and XCP-D write them, an optional header row of ROI names, any lengths; held in RAM as float32.
  Subject ids come from BIDS names (`sub-XXXX_ses-YY_...` -> "XXXX").
- `MISSING`: the spellings of a missing value ("", NA, n/a, nan, none, null, ?; any case), in the
  time-series tables here and in labels files (labels.py).

load.py picks the reader; every error is a ValueError that names the file or scan.
"""
import io
import re

import numpy as np

from data.scans import Scans, check_float, check_lengths, check_n_rois, check_scans, resample, resample_array
from machine.fileio import file_key
from machine.progress import Progress

FILE_SUFFIXES = (".npy", ".csv", ".tsv")
MISSING = {"", "na", "nan", "n/a", "none", "null", "?"}   # compared lower-case
# missing-value spellings (BIDS/XCP-D write n/a) that numpy does not parse, as whole fields only; an
# empty field stays a parse error: in a time-series table it means a malformed row, not a gap
_MISSING_FIELD = "(?:" + "|".join(re.escape(t) for t in sorted(MISSING - {"", "nan"}, key=len, reverse=True)) + ")"


def load_array(path, layout, tr, n_rois):
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
    check_float(arr, path)
    if 0 in arr.shape:   # else an IndexError or numpy's argmax error from deep inside the checks
        axes = ("scans", "time points", "ROIs") if layout == "STC" else ("scans", "ROIs", "time points")
        raise ValueError(f"{path}: shape {arr.shape} ({', '.join(axes)}) holds no {axes[arr.shape.index(0)]}")
    data = arr.transpose(0, 2, 1) if layout == "STC" else arr   # a strided view: nothing is read
    check_n_rois(data.shape[1], n_rois, path)
    lengths, zeroed = check_scans(data, names=None)
    if tr is not None:
        data, lengths = resample_array(data, lengths, tr)
        check_lengths(lengths, None, resampled=True)
    return Scans(data=data, lengths=lengths, subjects=[], source=str(path.resolve()),
                 key=file_key([path], layout, tr), zeroed_rois=zeroed)


def bids_subject(stem):
    m = re.search(r"(?:^|_)sub-([A-Za-z0-9]+)", stem)
    return m.group(1) if m else stem


def read_table(path):
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


def load_folder(folder, tr, n_expected):
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
            check_float(x, f.name)
            if x.ndim != 2:
                raise ValueError(f"{f.name}: expected a 2-D array (time, ROIs) per file, got shape {x.shape}")
        else:
            x, names = read_table(f)
        if x.size == 0:
            raise ValueError(f"{f.name}: no time points")
        if n_rois is None:
            n_rois, first_file = x.shape[1], f.name
            check_n_rois(n_rois, n_expected, f.name)
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
        lengths, z = check_scans(x[None], names=[f.name])
        zeroed += z
        x = x[:, :lengths[0]]
        if tr is not None:
            x = resample(x, tr)
            check_lengths(np.array([x.shape[1]]), [f.name], resampled=True)
        series.append(x)
        progress.update(i + 1)
    lengths = np.array([x.shape[1] for x in series], dtype=np.int64)
    data = np.full((len(series), n_rois, lengths.max()), np.nan, dtype=np.float32)   # (S, C, T)
    for i, x in enumerate(series):
        data[i, :, :x.shape[1]] = x
        series[i] = None   # keep the peak at one copy
    return Scans(data=data, lengths=lengths, subjects=[bids_subject(f.stem) for f in files],
                 source=str(folder.resolve()), key=file_key(files, tr), files=[f.name for f in files],
                 roi_names=roi_names, zeroed_rois=zeroed)
