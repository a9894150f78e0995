"""ROI -> functional-network maps: the semantic prior of Brain-Semantoks (SPEC §2).

A network map is an int64 vector with one entry per ROI giving the id (0..N-1) of the network
that ROI belongs to. The tokenizer builds one tokenizer per network from it. This file holds the
default 457-ROI map (Schaefer-400 7-network + Tian S3 + Buckner 7), loading and validating user
maps (any atlas, any N), deriving a map from group-mean FC (spectral clustering, the method's
"future work"), and a plot of FC ordered by network.

    python -c "from data.networks import default_network_map; print(default_network_map().shape)"
"""
from pathlib import Path

import numpy as np

DEFAULT_NETWORK_NAMES = ("Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default",
                         "Subcortical", "Cerebellum")

# Schaefer-400 (7Networks order) block sizes per hemisphere, ids 0..6 in this order (SPEC §2)
_SCHAEFER_LEFT = (31, 37, 23, 22, 13, 22, 52)
_SCHAEFER_RIGHT = (30, 40, 23, 25, 13, 30, 39)
_N_TIAN_S3 = 50
_N_BUCKNER = 7


def default_network_map() -> np.ndarray:
    """The 457-ROI map: Schaefer-400 left then right hemisphere, Tian S3 (id 7), Buckner 7 (id 8)."""
    ids = np.arange(7)
    return np.concatenate([np.repeat(ids, _SCHAEFER_LEFT), np.repeat(ids, _SCHAEFER_RIGHT),
                           np.full(_N_TIAN_S3, 7), np.full(_N_BUCKNER, 8)]).astype(np.int64)


def validate_network_map(m, n_rois=None) -> np.ndarray:
    """Check a map is a 1-D vector of integer ids 0..N-1 with no empty network; return it as int64."""
    a = np.asarray(m)
    if a.ndim != 1:
        raise ValueError(f"network map must be 1-D (one id per ROI), got shape {a.shape}")
    if a.size == 0:
        raise ValueError("network map is empty")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)):
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"network map ids must be integers, got dtype {a.dtype}")
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"network map ids must be integers; entry {i} is {a[i]!r}")
    a = a.astype(np.int64)
    if n_rois is not None and a.size != n_rois:
        raise ValueError(f"network map has {a.size} entries but the data have {n_rois} ROIs")
    if a.min() < 0:
        raise ValueError(f"network map ids must be >= 0; found {int(a.min())}")
    missing = np.setdiff1d(np.arange(a.max() + 1), a)
    if missing.size:
        raise ValueError(f"network map ids must be 0..N-1 without gaps (no empty network); "
                         f"missing: {missing.tolist()}")
    return a


def _read_text_map(path: Path) -> np.ndarray:
    text = path.read_text()
    ids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for tok in line.replace(",", " ").split():
            try:
                ids.append(int(tok))
            except ValueError:
                raise ValueError(f"network map file {path}, line {lineno}: {tok!r} is not an integer "
                                 f"(expected one integer network id per ROI)") from None
    if not ids:
        raise ValueError(f"network map file {path} is empty (expected one integer network id per ROI)")
    return np.asarray(ids, dtype=np.int64)


# the two extremes of the semantic prior, as the authors' max_spatial / min_spatial (their data/dataset.py:123-128,
# model/semantoks.py:110-122; with max_spatial their encoder swaps the tokenizer for one Linear(L -> D) shared by
# every ROI, semantoks.py:167-170, where ours keeps the --tokenizer the run asks for)
EXTREMES = {"rois": "every ROI its own network", "one": "one network of all ROIs"}


def load_network_map(spec, n_rois=None) -> np.ndarray:
    """spec: "default" | "rois" | "one" | path to .txt/.csv (one int per ROI) or .npy | array-like ->
    validated int64 map. "rois" (ids 0..C-1) and "one" (all 0) need n_rois, the data's ROI count."""
    if isinstance(spec, str) and spec in EXTREMES:
        if n_rois is None:
            raise ValueError(f"--networks {spec} ({EXTREMES[spec]}) needs the data's ROI count; it applies to "
                             f"training (train.py), where the map is stored in the checkpoint")
        return np.arange(n_rois, dtype=np.int64) if spec == "rois" else np.zeros(n_rois, dtype=np.int64)
    if isinstance(spec, str) and spec == "default":
        m = default_network_map()
        if n_rois is not None and n_rois != m.size:
            raise ValueError(f"the default network map has {m.size} ROIs but the data have {n_rois}; "
                             f"pass a map file with one network id per ROI")
        return m
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"network map file not found: {path}")
        if path.suffix == ".npy":
            try:
                m = np.load(path, allow_pickle=False)
            except Exception as e:
                raise ValueError(f"cannot read network map {path}: {e}") from None
            if m.size == 0:
                raise ValueError(f"network map file {path} is empty")
        else:
            m = _read_text_map(path)
        try:
            return validate_network_map(m.ravel() if m.ndim == 2 and 1 in m.shape else m, n_rois)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return validate_network_map(spec, n_rois)


def network_names(m) -> list:
    """Names for logs and plots: the default names for the default map, else net0..net{N-1}."""
    m = np.asarray(m)
    d = default_network_map()
    if m.shape == d.shape and np.array_equal(m, d):
        return list(DEFAULT_NETWORK_NAMES)
    return [f"net{i}" for i in range(int(m.max()) + 1)]


def cluster_networks(fc, k, seed=0) -> np.ndarray:
    """Group ROIs into k networks by spectral clustering of a (C, C) group-mean FC matrix.

    Affinity = FC with negative correlations clipped to 0 (anti-correlated ROIs are not "similar"),
    symmetrised, unit diagonal. Ids are relabelled in order of first appearance along the ROIs, so
    the output does not depend on the arbitrary cluster numbering.
    """
    from sklearn.cluster import SpectralClustering

    fc = np.asarray(fc, dtype=np.float64)
    if fc.ndim != 2 or fc.shape[0] != fc.shape[1]:
        raise ValueError(f"FC must be a square (C, C) matrix, got shape {fc.shape}")
    if not np.isfinite(fc).all():
        raise ValueError("FC contains NaN or inf (a constant ROI time series?)")
    C = fc.shape[0]
    if not 2 <= k <= C:
        raise ValueError(f"number of networks k must be in 2..{C} (the ROI count), got {k}")
    aff = np.clip((fc + fc.T) / 2, 0.0, None)
    np.fill_diagonal(aff, 1.0)
    labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                                n_init=10).fit_predict(aff)
    _, first = np.unique(labels, return_index=True)
    relabel = np.empty(labels.max() + 1, dtype=np.int64)
    relabel[labels[np.sort(first)]] = np.arange(first.size)
    return validate_network_map(relabel[labels])


def plot_network_fc(fc, m, path, names=None) -> None:
    """Write a PNG of FC with ROIs ordered by network and the network blocks outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fc = np.asarray(fc, dtype=np.float64)
    m = validate_network_map(m, fc.shape[0])
    names = list(names) if names is not None else network_names(m)
    order = np.argsort(m, kind="stable")
    counts = np.bincount(m)
    edges = np.concatenate([[0], np.cumsum(counts)])
    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(fc[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    for e in edges[1:-1] - 0.5:
        ax.axhline(e, color="k", lw=0.6)
        ax.axvline(e, color="k", lw=0.6)
    centres = (edges[:-1] + edges[1:]) / 2 - 0.5
    ax.set_xticks(centres, names, rotation=90, fontsize=7)
    ax.set_yticks(centres, names, fontsize=7)
    ax.set_title(f"FC ordered by network ({len(counts)} networks, {fc.shape[0]} ROIs)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Pearson r")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
