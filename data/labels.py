"""Labels, tasks and subject splits: what a linear probe predicts, and how subjects are divided
(SPEC §9).

- `read_labels(path)`: a CSV/TSV with a header row and one column per task; `MISSING` (files.py) lists the
  spellings of a missing value ("", NA, n/a, nan, none, null, ?; any case): that scan is dropped
  for that task. The same tokens mark missing values in the time-series tables files.py reads.
- `scan_labels(...)` / `task_labels(...)`: tie label rows to scans, by subject id (a `subject`,
  `subject_id` or `participant_id` column; a leading "sub-" is ignored) when the scans carry ids,
  else row by row; or read a label dataset of an .h5 in the authors' layout (h5.py).
- `make_task(name, values, subjects)` -> `Task`: classes or regression (at most 10 distinct
  integers or strings: classes; --task-type overrides; --bins k: k quantile classes), with the
  scans collapsed to subjects, the unit of splitting and scoring.
- `split_subjects(task, ratios, seed)`: train/val/test subjects, 4:1:8 by default, stratified by
  class; all scans of a subject land in one split. `check_splittable` says before any work
  when a task is too small for that.

    python -m data.labels labels.csv TASK   # how a column would be probed: task type, classes, subjects
"""
import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.files import MISSING
from machine.cli import cli

MAX_CLASSES = 10                      # auto task type: at most this many distinct values -> classes
SUBJECT_COLUMNS = ("subject", "subject_id", "participant_id")


# ----------------------------------------------------------------------------------------------
# labels files -> one raw value per scan

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
    cols = [h for h in header if h.lower() not in SUBJECT_COLUMNS]
    if task not in header:
        raise ValueError(f"unknown task '{task}': the labels file has no such column; available: {', '.join(cols)}")
    if task not in cols:                       # numeric ids would be a silent regression on the ids
        raise ValueError(f"'{task}' is the subject column: it says which scans belong to one subject and is not "
                         f"a label to probe; available: {', '.join(cols)}")
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


def task_labels(task, labels_path, scans, table=None):
    """Raw label per scan (None = missing), subject id per scan and notes for `task`: from the labels
    file, or (labels_path None) from the label datasets of the .h5 file the scans came from.
    table: read_labels(labels_path) already read, so that --task all reads the file once."""
    if labels_path is None:
        from data.h5 import read_label   # h5py only for .h5 data
        values = read_label(scans.source, task, len(scans))
        return [None if v is None or v.lower() in MISSING else v for v in values], list(scans.subjects), []
    header, rows = table or read_labels(labels_path)
    return scan_labels(header, rows, task, list(scans.subjects), scans.ids_from_data)


def label_columns(labels_path, scans, table=None):
    """Every task of a labels file (its columns but the subject column), or (labels_path None) the
    label datasets of the .h5 file the scans came from. table: as in task_labels."""
    if labels_path is None:
        from data.h5 import label_names
        return label_names(scans.source, len(scans))
    header, _ = table or read_labels(labels_path)
    return [h for h in header if h.lower() not in SUBJECT_COLUMNS]


# ----------------------------------------------------------------------------------------------
# raw values -> task

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
    if not keep.any():
        raise ValueError(f"task '{name}': every scan's label is missing")
    vals, num = _as_numbers([v for v in values if v is not None])
    kind = _task_kind(name, vals, num, task_type, bins)
    scan_idx = np.flatnonzero(keep)
    uniq, unit, notes = _collapse_to_subjects([subjects[i] for i in scan_idx])
    task = Task(name, kind, None, uniq, scan_idx, unit, None, int((~keep).sum()), notes)
    if kind == "regression" or bins is not None:
        # several scans of one subject: their targets are averaged
        task.y = np.bincount(unit, weights=num, minlength=len(uniq)) / np.bincount(unit, minlength=len(uniq))
        return task if bins is None else _binned(task, bins)
    return _classes(task, vals, num is not None)


def _as_numbers(vals):
    """Label strings -> (strings with "1" and "1.0" spelled alike, float array or None if any value
    is not a finite number)."""
    try:
        num = np.array([float(v) for v in vals])
    except ValueError:
        return vals, None
    if not np.isfinite(num).all():
        return vals, None
    return [str(int(v)) if v == int(v) else repr(float(v)) for v in num], num


def _task_kind(name, vals, num, task_type, bins):
    """classification or regression, from --task-type and --bins or (auto) from the values."""
    numeric, n_distinct = num is not None, len(set(vals))
    if bins is not None:
        if task_type == "regression":
            raise ValueError("--bins turns the target into classes; it cannot be combined with --task-type regression")
        if not numeric:
            raise ValueError(f"--bins needs a numeric target, but task '{name}' has non-numeric values")
        return "classification"
    if task_type != "auto":
        if task_type == "regression" and not numeric:
            raise ValueError(f"task '{name}' has non-numeric values; a regression target must be numbers")
        return task_type
    if numeric and n_distinct <= MAX_CLASSES and np.all(num == np.round(num)):
        return "classification"
    if numeric:
        return "regression"
    if n_distinct <= MAX_CLASSES:
        return "classification"
    raise ValueError(f"task '{name}' has {n_distinct} distinct non-numeric values; that does not look like "
                     f"classes (at most {MAX_CLASSES}); pass --task-type classification to force it")


def _collapse_to_subjects(kept_subj):
    """Subject id per labelled scan -> (subjects in order of first appearance, subject index per
    scan, notes)."""
    uniq = list(dict.fromkeys(kept_subj))
    pos = {s: i for i, s in enumerate(uniq)}
    unit = np.array([pos[s] for s in kept_subj], dtype=np.int64)
    notes = []
    if len(uniq) < len(kept_subj):
        notes.append(f"{len(kept_subj)} scans from {len(uniq)} subjects: all scans of a subject share a split "
                     f"and are scored together")
    return uniq, unit, notes


def _binned(task, bins):
    """A regression task (per-subject targets in task.y) -> `bins` quantile classes."""
    edges = np.unique(np.quantile(task.y, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        raise ValueError(f"task '{task.name}' cannot be binned into {bins} quantile classes: too few distinct values")
    task.y = np.searchsorted(edges[1:-1], task.y, side="right")
    task.classes = [f"[{a:.4g}, {b:.4g}{']' if i == len(edges) - 2 else ')'}"
                    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]
    if len(edges) - 1 < bins:
        task.notes.append(f"only {len(edges) - 1} quantile bins are distinct (ties in the target)")
    return task


def _classes(task, vals, numeric):
    """Per-scan class strings -> task.y, a class index per subject (constant within a subject)."""
    classes = sorted(set(vals), key=(lambda v: float(v)) if numeric else str)
    cls_of = {c: i for i, c in enumerate(classes)}
    y = np.full(len(task.subjects), -1, dtype=np.int64)
    for u, v in zip(task.unit, vals):
        if y[u] >= 0 and y[u] != cls_of[v]:
            raise ValueError(f"subject {task.subjects[u]} has scans with different '{task.name}' labels "
                             f"({classes[y[u]]}, {v}); a class label must be constant within a subject")
        y[u] = cls_of[v]
    if len(classes) < 2:
        raise ValueError(f"task '{task.name}' has a single class ({classes[0]}); nothing to probe")
    task.y, task.classes = y, classes
    return task


# ----------------------------------------------------------------------------------------------
# subject splits

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


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="How a column of a labels file would be probed: task type, classes, "
                                            "subjects (rows are scans in order; a subject column groups them)")
    p.add_argument("labels", help="CSV/TSV with a header row")
    p.add_argument("task", help="the column")
    return cli(_describe, p.parse_args(argv), "labels.py")


def _describe(args):
    """labels.py labels.csv TASK -> the Task, described on stdout."""
    header, rows = read_labels(args.labels)
    values, subjects, _ = scan_labels(header, rows, args.task, [f"row{i}" for i in range(len(rows))], False)
    t = make_task(args.task, values, subjects)
    print(f"{t.name}: {t.kind}, {len(t.y)} subjects, {len(t.scans)} rows used, {t.n_missing} missing"
          + (f"; classes {', '.join(t.classes)} (subjects per class: {np.bincount(t.y).tolist()})"
             if t.classes else f"; target mean {t.y.mean():.3g}, std {t.y.std():.3g}"))
    for n in t.notes:
        print(f"  note: {n}")
    return t


if __name__ == "__main__":
    main()
