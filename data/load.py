"""Loading the parcellated fMRI a user brings: the one entry point, whatever the format (SPEC §1).

`load_scans(path, layout="SCT", tr=None, n_rois=None, subjects=None) -> Scans` (scans.py): a
memory-mapped `.npy` (S, C, T) or (S, T, C), a folder of per-scan `.npy`/`.csv`/`.tsv` files shaped
(T, C) as nilearn maskers and XCP-D write them (files.py), or an `.h5` in the authors' layout (h5.py,
streamed). `tr` resamples every scan to the 2.0 s grid; subject ids come from BIDS file names, a
sidecar `X_subjects.txt`, the .h5's ids or the `subjects` argument. Every input error is a
ValueError that names the scan.

What the method does to scans next (z-scoring, crops, augmentation) is preprocess.py; the built-in
synthetic cohort (used when no data are given, and by the tests) is synthetic.py.

    python -m data.load path/to/data [tr]   # load a dataset and print what was found
"""
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np

from data.atlases import check_present_rois, fill_absent, parse_atlases
from data.bandpass import bandpass_array, check_band
from data.files import load_array, load_folder
from data.scans import TR, Scans, check_constant, check_n_rois

log = logging.getLogger("brain_semantoks.data")

H5_SUFFIXES = (".h5", ".hdf5")          # the authors' datasets (h5.py)
CONSTANT_SAMPLE = 512                   # scans of a streamed .h5 checked for constant ROIs (not read whole)


def check_no_data_options(given, cohort):
    """Options that describe --data (--subjects, --tr, --layout), given without --data: an error
    naming the built-in `cohort` they would otherwise be applied to. given: the flags set, e.g. {"--tr"}."""
    for flag, why in (("--subjects", "carries its own ids"), ("--tr", "is at TR 2.0 s already"),
                      ("--layout", "is stored (scans, ROIs, time)")):
        if flag in given:
            raise ValueError(f"{flag} describes --data; {cohort} {why}")


def load_scans(path, layout="SCT", tr=None, n_rois=None, subjects=None, atlases=None, bandpass=None) -> Scans:
    """Load a dataset of parcellated scans.

    path:     an `.npy` file holding (S, C, T) (or (S, T, C) with layout="STC"), float16/float32,
              opened memory-mapped, shorter scans NaN-padded at the end; or a folder of per-scan
              `.npy`/`.csv`/`.tsv` files, each (T, C) with time in rows (nilearn/XCP-D layout), an
              optional header row of ROI names, any lengths; or an `.h5`/`.hdf5` file in the authors'
              layout (timeseries/schaefer400, tian3, buckner7 concatenated into 457 ROIs, streamed
              scan by scan; see h5.py).
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

    atlases:  for an array or folder holding only some of the release's atlases, their names
              ("schaefer400,tian3"): the absent ones' ROIs are filled in with zeros and recorded in
              `scans.absent_rois` (their networks are then masked; atlases.py). An .h5 says itself.
    bandpass: (low, high) Hz: each scan's valid length band-passed after resampling (bandpass.py),
              into RAM.

    Constant data are caught here: a scan constant in every ROI, or an ROI constant in every scan, is
    an error; a scan with a few constant ROIs a warning (scans.check_constant).
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
    atlases = parse_atlases(atlases)
    if bandpass is not None:
        bandpass = check_band(*bandpass)

    scans = _read(path, layout, tr, n_rois if atlases is None else None, subjects)
    _set_atlases(scans, atlases, path)
    streamed = not isinstance(scans.data, np.ndarray)   # an .h5 read scan by scan: check a sample
    warning = check_constant(scans.data, scans.lengths, path, scans.files, CONSTANT_SAMPLE if streamed else None)
    if warning:
        log.warning("%s", warning)
    if bandpass is not None:
        scans.data, scans.bandpass = bandpass_array(scans.data, scans.lengths, *bandpass, scans.files), bandpass
        scans.key = f"{scans.key}|bandpass={bandpass}"
    if scans.atlases is not None:
        scans = fill_absent(scans, scans.atlases)
        check_n_rois(scans.n_rois, n_rois, path)
    return scans


def _set_atlases(scans, atlases, path):
    """--atlases for an array or folder (its ROI count checked); an .h5 says itself which it holds."""
    if atlases is None:
        return
    if scans.atlases is not None:
        if atlases != scans.atlases:
            raise ValueError(f"--atlases {','.join(atlases)}: {path} holds {', '.join(scans.atlases)} (an .h5 in "
                             f"the authors' layout says itself which atlases it has; leave --atlases out)")
    else:
        check_present_rois(scans.n_rois, atlases, path)
        scans.atlases = atlases


def _read(path, layout, tr, n_rois, subjects):
    """The reader for `path` (a folder, an .h5, an .npy) -> Scans with their subject ids."""
    if path.is_dir():
        scans = load_folder(path, tr, n_rois)
    elif is_h5(path):
        if layout != "SCT":
            raise ValueError(f"{path}: --layout applies to a single .npy; an .h5 file in the authors' layout is "
                             "always (scans, ROIs, time)")
        from data.h5 import load_h5   # imported here: h5py is needed only for .h5 files
        scans = load_h5(path, tr, n_rois, need_ids=subjects is None)
    else:
        scans = load_array(path, layout, tr, n_rois)

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
    """Whether `path` names an HDF5 file (read by h5.py in the authors' layout)."""
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


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) > 1:
        sc = load_scans(sys.argv[1], tr=float(sys.argv[2]) if len(sys.argv) > 2 else None)
        absent = "" if sc.absent_rois is None else f" ({len(sc.absent_rois)} of them absent atlases', read as zeros)"
        print(f"{sc.source}: {len(sc)} scans, {sc.n_subjects} subjects, {sc.n_rois} ROIs{absent}, valid lengths "
              f"{sc.lengths.min()}-{sc.lengths.max()} (median {int(np.median(sc.lengths))}) at TR 2.0 s")
    else:
        print("usage: python -m data.load path/to/data [tr]   (the built-in synthetic cohort: python -m data.synthetic)")
