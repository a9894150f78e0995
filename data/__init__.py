"""The data: what a user brings, and what the method does to scans before the model (SPEC §1, §2, §9).

Read in this order:

- `load.py`          the one entry point: `load_scans(path)` for an .npy, a folder or an .h5 -> Scans
- `scans.py`         `Scans`, the one form every dataset takes; the checks and TR resampling every reader shares
- `files.py`         .npy arrays and folders of per-scan .npy/.csv/.tsv tables (nilearn, XCP-D), BIDS ids
- `h5.py`            the authors' HDF5 datasets, streamed: atlases -> 457 ROIs, ids, label datasets
- `atlases.py`       which of the release's atlases the data hold, where their ROIs sit, which networks to mask
- `bandpass.py`      --bandpass: zero-phase Butterworth filtering on the 2.0 s grid, as the release expects
- `preprocess.py`    z-scoring, augmentation, training and probe crops
- `connectivity.py`  functional connectivity and Fisher-z (the FC baseline, group FC)
- `networks.py`      ROI -> functional-network maps: the default 457-ROI layout, user maps, clustering from data,
                     and the ROI-order check (does the map fit the data's group FC?)
- `labels.py`        labels files, tasks, missing values, subject splits
- `synthetic.py`     the built-in synthetic cohort: simulated subjects whose labels act through named mechanisms

Imports only machine/ (and itself): the method, training and evaluation build on it.
"""
