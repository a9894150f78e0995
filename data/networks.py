"""ROI -> functional-network maps: the semantic prior of Brain-Semantoks (SPEC §2).

A network map is an int64 vector with one entry per ROI giving the id (0..N-1) of the network
that ROI belongs to. The tokenizer builds one tokenizer per network from it. This file holds the
default 457-ROI map (Schaefer-400 7-network + Tian S3 + Buckner 7), loading and validating user
maps (any atlas, any N), deriving a map from group-mean FC (spectral clustering, the method's
"future work"), and a plot of FC ordered by network.

    python -c "from data.networks import default_network_map; print(default_network_map().shape)"
"""
import warnings
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


# ----------------------------------------------------------------------------- does the map fit the data

ORDER_CHECK_SCANS = 200     # scans averaged into the group FC of the check (a group mean: plenty)
ORDER_CHECK_SHUFFLES = 200  # random maps (the map's labels permuted over the ROIs) the map is compared with


def _separation(z, labels, n):
    """Within- minus between-network mean Fisher-z per network, for K label vectors at once:
    z (C, C) with a zero diagonal, labels (K, C) ints in 0..n-1 -> (K, n), NaN for one-ROI networks."""
    U = np.eye(n)[labels]                                                   # (K, C, n) one-hot
    zu = z @ U                                                              # (K, C, n)
    within = np.einsum("kcn,kcn->kn", U, zu)                                # (K, n) sums over ordered pairs
    total = zu.sum(1)                                                       # (K, n) each network to all ROIs
    c = U.sum(1)                                                            # (K, n) ROIs per network
    C = labels.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return within / (c * (c - 1)) - (total - within) / (c * (C - c))


def map_fit(fc, m, keep=None, shuffles=ORDER_CHECK_SHUFFLES, seed=0):
    """How well the map m explains a group FC (C, C): per network, the mean Fisher-z within it minus
    its mean to every other ROI, against the same for `shuffles` random maps of the same network sizes
    (m's labels permuted over the ROIs). keep: the ROIs to judge (default all; absent atlases' ROIs
    are left out). -> {"separation": (N,), "null_95": (N,), "better": (N,) bool, "mean": float,
    "null_mean": float, "null_std": float}."""
    from data.connectivity import fisher_z
    m = np.asarray(m)
    keep = np.arange(len(m)) if keep is None else np.asarray(keep)
    z = fisher_z(np.asarray(fc, dtype=np.float64)[np.ix_(keep, keep)])
    np.fill_diagonal(z, 0.0)
    n, labels = int(m.max()) + 1, m[keep]
    rng = np.random.default_rng(seed)
    null = np.concatenate([_separation(z, np.stack([rng.permutation(labels) for _ in range(50)]), n)
                           for _ in range(max(1, shuffles // 50))])         # (K, n)
    sep = _separation(z, labels[None], n)[0]                                # (n,)
    with warnings.catch_warnings():   # one-ROI (or absent) networks are NaN throughout: not judged
        warnings.simplefilter("ignore", RuntimeWarning)
        null_mean, null_95 = np.nanmean(null, 1), np.nanpercentile(null, 95, axis=0)   # (K,), (n,)
        return {"separation": sep, "null_95": null_95, "mean": float(np.nanmean(sep)),
                "null_mean": float(null_mean.mean()), "null_std": float(null_mean.std()), "better": sep > null_95}


def describe_fit(fit, names):
    """The check's figure in words: one line overall, one per network."""
    lines = [f"within- minus between-network mean Fisher-z: {fit['mean']:.3f} (random maps of the same network "
             f"sizes: {fit['null_mean']:.3f} ± {fit['null_std']:.3f})"]
    for i, name in enumerate(names):
        if np.isfinite(fit["separation"][i]):
            lines.append(f"  {name:<14} {fit['separation'][i]:+.3f}  (random maps' 95th percentile "
                         f"{fit['null_95'][i]:+.3f}){'' if fit['better'][i] else '  no better than random'}")
    return "\n".join(lines)


def order_warning(fit, names, remedies="pass the map of your atlas (--networks FILE)"):
    """A warning in words when networks of the map are no better than random maps on the data, or None."""
    judged = np.isfinite(fit["separation"])
    bad = [names[i] for i in np.flatnonzero(judged & ~fit["better"])]
    if not bad:
        return None
    return (f"the ROI -> network map does not fit these data for {len(bad)} of {int(judged.sum())} networks "
            f"({', '.join(bad)}): their ROIs are no more connected to each other than the ROIs of a random map. "
            f"If your Schaefer-400 series are in the 17-network order, reorder them to the 7-network order the "
            f"release expects (the same 400 ROIs, another order); another atlas, or ROIs in another order, show the "
            f"same way. Remedies: reorder the ROIs, {remedies}. A weak or very small cohort can also cause this: "
            f"`python -m data.networks check --data X` prints the figure")


def check_order(scans, m, names=None, remedies=None, seed=0):
    """The map's fit on `scans` (a seeded subsample's group FC, absent atlases' ROIs left out) ->
    (fit, warning or None). Never an error: some cohorts are weak."""
    from data.connectivity import group_fc
    names = network_names(m) if names is None else names
    keep = np.arange(len(m))
    if getattr(scans, "absent_rois", None) is not None:
        keep = np.setdiff1d(keep, scans.absent_rois)
    fit = map_fit(group_fc(scans, max_scans=ORDER_CHECK_SCANS, seed=seed), m, keep, seed=seed)
    return fit, order_warning(fit, names, *([remedies] if remedies else []))


def main(argv=None):
    import argparse

    from data.load import load_scans
    from machine.cli import cli
    p = argparse.ArgumentParser(description="check: how well a ROI -> network map explains your data's group FC "
                                            "(within- minus between-network Fisher-z against random maps)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="print the map's fit on the data")
    c.add_argument("--data", required=True, help="scans: .npy, folder, or .h5 (as --data of the commands)")
    c.add_argument("--networks", default="default", help="the map: default (457 ROIs) or a file (default %(default)s)")
    c.add_argument("--tr", type=float, help="repetition time of the data in s (resampled to 2.0 s)")
    c.add_argument("--atlases", help="the atlases an array or folder holds, e.g. schaefer400,tian3")

    def run(args):
        scans = load_scans(args.data, tr=args.tr, atlases=args.atlases)
        m = load_network_map(args.networks, n_rois=scans.n_rois)
        fit, warning = check_order(scans, m)
        print(f"{args.data}: {len(scans)} scans, map {args.networks} ({int(m.max()) + 1} networks), group FC of "
              f"{min(len(scans), ORDER_CHECK_SCANS)} scans, {ORDER_CHECK_SHUFFLES} random maps")
        print(describe_fit(fit, network_names(m)))
        print(f"warning: {warning}" if warning else "the map fits the data better than random maps for every network")
        return fit

    return cli(run, p.parse_args(argv), "data.networks")


if __name__ == "__main__":
    main()
