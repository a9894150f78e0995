"""Linear probing of a frozen Brain-Semantoks teacher: how a pretrained model is judged (SPEC §9).

    python probe.py --ckpt runs/demo/teacher.pt --task sz                   # built-in synthetic cohort
    python probe.py --ckpt runs/demo/teacher.pt --task all                  # every label: one table, probe_all.*
    python probe.py --ckpt teacher.pt --data scans.npy --labels labels.csv --task age --bins 3
    python probe.py --ckpt teacher.pt --data derivatives/xcpd/ --labels participants.tsv --task dx
    python probe.py --ckpt teacher.pt --data ukb.h5 --task sex_bi          # the authors' layout, its own labels

Features: every scan gives 8 evenly spaced crops (data.probe_crops); each crop goes through the frozen
teacher's `features()` (mean of the N·P output tokens ‖ CLS, 2D values). Features are cached on disk
per checkpoint and data, so probing several tasks extracts them once.

Probe: a linear model on standardised features, every crop one training sample. Subjects (not scans,
not crops) are split train/val/test 4:1:8, stratified by class; all scans of a subject land in one
split. The regularisation strength is picked on val; val and test scores are the class probabilities
(or predictions) averaged over all crops of a subject, then the metric. 10 repeats, seeds 0-9,
mean ± std. The same splits also score two baselines: functional connectivity (Fisher-z Pearson
correlations over the whole scan, one sample per scan) and a randomly initialised encoder of the
checkpoint's config. Outputs: a table on stdout, probe_<task>.json (every split's numbers) and
probe_<task>.png next to the checkpoint. --task all probes every label column (or .h5 label dataset)
with features extracted once: one task x method table with teacher − baseline differences on the same
splits, probe_all.json and probe_all.png (a column that cannot be probed is skipped, with the reason).

Labels: a CSV/TSV with one column per task ("", NA, n/a, nan = missing: that scan is dropped for
that task). With a `subject` (or `subject_id`, `participant_id`) column, rows are matched to scans
by subject id (a leading "sub-" is ignored) when the scans carry ids (BIDS names of a folder's
files, X_subjects.txt beside X.npy, or --subjects); for an array without ids, rows are scans in
order and the subject column says which scans belong to one subject. Without a subject column,
rows are scans in order. Classification when the values are at most 10 distinct integers or
strings, regression otherwise (--task-type overrides; --bins k makes k quantile classes).
An .h5 dataset in the authors' layout (h5data.py) carries its labels: without --labels, --task names
one of its datasets of one value per scan (e.g. sex_bi, labels/sex); --labels still works and wins.
"""
import argparse
import csv
import hashlib
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
import torch

import data
import networks
import runtime
import synthetic as synth   # (`synthetic` names a flag below)
from checkpoint import load_teacher
from encoder import Encoder

C_GRID = np.logspace(-4, 1, 6)        # LogisticRegression C, strongest regularisation first (warm starts)
ALPHA_GRID = np.logspace(-2, 6, 9)    # Ridge alpha
MAX_CLASSES = 10                      # auto task type: at most this many distinct values -> classes
SUBJECT_COLUMNS = ("subject", "subject_id", "participant_id")
MISSING = {"", "na", "nan", "n/a", "none", "null", "?"}
METRICS = {"classification": ("balanced_accuracy", "auroc"), "regression": ("mae", "r2", "pearson_r")}
PRIMARY = {"classification": "balanced_accuracy", "regression": "r2"}    # higher is better
METHOD_TITLES = {"teacher": "pretrained teacher", "random": "random-init encoder", "fc": "FC (Fisher-z)"}
ALL = "all"                           # --task all: every label column in one run (run_all)


# ----------------------------------------------------------------------------------------------
# labels -> task

def read_labels(path):
    """CSV or TSV with a header row -> (column names, rows as lists of stripped strings)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    delim = "\t" if path.suffix.lower() == ".tsv" or ("\t" in text.split("\n", 1)[0]) else ","
    rows = [[v.strip() for v in r] for r in csv.reader(text.splitlines(), delimiter=delim) if any(v.strip() for v in r)]
    if len(rows) < 2:
        raise ValueError(f"labels file {path} needs a header row and at least one data row")
    header, rows = rows[0], rows[1:]
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ValueError(f"labels file {path}: row {i + 2} has {len(r)} fields, the header has {len(header)}")
    return header, rows


def _norm_id(s):
    s = str(s).strip()
    return s[4:] if s.lower().startswith("sub-") else s


def scan_labels(header, rows, task, scan_subjects, data_has_ids):
    """Tie label rows to scans. Returns (raw value or None per scan, subject id per scan, notes).

    data_has_ids: whether `scan_subjects` came from the data (file names) rather than being
    placeholders; only then can rows be matched by id."""
    if task not in header:
        cols = [h for h in header if h.lower() not in SUBJECT_COLUMNS]
        raise ValueError(f"unknown task '{task}': the labels file has no such column; available: {', '.join(cols)}")
    col = header.index(task)
    sub_col = next((header.index(h) for h in header if h.lower() in SUBJECT_COLUMNS), None)
    n = len(scan_subjects)
    notes = []

    def value(r):
        return None if r[col].lower() in MISSING else r[col]

    if sub_col is not None and data_has_ids:
        by_id = {}
        for r in rows:
            sid = _norm_id(r[sub_col])
            if sid in by_id and by_id[sid] != value(r):
                raise ValueError(f"subject {r[sub_col]} appears twice in the labels with different '{task}' "
                                 f"values ({by_id[sid]}, {value(r)}); give one row per subject")
            by_id[sid] = value(r)
        ids = [_norm_id(s) for s in scan_subjects]
        hit = sum(i in by_id for i in ids)
        if hit == 0:
            raise ValueError(f"no subject in the labels matches a scan's subject id (labels: "
                             f"{', '.join(list(by_id)[:3])}, ...; scans: {', '.join(ids[:3])}, ...)")
        if hit < n:
            notes.append(f"{n - hit} scan(s) have no row in the labels file")
        unused = len(set(by_id) - set(ids))
        if unused:
            notes.append(f"{unused} labelled subject(s) have no scan")
        return [by_id.get(i) for i in ids], list(scan_subjects), notes

    if len(rows) != n:
        how = ("the data carry no subject ids, so rows are matched to scans in order (put X_subjects.txt "
               "beside X.npy or pass --subjects to match rows by subject id)"
               if sub_col is not None else "without a subject column rows are matched to scans in order")
        raise ValueError(f"the labels file has {len(rows)} rows but there are {n} scans; {how}")
    subjects = [r[sub_col] for r in rows] if sub_col is not None else list(scan_subjects)
    return [value(r) for r in rows], subjects, notes


def task_labels(task, labels_path, scans, has_ids):
    """Raw label per scan (None = missing), subject id per scan and notes for `task`: from the labels
    file, or (labels_path None) from the label datasets of the .h5 file the scans came from."""
    if labels_path is None:
        from h5data import read_label   # h5py only for .h5 data
        values = read_label(scans.source, task, len(scans))
        return [None if v is None or v.lower() in MISSING else v for v in values], list(scans.subjects), []
    header, rows = read_labels(labels_path)
    return scan_labels(header, rows, task, list(scans.subjects), has_ids)


@dataclass
class Task:
    """One probing target, reduced to subjects (the unit of splitting and scoring)."""
    name: str
    kind: str                 # "classification" | "regression"
    y: np.ndarray             # (U,) class index (int) or target (float) per subject
    subjects: list            # (U,) subject ids
    scans: np.ndarray         # (S',) indices of the scans that have a label
    unit: np.ndarray          # (S',) subject index of each of those scans
    classes: list = None      # class names (classification)
    n_missing: int = 0        # scans dropped for lack of a label
    notes: list = field(default_factory=list)


def make_task(name, values, subjects, task_type="auto", bins=None):
    """Raw per-scan label strings (None = missing) -> Task. Decides classes vs regression, bins a
    continuous target into quantile classes, and collapses scans to subjects."""
    keep = np.array([v is not None for v in values], dtype=bool)
    n_missing = int((~keep).sum())
    if not keep.any():
        raise ValueError(f"task '{name}': every scan's label is missing")
    vals = [v for v in values if v is not None]
    try:
        num = np.array([float(v) for v in vals])
        numeric = bool(np.isfinite(num).all())
    except ValueError:
        num, numeric = None, False
    if numeric:
        vals = [str(int(v)) if v == int(v) else repr(float(v)) for v in num]   # "1" and "1.0": one class
    n_distinct = len(set(vals))
    if bins is not None:
        if task_type == "regression":
            raise ValueError("--bins turns the target into classes; it cannot be combined with --task-type regression")
        if not numeric:
            raise ValueError(f"--bins needs a numeric target, but task '{name}' has non-numeric values")
        kind = "classification"
    elif task_type == "auto":
        if numeric and n_distinct <= MAX_CLASSES and np.all(num == np.round(num)):
            kind = "classification"
        elif numeric:
            kind = "regression"
        elif n_distinct <= MAX_CLASSES:
            kind = "classification"
        else:
            raise ValueError(f"task '{name}' has {n_distinct} distinct non-numeric values; that does not look like "
                             f"classes (at most {MAX_CLASSES}); pass --task-type classification to force it")
    else:
        kind = task_type
        if kind == "regression" and not numeric:
            raise ValueError(f"task '{name}' has non-numeric values; a regression target must be numbers")

    # subjects: order of first appearance among labelled scans
    scan_idx = np.flatnonzero(keep)
    kept_subj = [subjects[i] for i in scan_idx]
    uniq = list(dict.fromkeys(kept_subj))
    pos = {s: i for i, s in enumerate(uniq)}
    unit = np.array([pos[s] for s in kept_subj], dtype=np.int64)
    notes = []
    if len(uniq) < len(scan_idx):
        notes.append(f"{len(scan_idx)} scans from {len(uniq)} subjects: all scans of a subject share a split "
                     f"and are scored together")

    if kind == "regression" or bins is not None:
        # several scans of one subject: their targets are averaged
        tgt = np.bincount(unit, weights=num, minlength=len(uniq)) / np.bincount(unit, minlength=len(uniq))
        if bins is None:
            return Task(name, kind, tgt, uniq, scan_idx, unit, None, n_missing, notes)
        edges = np.unique(np.quantile(tgt, np.linspace(0, 1, bins + 1)))
        if len(edges) < 3:
            raise ValueError(f"task '{name}' cannot be binned into {bins} quantile classes: too few distinct values")
        y = np.searchsorted(edges[1:-1], tgt, side="right")
        classes = [f"[{a:.4g}, {b:.4g}{']' if i == len(edges) - 2 else ')'}"
                   for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]
        if len(edges) - 1 < bins:
            notes.append(f"only {len(edges) - 1} quantile bins are distinct (ties in the target)")
        return Task(name, "classification", y, uniq, scan_idx, unit, classes, n_missing, notes)

    classes = sorted(set(vals), key=(lambda v: float(v)) if numeric else str)
    cls_of = {c: i for i, c in enumerate(classes)}
    y = np.full(len(uniq), -1, dtype=np.int64)
    for u, v in zip(unit, vals):
        if y[u] >= 0 and y[u] != cls_of[v]:
            raise ValueError(f"subject {uniq[u]} has scans with different '{name}' labels "
                             f"({classes[y[u]]}, {v}); a class label must be constant within a subject")
        y[u] = cls_of[v]
    if len(classes) < 2:
        raise ValueError(f"task '{name}' has a single class ({classes[0]}); nothing to probe")
    return Task(name, kind, y, uniq, scan_idx, unit, classes, n_missing, notes)


# ----------------------------------------------------------------------------------------------
# splits

def _split_counts(n, ratios):
    """Largest-remainder allocation of n items to the ratios, every part at least 1."""
    r = np.asarray(ratios, dtype=float) / sum(ratios)
    counts = np.floor(n * r).astype(int)
    frac = n * r - counts
    for i in np.argsort(-frac, kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(counts)):
        while counts[i] < 1:
            counts[np.argmax(counts)] -= 1
            counts[i] += 1
    return counts


def split_subjects(task, ratios=(4, 1, 8), seed=0):
    """Subject indices (train, val, test), deterministic for a seed; stratified per class."""
    rng = np.random.default_rng(seed)
    if task.kind == "classification":
        groups = [np.flatnonzero(task.y == c) for c in range(len(task.classes))]
    else:
        groups = [np.arange(len(task.y))]
    parts = [[], [], []]
    for g in groups:
        perm = rng.permutation(g)
        for part, idx in zip(parts, np.split(perm, np.cumsum(_split_counts(len(g), ratios))[:-1])):
            part.append(idx)
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def check_splittable(task, ratios):
    """Clear errors before any work: every class needs a subject in each of train/val/test, and a
    regression needs two subjects in each (R², r)."""
    if task.kind == "classification":
        counts = np.bincount(task.y, minlength=len(task.classes))
        for c, k in zip(task.classes, counts):
            if k < len(ratios):
                raise ValueError(f"class '{c}' of task '{task.name}' has {k} subject(s); a stratified "
                                 f"train/val/test split needs at least {len(ratios)} per class "
                                 f"(merge or drop the class)")
    elif len(task.y) < 2 * len(ratios) or _split_counts(len(task.y), ratios).min() < 2:
        raise ValueError(f"task '{task.name}' has {len(task.y)} labelled subjects; a regression probe needs "
                         f"at least 2 subjects in each of train/val/test")


# ----------------------------------------------------------------------------------------------
# probe

def _subject_mean(values, unit):
    """values (M, k) per row, unit (M,) subject index per row -> (U, k) mean per subject, U = max+1."""
    n = np.bincount(unit).astype(values.dtype)
    out = np.zeros((len(n), values.shape[1]), dtype=values.dtype)
    np.add.at(out, unit, values)
    return out / n[:, None]


def _rows(feats, task, subj):
    """Crops of all scans of the given subjects -> X (M, F), local subject index (M,)."""
    local = np.full(len(task.y), -1)
    local[subj] = np.arange(len(subj))
    sel = np.flatnonzero(local[task.unit] >= 0)                     # positions in task.scans
    x = feats[task.scans[sel]]                                      # (s, K, F)
    K = x.shape[1]
    return x.reshape(-1, x.shape[-1]), np.repeat(local[task.unit[sel]], K)   # (s*K, F), (s*K,)


def classification_metrics(y, proba, n_classes):
    pred = proba.argmax(1)
    try:
        if n_classes == 2:
            auc = roc_auc_score(y, proba[:, 1])
        else:
            auc = roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=np.arange(n_classes))
    except ValueError:                                              # a class absent from this split
        auc = float("nan")
    return {"balanced_accuracy": float(balanced_accuracy_score(y, pred)), "auroc": float(auc)}


def regression_metrics(y, pred):
    r = stats.pearsonr(y, pred)[0] if np.std(pred) > 0 and np.std(y) > 0 else float("nan")
    return {"mae": float(mean_absolute_error(y, pred)), "r2": float(r2_score(y, pred)), "pearson_r": float(r)}


def row_space(x_tr, evals):
    """Fewer samples than features (FC: ~10^5 values per scan): an L2-penalised linear model's
    weights lie in the span of the training rows, so fitting in an orthonormal basis of that span,
    Q = X_trᵀ U Λ^-½ from the Gram matrix X_tr X_trᵀ = U Λ Uᵀ, gives the same predictions, fast.
    x_tr (M, F), evals [(x (M', F), u)] -> x_tr Q (M, r), [(x Q (M', r), u)]."""
    lam, U = np.linalg.eigh((x_tr @ x_tr.T).astype(np.float64))   # (M,), (M, M)
    keep = lam > lam.max() * 1e-10                                  # drop the null space (rank < M)
    proj = (U[:, keep] / np.sqrt(lam[keep])).astype(np.float32)    # (M, r)
    evals = [((x @ x_tr.T) @ proj, u) for x, u in evals]            # X Q = X X_trᵀ U Λ^-½
    return (U[:, keep] * np.sqrt(lam[keep])).astype(np.float32), evals   # X_tr Q = U Λ^½


def probe_split(feats, task, split, max_iter=1000):
    """Fit one linear probe on a split and score it.

    feats (S, K, F): K samples per scan (8 crops; 1 for FC). Returns a dict with the chosen
    regularisation, split sizes (subjects), val and test metrics, and the test confusion matrix."""
    train, val, test = split
    x_tr, u_tr = _rows(feats, task, train)
    y_tr = task.y[train][u_tr]
    scaler = StandardScaler().fit(x_tr)
    x_tr = scaler.transform(x_tr)
    evals = [(scaler.transform(x), u) for x, u in (_rows(feats, task, val), _rows(feats, task, test))]
    if x_tr.shape[0] < x_tr.shape[1]:
        x_tr, evals = row_space(x_tr, evals)
    classify = task.kind == "classification"
    if classify:
        model = LogisticRegression(max_iter=max_iter, class_weight="balanced", warm_start=True)
        grid, key = C_GRID, "C"
    else:
        model, grid, key = Ridge(), ALPHA_GRID, "alpha"
    best, unconverged = None, 0
    for reg in grid:
        model.set_params(**{key: reg})
        # the fits are many small BLAS calls: waking BLAS threads for each costs more than it
        # saves (10x slower on a busy 2-core machine)
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x_tr, y_tr)
        unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        out = []
        for (x, u), subj in zip(evals, (val, test)):
            p = model.predict_proba(x) if classify else model.predict(x)[:, None]
            p = _subject_mean(p, u)                                 # (U_split, k): crops -> subject
            y = task.y[subj]
            out.append((classification_metrics(y, p, len(task.classes)) if classify
                        else regression_metrics(y, p[:, 0]), p))
        (m_val, _), (m_test, p_test) = out
        score = (m_val["balanced_accuracy"], np.nan_to_num(m_val["auroc"])) if classify else (m_val["r2"],)
        if best is None or score > best[0]:
            best = (score, float(reg), m_val, m_test, p_test)
    _, reg, m_val, m_test, p_test = best
    res = {key: reg, "n_train": int(len(train)), "n_val": int(len(val)), "n_test": int(len(test)),
           "val": m_val, "test": m_test, "unconverged_fits": int(unconverged)}
    if classify:
        res["confusion"] = _confusion(task.y[test], p_test.argmax(1), len(task.classes)).tolist()
    return res


def _confusion(y, pred, k):
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)   # rows true, cols predicted


def run_probe(feats, task, seeds, ratios=(4, 1, 8), max_iter=1000):
    """Every seed's split, one probe each -> {"repeats": [...], "summary": {metric: {mean, std}}}."""
    repeats = []
    for seed in seeds:
        res = probe_split(feats, task, split_subjects(task, ratios, seed), max_iter)
        repeats.append({"seed": int(seed), **res})
    summary = {}
    for m in METRICS[task.kind]:
        v = np.array([r["test"][m] for r in repeats], dtype=float)
        summary[m] = {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                      "std": float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")}
    out = {"summary": summary, "repeats": repeats}
    if task.kind == "classification":
        out["confusion"] = np.sum([r["confusion"] for r in repeats], axis=0).tolist()
    return out


# ----------------------------------------------------------------------------------------------
# features

class Progress:
    """One self-overwriting line on a terminal, a line every ~10 s otherwise (logs)."""

    def __init__(self, label, total):
        self.label, self.total, self.t0, self.last = label, total, time.time(), 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, done):
        now = time.time()
        if done < self.total and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        msg = f"  {self.label}: {done}/{self.total} crops ({rate:.0f} crops/s)"
        if self.tty:
            print("\r" + msg, end="\n" if done >= self.total else "", file=sys.stderr, flush=True)
        else:
            print(msg, file=sys.stderr, flush=True)


def encoder_features(encoder, scans, n_crops=8, batch_size=64, device="cpu", label="features", precision="auto"):
    """Frozen features of every probe crop -> (S, n_crops, 2D) float32.

    Batched under inference_mode. precision: fp32, bf16 (autocast), or auto = runtime.resolve_precision
    (bf16 on CUDA and on CPUs with native bf16). The features are returned as float32 either way."""
    encoder = encoder.to(device).eval()
    per_batch = max(1, batch_size // n_crops)                      # scans per forward
    S, D2 = len(scans), 2 * encoder.config.dim
    out = np.empty((S, n_crops, D2), dtype=np.float32)
    progress = Progress(label, S * n_crops)
    dev = torch.device(device)
    if precision == "auto":
        precision = runtime.resolve_precision(precision, dev)[0]
    with torch.inference_mode(), runtime.autocast(dev, precision):
        for s0 in range(0, S, per_batch):
            idx = np.arange(s0, min(S, s0 + per_batch))
            crops = data.probe_crops(scans, idx, encoder.config.crop_len, n_crops, dev)  # (s, n_crops, C, T')
            f = encoder.features(crops.flatten(0, 1))                  # (s*n_crops, 2D)
            out[idx] = f.float().cpu().numpy().reshape(len(idx), n_crops, D2)
            progress(int(idx[-1] + 1) * n_crops)
    return out


def fc_features(scans, chunk=64):
    """Functional connectivity per scan -> (S, 1, C(C-1)/2) float32: Fisher-z of the Pearson
    correlations over the whole valid scan, upper triangle."""
    iu = np.triu_indices(scans.n_rois, 1)
    out = np.empty((len(scans), 1, len(iu[0])), dtype=np.float32)
    for s0 in range(0, len(scans), chunk):
        r = data.scan_fc(scans, np.arange(s0, min(len(scans), s0 + chunk)))      # (b, C, C)
        out[s0:s0 + len(r), 0] = np.arctanh(np.clip(r[:, iu[0], iu[1]], -0.999999, 0.999999))
    return out


def random_encoder(encoder, network_map, seed=0):
    """A freshly initialised encoder with the checkpoint's config (the 'is pretraining worth it' baseline)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Encoder(encoder.config, network_map).eval()


def _file_id(path):
    """Cheap identity of a file for cache keys: resolved path, size, modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def cached(path, compute):
    """np.load(path) if it exists, else compute() and save atomically (several probe runs share it)."""
    if path is not None and path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass                                                    # unreadable cache: recompute
    arr = compute()
    if path is not None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, path)
        except OSError as e:                                        # read-only checkpoint folder: go on
            print(f"  note: could not cache features in {path.parent} ({e}); use --cache-dir", file=sys.stderr)
    return arr


# ----------------------------------------------------------------------------------------------
# report

def _fmt(m, s, metric):
    if not np.isfinite(m):
        return "n/a"
    if metric in ("balanced_accuracy", "auroc"):
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    return f"{m:.3f} ± {s:.3f}"


METRIC_TITLES = {"balanced_accuracy": "balanced acc (%)", "auroc": "AUROC (%)", "mae": "MAE", "r2": "R²",
                 "pearson_r": "Pearson r"}


def format_table(results, kind):
    metrics = METRICS[kind]
    rows = [["method"] + [METRIC_TITLES[m] for m in metrics]]
    for name, res in results.items():
        rows.append([METHOD_TITLES[name]] + [_fmt(res["summary"][m]["mean"], res["summary"][m]["std"], m)
                                             for m in metrics])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def paired_differences(results, kind):
    """Teacher minus each baseline on the same splits: mean, std and wins per metric. Split noise
    is shared by the methods, so this is a sharper comparison than two independent mean ± std."""
    out = {}
    for name in results:
        if name == "teacher":
            continue
        out[name] = {}
        for m in METRICS[kind]:
            d = np.array([a["test"][m] - b["test"][m] for a, b in
                          zip(results["teacher"]["repeats"], results[name]["repeats"])], dtype=float)
            better = d < 0 if m == "mae" else d > 0
            out[name][m] = {"mean": float(np.nanmean(d)), "std": float(np.nanstd(d)),
                            "teacher_better": int(better.sum()), "repeats": int(np.isfinite(d).sum())}
    return out


SHORT_TITLES = {"teacher": "teacher", "random": "random enc.", "fc": "FC"}


def _fmt_paired(q, kind):
    scale, d = (100, 1) if kind == "classification" else (1, 3)
    return f"{scale * q['mean']:+.{d}f} ± {scale * q['std']:.{d}f} ({q['teacher_better']}/{q['repeats']})"


def format_all_table(tasks):
    """--task all: one row per task, mean ± std per method, then teacher − each baseline on the same
    splits with the number of splits the teacher wins. tasks: {name: run_all's per-task dict}."""
    methods = list(next(iter(tasks.values()))["methods"])
    baselines = [m for m in methods if m != "teacher"]
    rows = [["task", "metric"] + [SHORT_TITLES[m] for m in methods]
            + [f"teacher − {SHORT_TITLES[b]}" for b in baselines if "teacher" in methods]]
    for name, t in tasks.items():
        m = t["metric"]
        row = [name, METRIC_TITLES[m]]
        row += [_fmt(t["methods"][k]["summary"][m]["mean"], t["methods"][k]["summary"][m]["std"], m) for k in methods]
        row += [_fmt_paired(t["teacher_minus_baseline"][b][m], t["kind"]) for b in t["teacher_minus_baseline"]]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot_all(tasks, path, title):
    """--task all: a dot plot, one row per task, the methods side by side (mean ± std over repeats);
    balanced accuracy (chance marked) on the left, R² of regression tasks on the right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = [(k, [n for n, t in tasks.items() if t["kind"] == k]) for k in ("classification", "regression")]
    groups = [(k, names) for k, names in groups if names]
    heights = [len(names) + 0.6 for _, names in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(7.5, 0.9 + 0.42 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (kind, names) in zip(axes[:, 0], groups):
        methods = list(tasks[names[0]]["methods"])
        scale = 100 if kind == "classification" else 1
        for j, meth in enumerate(methods):
            y = np.arange(len(names))[::-1] + (len(methods) - 1 - 2 * j) * 0.12
            s = [tasks[n]["methods"][meth]["summary"][tasks[n]["metric"]] for n in names]
            ax.errorbar([scale * v["mean"] for v in s], y, xerr=[scale * v["std"] for v in s], fmt="o", ms=5,
                        capsize=2, color=f"C{j}", label=METHOD_TITLES[meth])
        if kind == "classification":
            for i, n in enumerate(names):
                chance = 100 / len(tasks[n]["classes"])
                ax.plot([chance, chance], [len(names) - 1 - i - 0.4, len(names) - 1 - i + 0.4], color="grey", lw=1,
                        ls="--", label="chance" if i == 0 else None)
        for i in range(len(names) - 1):
            ax.axhline(i + 0.5, color="0.9", lw=0.8, zorder=0)
        ax.set_yticks(np.arange(len(names))[::-1], names, fontsize=9)
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.set_xlabel("balanced accuracy (%), test subjects" if kind == "classification" else "R², test subjects",
                      fontsize=9)
        ax.grid(axis="x", color="0.92")
    axes[0, 0].legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    fig.suptitle(title, fontsize=9, y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_results(results, task, path, title):
    """Bar chart (mean ± std over repeats) per method; confusion matrix of the teacher for classes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [m for m in METRICS[task.kind] if m != "mae"]
    confusion = results.get("teacher", {}).get("confusion")
    fig, axes = plt.subplots(1, 2 if confusion is not None else 1, figsize=(11 if confusion else 6, 4.2),
                             squeeze=False)
    ax = axes[0, 0]
    names = list(results)
    w = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        mean = [results[n]["summary"][m]["mean"] for n in names]
        std = [results[n]["summary"][m]["std"] for n in names]
        ax.bar(np.arange(len(names)) + (j - (len(metrics) - 1) / 2) * w, mean, w, yerr=std, capsize=3,
               label=METRIC_TITLES[m].replace(" (%)", ""))
    if task.kind == "classification":
        ax.axhline(1 / len(task.classes), color="grey", ls="--", lw=1, label="chance (balanced acc)")
        ax.set_ylim(0, 1)
    ax.set_xticks(np.arange(len(names)), [METHOD_TITLES[n] for n in names], fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    if confusion is not None:
        ax = axes[0, 1]
        cm = np.asarray(confusion)
        frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)       # per true class: recall on the diagonal
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, f"{v}\n{100 * frac[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.6 else "black")
        ticks = np.arange(len(task.classes))
        ax.set_xticks(ticks, task.classes, fontsize=8)
        ax.set_yticks(ticks, task.classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("pretrained teacher, test subjects summed over repeats", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Linear-probe a pretrained Brain-Semantoks teacher (SPEC §9).")
    p.add_argument("--ckpt", required=True, help="teacher.pt written by train.py")
    p.add_argument("--task", required=True, help="column of the labels file to predict, or 'all': every column "
                                                 "in one table (probe_all.json, probe_all.png)")
    add_data_arguments(p)
    p.add_argument("--labels", help="CSV/TSV, one column per task; optional subject/participant_id column "
                                    "(default for an .h5: its own label datasets, e.g. --task sex_bi)")
    p.add_argument("--task-type", default="auto", choices=["auto", "classification", "regression"],
                   help="auto: classes when at most 10 distinct integer/string values, else regression "
                        "(default %(default)s)")
    p.add_argument("--bins", type=int, help="bin a continuous target into this many quantile classes")
    p.add_argument("--repeats", type=int, default=10, help="random splits, seeds 0..repeats-1 (default %(default)s)")
    p.add_argument("--seeds", help="comma-separated split seeds (overrides --repeats)")
    p.add_argument("--split", default="4:1:8", help="train:val:test ratio over subjects (default %(default)s)")
    p.add_argument("--baselines", default="fc,random", help="comma list of fc, random; or none (default %(default)s)")
    p.add_argument("--max-iter", type=int, default=1000, help="LogisticRegression iterations (default %(default)s)")
    p.add_argument("--cache-dir", help="feature cache (default: <ckpt dir>/.feature_cache)")
    p.add_argument("--no-cache", action="store_true", help="always extract features, write no cache")
    p.add_argument("--out", help="results JSON (default: <ckpt dir>/probe_<task>.json, probe_all.json for --task "
                                 "all); the PNG goes beside it")
    return p.parse_args(argv)


def add_data_arguments(p):
    """The options probe.py and embed.py share: the model's map, the data, crops, device."""
    p.add_argument("--networks", default="default",
                   help="ROI -> network map; applies only to a checkpoint in the authors' format (ours carry their "
                        "own): 'default' (the 457-ROI layout, SPEC §2) or a file with one network id per ROI")
    p.add_argument("--data", help="scans: .npy (S, C, T), a folder of per-scan .npy/.csv/.tsv files, or an .h5 in "
                                  "the authors' layout (default: the built-in synthetic probe cohort)")
    p.add_argument("--layout", default="SCT", choices=["SCT", "STC"],
                   help="axis order of a .npy array (default %(default)s)")
    p.add_argument("--tr", type=float, help="repetition time of the data in s (resampled to 2.0 s)")
    p.add_argument("--subjects", help="text file, one subject id per scan (default: BIDS names of a folder's "
                                      "files, X_subjects.txt beside X.npy, or an .h5's long_subject_id)")
    p.add_argument("--crops", type=int, default=8, help="evenly spaced crops per scan (default %(default)s)")
    p.add_argument("--batch-size", type=int, help="crops per forward pass (default 64 on CPU, 512 on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=list(runtime.PRECISIONS),
                   help="feature extraction: bf16 autocast on CUDA and on CPUs with native bf16 (auto), "
                        "fp32, or bf16 (default %(default)s)")


def check_data_arguments(args):
    """Errors in the shared options that need no file."""
    if args.crops < 1:
        raise ValueError("--crops must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if args.data is None and args.subjects is not None:
        raise ValueError("--subjects describes --data; the synthetic probe cohort carries its own ids")


def load_model(ckpt, networks_spec="default"):
    """The frozen teacher and its meta; --networks other than "default" is handed to the loader (it
    maps an authors' checkpoint, and must equal the map one of ours carries)."""
    if networks_spec == "default":
        return load_teacher(ckpt)
    return load_teacher(ckpt, network_map=networks.load_network_map(networks_spec))


def load_data(args, n_rois):
    """--data (or, without it, the built-in synthetic probe cohort) -> (scans, data path, synthetic,
    has_ids). n_rois: the length of the model's network map, which the data must match. has_ids: the
    scans carry subject ids from the data (file names, X_subjects.txt, --subjects, an .h5)."""
    synthetic = args.data is None
    if synthetic:
        folder = Path(synth.ensure_synthetic_cohort())
        data_path = folder / "probe.npy"
        print(f"No --data given: using the built-in SYNTHETIC probe cohort in {folder} (simulated subjects never "
              f"seen in pretraining). Its numbers check the pipeline; they say nothing about real brains.")
    else:
        data_path = Path(args.data)
    scans = data.load_scans(data_path, layout=args.layout, tr=args.tr, subjects=args.subjects)
    has_ids = (data_path.is_dir() or args.subjects is not None or data.is_h5(data_path)
               or data_path.with_name(data_path.stem + "_subjects.txt").exists())
    if scans.n_rois != n_rois:
        raise ValueError(f"the data have {scans.n_rois} ROIs but the checkpoint's network map has {n_rois} "
                         f"entries; the data must use the atlas (ROI set and order) the model was pretrained on"
                         + (" (the built-in synthetic cohort has the default 457 ROIs: pass --data)"
                            if synthetic else ""))
    return scans, data_path, synthetic, has_ids


def _options(args):
    """Validate the options that do not need any file."""
    try:
        ratios = tuple(float(r) for r in args.split.split(":"))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) <= 0:
        raise ValueError(f"--split must be three positive numbers train:val:test, e.g. 4:1:8 (got {args.split!r})")
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers (got {args.seeds!r})") from None
    else:
        if args.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        seeds = list(range(args.repeats))
    baselines = [b.strip().lower() for b in args.baselines.split(",") if b.strip()]
    baselines = [] if baselines == ["none"] else baselines
    bad = [b for b in baselines if b not in ("fc", "random")]
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}; choose from fc, random, or none")
    check_data_arguments(args)
    if args.bins is not None and args.bins < 2:
        raise ValueError("--bins must be at least 2")
    if args.task == ALL and args.task_type != "auto":
        raise ValueError("--task all decides each column's type itself (--bins k still bins the continuous ones); "
                         "--task-type applies to a single task")
    if (args.data is None) != (args.labels is None) and not (args.data and data.is_h5(args.data)):
        raise ValueError("--data and --labels go together (leave both out for the synthetic probe cohort; "
                         "an .h5 file in the authors' layout carries its own labels)")
    return ratios, seeds, baselines


@dataclass
class Setup:
    """What every task of one probe.py run shares: options, the frozen model, the data, the labels."""
    ratios: tuple
    seeds: list
    baselines: list
    device: str
    ckpt: Path
    encoder: Encoder
    meta: dict
    scans: "data.Scans"
    data_path: Path
    synthetic: bool
    has_ids: bool
    labels_path: Path = None          # None: the .h5's own label datasets
    precision: str = "fp32"
    precision_reason: str = ""


def prepare(args):
    """Options, model, data and labels path of a run -> Setup (every error before any work)."""
    ratios, seeds, baselines = _options(args)
    device = str(runtime.resolve_device(args.device))
    ckpt = Path(args.ckpt)
    encoder, meta = load_model(ckpt, args.networks)
    scans, data_path, synthetic, has_ids = load_data(args, len(meta["network_map"]))
    labels_path = (data_path.with_name("probe_labels.csv") if synthetic
                   else Path(args.labels) if args.labels else None)
    precision, why = runtime.resolve_precision(args.precision, device)
    return Setup(ratios, seeds, baselines, device, ckpt, encoder, meta, scans, data_path, synthetic, has_ids,
                 labels_path, precision, why)


def load_task(setup, name, task_type="auto", bins=None):
    """One label column (or .h5 label dataset) -> a splittable Task."""
    values, subjects, notes = task_labels(name, setup.labels_path, setup.scans, setup.has_ids)
    task = make_task(name, values, subjects, task_type, bins)
    task.notes[:0] = notes
    check_splittable(task, setup.ratios)
    return task


def describe_task(task, args, seeds):
    what = (f"classes {', '.join(task.classes)} (subjects per class: "
            f"{', '.join(str(k) for k in np.bincount(task.y, minlength=len(task.classes)))})"
            if task.kind == "classification" else f"target mean {task.y.mean():.3g}, std {task.y.std():.3g}")
    print(f"Task '{task.name}': {task.kind}, {what}")
    print(f"  {len(task.y)} subjects, {len(task.scans)} scans used; "
          f"{task.n_missing} scan(s) dropped for a missing label")
    for n in task.notes:
        print(f"  note: {n}")
    strat = ", stratified by class" if task.kind == "classification" else ""
    print(f"  splits: subjects train/val/test {args.split}{strat}, "
          f"{len(seeds)} repeats (seeds {', '.join(map(str, seeds))})")


def features(args, setup):
    """Per-scan features of the teacher and the baselines -> {method: (S, K, F)}; encoder features
    come from (and go to) the on-disk cache."""
    cache_dir = (None if args.no_cache else Path(args.cache_dir) if args.cache_dir
                 else setup.ckpt.resolve().parent / ".feature_cache")
    device, precision, scans = setup.device, setup.precision, setup.scans
    print(f"  features: {'bf16 autocast' if precision == 'bf16' else 'fp32'} on {device} ({setup.precision_reason})")
    common = dict(data=scans.key, crops=args.crops,
                  crop_len=setup.encoder.config.crop_len, precision=precision, version=1)

    def cache_path(**model):
        key = hashlib.sha1(json.dumps({**common, **model}, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return None if cache_dir is None else cache_dir / f"{key}.npy"

    def extract(enc, label):
        batch = args.batch_size or (512 if device.startswith("cuda") else 64)
        return lambda: encoder_features(enc, scans, args.crops, batch, device, label, precision)

    # the map is part of the model: --networks can map one authors' checkpoint in several ways
    network_map = setup.meta["network_map"].numpy()
    map_id = hashlib.sha1(network_map.tobytes()).hexdigest()
    feats = {"teacher": cached(cache_path(model=_file_id(setup.ckpt), map=map_id),
                               extract(setup.encoder, "teacher features"))}
    if "random" in setup.baselines:
        model_id = dict(model="random", seed=0, config=setup.meta["encoder_config"], torch=torch.__version__,
                        map=map_id)
        feats["random"] = cached(cache_path(**model_id),
                                 extract(random_encoder(setup.encoder, network_map), "random-encoder features"))
    if "fc" in setup.baselines:
        feats["fc"] = fc_features(scans)
    return feats


def probe_methods(feats, task, setup, max_iter, verbose=True):
    """run_probe for every method on the same splits -> {method: run_probe result}."""
    results = {}
    for name, f in feats.items():
        t0 = time.time()
        results[name] = run_probe(f, task, setup.seeds, setup.ratios, max_iter)
        bad = sum(r["unconverged_fits"] for r in results[name]["repeats"])
        if verbose or bad:
            print(f"  probed {METHOD_TITLES[name]} in {time.time() - t0:.1f} s"
                  + (f" ({bad} fit(s) hit --max-iter {max_iter})" if bad else ""))
    return results


def print_results(task, results, setup):
    """The method x metric table and the paired differences of one task -> the paired differences."""
    cohort = "SYNTHETIC probe cohort" if setup.synthetic else str(setup.data_path)
    print(f"\n{task.name} on {cohort}: test subjects, mean ± std over {len(setup.seeds)} repeats")
    print(format_table(results, task.kind))
    paired = paired_differences(results, task.kind)
    m = PRIMARY[task.kind]
    for name, p in paired.items():
        q, scale = p[m], 100 if task.kind == "classification" else 1
        d = 1 if scale > 1 else 3
        print(f"teacher − {METHOD_TITLES[name]}, {METRIC_TITLES[m]} on the same splits: {scale * q['mean']:+.{d}f} "
              f"± {scale * q['std']:.{d}f} (teacher better in {q['teacher_better']}/{q['repeats']})")
    return paired


def run_config(args, setup):
    """The settings every report records (JSON)."""
    return {"ckpt": str(setup.ckpt.resolve()), "ckpt_step": setup.meta.get("step"),
            "data": str(setup.data_path.resolve()), "labels": str((setup.labels_path or setup.data_path).resolve()),
            "layout": args.layout, "tr": args.tr, "task_type": args.task_type, "bins": args.bins,
            "split": list(setup.ratios), "seeds": setup.seeds, "crops": args.crops,
            "crop_len": setup.encoder.config.crop_len, "device": setup.device, "precision": setup.precision,
            "precision_reason": setup.precision_reason, "encoder_config": setup.meta["encoder_config"],
            "C_grid": C_GRID.tolist(), "alpha_grid": ALPHA_GRID.tolist(), "max_iter": args.max_iter}


def task_summary(task):
    return {"kind": task.kind, "classes": task.classes, "n_subjects": len(task.y), "n_scans": int(len(task.scans)),
            "n_missing": task.n_missing, "notes": task.notes}


def run(args):
    """One task -> its report (table on stdout, probe_<task>.json and .png); --task all: run_all."""
    setup = prepare(args)
    if args.task == ALL:
        return run_all(args, setup)
    task = load_task(setup, args.task, args.task_type, args.bins)
    describe_task(task, args, setup.seeds)
    results = probe_methods(features(args, setup), task, setup, args.max_iter)
    paired = print_results(task, results, setup)

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", task.name)
    out = Path(args.out) if args.out else setup.ckpt.resolve().parent / f"probe_{safe}.json"
    report = {
        "task": task.name, "kind": task.kind, "classes": task.classes, "synthetic": setup.synthetic,
        "config": {**run_config(args, setup), "n_subjects": len(task.y), "n_scans": int(len(task.scans)),
                   "n_missing": task.n_missing, "notes": task.notes},
        "std": "over repeats, ddof 0", "methods": results, "teacher_minus_baseline": paired,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(report), indent=1))
    png = out.with_suffix(".png")
    plot_results(results, task, png, f"{task.name} ({'synthetic' if setup.synthetic else setup.data_path.name}), "
                                     f"{len(setup.seeds)} repeats")
    print(f"\nwrote {out} and {png}")
    return report


def label_columns(setup):
    """Every task a run with --task all probes: the labels file's columns but the subject column, or
    the .h5 file's label datasets."""
    if setup.labels_path is None:
        from h5data import label_names
        return label_names(setup.scans.source, len(setup.scans))
    header, _ = read_labels(setup.labels_path)
    return [h for h in header if h.lower() not in SUBJECT_COLUMNS]


def run_all(args, setup):
    """--task all: every label column, features extracted once, one task x method table,
    probe_all.json and probe_all.png. A column that cannot be probed is skipped with the reason."""
    names = label_columns(setup)
    if not names:
        raise ValueError(f"--task all: {setup.labels_path or setup.data_path} has no label columns")
    print(f"Tasks: {', '.join(names)} ({len(setup.seeds)} repeats of {args.split} subject splits each)")
    feats = features(args, setup)
    tasks, skipped = {}, {}
    for name in names:
        try:
            task = load_task(setup, name)
            if args.bins is not None and task.kind == "regression":     # --bins: continuous columns only
                task = load_task(setup, name, bins=args.bins)
        except ValueError as e:
            skipped[name] = str(e)
            print(f"  skipped '{name}': {e}")
            continue
        t0 = time.time()
        results = probe_methods(feats, task, setup, args.max_iter, verbose=False)
        tasks[name] = {**task_summary(task), "metric": PRIMARY[task.kind], "methods": results,
                       "teacher_minus_baseline": paired_differences(results, task.kind)}
        print(f"  {name}: {task.kind}, {len(task.y)} subjects, probed in {time.time() - t0:.1f} s")
    if not tasks:
        raise ValueError("--task all: no label column could be probed (reasons above)")
    cohort = "SYNTHETIC probe cohort" if setup.synthetic else str(setup.data_path)
    print(f"\nEvery task on {cohort}: test subjects, mean ± std over {len(setup.seeds)} repeats; "
          f"teacher − baseline on the same splits (teacher better in k of n)")
    print(format_all_table(tasks))
    out = Path(args.out) if args.out else setup.ckpt.resolve().parent / "probe_all.json"
    report = {"task": ALL, "synthetic": setup.synthetic, "config": run_config(args, setup),
              "std": "over repeats, ddof 0", "tasks": tasks, "skipped": skipped}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(report), indent=1))
    png = out.with_suffix(".png")
    plot_all(tasks, png, f"every task ({'synthetic' if setup.synthetic else setup.data_path.name}), "
                         f"{len(setup.seeds)} repeats, mean ± std")
    print(f"\nwrote {out} and {png}")
    return report


def _finite(obj):
    """NaN (e.g. AUROC of a split missing a class) -> null, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def cli(run_fn, args, prog):
    """Run a script's `run(args)`; a ValueError (bad input) is one line on stderr and exit code 2."""
    try:
        return run_fn(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv=None):
    return cli(run, parse_args(argv), "probe.py")


if __name__ == "__main__":
    main()
