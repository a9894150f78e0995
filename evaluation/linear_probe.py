"""The linear probe: fit on a frozen model's features, score per subject (SPEC §9).

Features are (S, K, F): K samples per scan (8 crops of a frozen encoder; 1 for the FC baseline).
`probe_split` standardises them, fits a linear model with every crop one training sample
(LogisticRegression, class-balanced, for classes; Ridge for a continuous target), picks the
regularisation strength on the validation subjects, and scores val and test with the class
probabilities (or predictions) averaged over all crops of a subject. `run_probe` does that on
every seed's subject split (labels.split_subjects) and reports mean ± std over the repeats;
`paired_differences` compares two methods on the same splits.

    python -m pytest -q tests/test_probe.py      # the probe's properties, on synthetic features
"""
import copy
import warnings

import numpy as np
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from data.labels import split_subjects

C_GRID = np.logspace(-4, 1, 6)        # LogisticRegression C, strongest regularisation first (warm starts)
ALPHA_GRID = np.logspace(-2, 6, 9)    # Ridge alpha
METRICS = {"classification": ("balanced_accuracy", "auroc"), "regression": ("mae", "r2", "pearson_r")}
PRIMARY = {"classification": "balanced_accuracy", "regression": "r2"}    # higher is better


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


def _score(model, x, u, task, subj):
    """A fitted model on one split's crops -> (metrics, (U_split, k) class probabilities or
    prediction per subject, averaged over the subject's crops). x (M, F), u (M,) local subject index."""
    classify = task.kind == "classification"
    p = model.predict_proba(x) if classify else model.predict(x)[:, None]
    p = _subject_mean(p, u)                                         # (U_split, k): crops -> subject
    y = task.y[subj]
    return (classification_metrics(y, p, len(task.classes)) if classify else regression_metrics(y, p[:, 0])), p


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
    (x_val, u_val), (x_test, u_test) = evals
    best, unconverged = None, 0
    for reg in grid:
        model.set_params(**{key: reg})
        # the fits are many small BLAS calls: waking BLAS threads for each costs more than it
        # saves (10x slower on a busy 2-core machine)
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x_tr, y_tr)
        unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        m_val, _ = _score(model, x_val, u_val, task, val)
        score = (m_val["balanced_accuracy"], np.nan_to_num(m_val["auroc"])) if classify else (m_val["r2"],)
        if best is None or score > best[0]:
            # a copy: the next fit warm-starts from (and overwrites) `model`; test is scored once, below
            best = (score, float(reg), m_val, copy.deepcopy(model))
    _, reg, m_val, model = best
    m_test, p_test = _score(model, x_test, u_test, task, test)
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
    summary = {m: _mean_std([r["test"][m] for r in repeats]) for m in METRICS[task.kind]}
    out = {"summary": summary, "repeats": repeats}
    if task.kind == "classification":
        out["confusion"] = np.sum([r["confusion"] for r in repeats], axis=0).tolist()
    return out

def paired_differences(results, kind, reference="teacher"):
    """`reference` (the teacher; finetune.py: the fine-tuned teacher) minus each other method on the
    same splits: mean, std and wins ("<reference>_better") per metric. Split noise is shared by the
    methods, so this is a sharper comparison than two independent mean ± std."""
    out = {}
    for name in results:
        if name == reference:
            continue
        out[name] = {}
        for m in METRICS[kind]:
            d = np.array([a["test"][m] - b["test"][m] for a, b in
                          zip(results[reference]["repeats"], results[name]["repeats"])], dtype=float)
            better = d < 0 if m == "mae" else d > 0
            out[name][m] = {**_mean_std(d), f"{reference}_better": int(better.sum()),
                            "repeats": int(np.isfinite(d).sum())}
    return out


def _mean_std(values):
    """{"mean", "std"} over the finite values (a split can lack a class: AUROC NaN); NaN when none is."""
    v = np.asarray(values, dtype=float)
    if not np.isfinite(v).any():
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v))}


