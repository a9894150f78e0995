"""Linear probing of a frozen Brain-Semantoks teacher: how a pretrained model is judged (SPEC §9).

    python probe.py --ckpt runs/demo/teacher.pt --task sz                   # built-in synthetic cohort
    python probe.py --ckpt runs/demo/teacher.pt --task all                  # every label: one table, probe_all.*
    python probe.py --ckpt teacher.pt --data scans.npy --labels labels.csv --task age --bins 3
    python probe.py --ckpt teacher.pt --data derivatives/xcpd/ --labels participants.tsv --task dx
    python probe.py --ckpt teacher.pt --data ukb.h5 --task sex_bi          # the authors' layout, its own labels

A run is four steps, each in its own module:

  load      the frozen teacher (training/checkpoint.py), the data (data/load.py, or the built-in
            synthetic cohort; evaluation/options.py: the options shared with embed.py) and the
            labels -> a Task (data/labels.py: labels files, tasks, subject splits);
  features  every scan gives 8 evenly spaced crops (data/preprocess.probe_crops); each crop goes
            through the frozen teacher's `features()` (mean of the N·P output tokens ‖ CLS, 2D
            values), cached on disk per checkpoint and data, so probing several tasks extracts them
            once (evaluation/features.py);
  fit       a linear model on standardised features, every crop one training sample. Subjects (not
            scans, not crops) are split train/val/test 4:1:8, stratified by class; all scans of a
            subject land in one split. The regularisation strength is picked on val; val and test
            scores are the class probabilities (or predictions) averaged over all crops of a
            subject, then the metric. 10 repeats, seeds 0-9, mean ± std (evaluation/linear_probe.py). The same
            splits also score two baselines: functional connectivity (Fisher-z Pearson correlations
            over the whole scan, one sample per scan) and a randomly initialised encoder of the
            checkpoint's config;
  report    a table on stdout, probe_<task>.json (every split's numbers) and probe_<task>.png next
            to the checkpoint (evaluation/report.py). --task all probes every label column (or .h5 label
            dataset) with features extracted once: one task x method table with teacher − baseline
            differences on the same splits, probe_all.json and probe_all.png (a column that cannot
            be probed is skipped, with the reason).

Labels: a CSV/TSV with one column per task ("", NA, n/a, nan, none, null, ? = missing: that scan is
dropped for that task). With a `subject` (or `subject_id`, `participant_id`) column, rows are matched
to scans by subject id (a leading "sub-" is ignored) when the scans carry ids (BIDS names of a
folder's files, X_subjects.txt beside X.npy, or --subjects); for an array without ids, rows are
scans in order and the subject column says which scans belong to one subject. Without a subject
column, rows are scans in order. Classification when the values are at most 10 distinct integers or
strings, regression otherwise (--task-type overrides; --bins k makes k quantile classes).
An .h5 dataset in the authors' layout (data/h5.py) carries its labels: without --labels, --task names
one of its datasets of one value per scan (e.g. sex_bi, labels/sex); --labels still works and wins.
"""
import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

from data import labels
from data.load import is_h5
from data.scans import Scans
from encoder import Encoder
from evaluation import features, options, report
from evaluation.linear_probe import PRIMARY, paired_differences, run_probe
from machine import runtime
from machine.cli import cli
from training import checkpoint

ALL = "all"                           # --task all: every label column in one run (run_all)


# ----------------------------------------------------------------------------------------------
# CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Linear-probe a pretrained Brain-Semantoks teacher (SPEC §9).")
    p.add_argument("--ckpt", required=True, help="teacher.pt written by train.py (or the authors' checkpoint)")
    p.add_argument("--task", required=True, help="column of the labels file to predict, or 'all': every column "
                                                 "in one table (probe_all.json, probe_all.png)")
    options.add_data_arguments(p)
    p.add_argument("--labels", help="CSV/TSV, one column per task; optional subject/participant_id column "
                                    "(default for an .h5: its own label datasets, e.g. --task sex_bi)")
    p.add_argument("--task-type", default="auto", choices=["auto", "classification", "regression"],
                   help="auto: classes when at most 10 distinct integer/string values, else regression "
                        "(default %(default)s)")
    p.add_argument("--bins", type=int, help="bin a continuous target into this many quantile classes (e.g. 3 "
                                            "for age tertiles), to read it as balanced accuracy")
    p.add_argument("--repeats", type=int, default=10, help="random subject splits, seeds 0..repeats-1; fewer "
                                                           "runs faster, more narrows the std (default %(default)s)")
    p.add_argument("--seeds", help="comma-separated split seeds (overrides --repeats)")
    p.add_argument("--split", default="4:1:8", help="train:val:test ratio over subjects (default %(default)s)")
    p.add_argument("--baselines", default="fc,random", help="comma list of fc, random; or none (default %(default)s)")
    p.add_argument("--max-iter", type=int, default=1000, help="LogisticRegression iterations; raise it when the "
                                                              "run reports fits that hit it (default %(default)s)")
    p.add_argument("--cache-dir", help="feature cache (default: <ckpt dir>/.feature_cache); point it elsewhere when "
                                       "the checkpoint's folder is read-only")
    p.add_argument("--no-cache", action="store_true", help="always extract features, write no cache")
    p.add_argument("--out", help="results JSON (default: <ckpt dir>/probe_<task>.json, probe_all.json for --task "
                                 "all); the PNG goes beside it")
    return p.parse_args(argv)


def _options(args):
    """Validate the options that do not need any file."""
    try:
        ratios = tuple(float(r) for r in args.split.split(":"))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) <= 0:
        raise ValueError(f"--split must be three positive numbers train:val:test, e.g. 4:1:8 (got {args.split!r})")
    if args.seeds is not None:
        seeds = _seeds(args.seeds)
    else:
        if args.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        seeds = list(range(args.repeats))
    if args.max_iter < 1:
        raise ValueError(f"--max-iter must be at least 1 (got {args.max_iter})")
    baselines = [b.strip().lower() for b in args.baselines.split(",") if b.strip()]
    baselines = [] if baselines == ["none"] else baselines
    bad = [b for b in baselines if b not in ("fc", "random")]
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}; choose from fc, random, or none")
    options.check_data_arguments(args)
    if args.bins is not None and args.bins < 2:
        raise ValueError("--bins must be at least 2")
    if args.task == ALL and args.task_type != "auto":
        raise ValueError("--task all decides each column's type itself (--bins k still bins the continuous ones); "
                         "--task-type applies to a single task")
    if args.out is not None and Path(args.out).suffix.lower() != ".json":
        raise ValueError(f"--out {args.out}: expected a name ending in .json (the PNG is written beside it, "
                         f"with .png)")
    if (args.data is None) != (args.labels is None) and not (args.data and is_h5(args.data)):
        raise ValueError("--data and --labels go together (leave both out for the synthetic probe cohort; "
                         "an .h5 file in the authors' layout carries its own labels)")
    return ratios, seeds, baselines


def _seeds(text):
    """--seeds "0,3,7" -> [0, 3, 7]: non-negative (numpy seeds a split with them), each once (a seed
    given twice would be the same split counted as two repeats)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = None
    if not seeds:
        raise ValueError(f"--seeds must be comma-separated integers, e.g. 0,1,2 (got {text!r})")
    if min(seeds) < 0:
        raise ValueError(f"--seeds must be non-negative (got {min(seeds)})")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"--seeds lists {', '.join(map(str, twice))} more than once; each seed is one split, "
                         f"so a repeated seed would count the same split twice")
    return seeds


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
    scans: Scans
    data_path: Path
    synthetic: bool
    labels_path: Path = None          # None: the .h5's own label datasets
    precision: str = "fp32"
    precision_reason: str = ""


def prepare(args):
    """Options, model, data and labels path of a run -> Setup (every error before any work)."""
    ratios, seeds, baselines = _options(args)
    device = str(runtime.resolve_device(args.device))
    ckpt = Path(args.ckpt)
    encoder, meta = checkpoint.load_teacher(ckpt, network_map=options.teacher_map(args.networks))
    scans, data_path, synthetic = options.load_data(args, len(meta["network_map"]))
    labels_path = (data_path.with_name("probe_labels.csv") if synthetic
                   else Path(args.labels) if args.labels else None)
    precision, why = runtime.resolve_precision(args.precision, device)
    return Setup(ratios, seeds, baselines, device, ckpt, encoder, meta, scans, data_path, synthetic, labels_path,
                 precision, why)


def load_task(setup, name, task_type="auto", bins=None, table=None, continuous_only=False):
    """One label column (or .h5 label dataset) -> a splittable Task. continuous_only (--task all):
    --bins applies only to a column that would otherwise be a regression, and only the task that is
    probed (binned or not) is checked for splittability. table: the labels file, read once."""
    values, subjects, notes = labels.task_labels(name, setup.labels_path, setup.scans, table)
    task = labels.make_task(name, values, subjects, task_type, None if continuous_only else bins)
    if continuous_only and bins is not None and task.kind == "regression":
        task = labels.make_task(name, values, subjects, bins=bins)
    task.notes[:0] = notes
    labels.check_splittable(task, setup.ratios)
    return task


def load_all_tasks(args, setup):
    """--task all: every label column -> ({name: splittable Task}, {name: why it is skipped}), the
    labels file read once; every error here comes before any feature is extracted."""
    table = labels.read_labels(setup.labels_path) if setup.labels_path is not None else None
    names = labels.label_columns(setup.labels_path, setup.scans, table)
    if not names:
        raise ValueError(f"--task all: {setup.labels_path or setup.data_path} has no label columns")
    print(f"Tasks: {', '.join(names)} ({len(setup.seeds)} repeats of {args.split} subject splits each)")
    tasks, skipped = {}, {}
    for name in names:
        try:
            tasks[name] = load_task(setup, name, bins=args.bins, table=table, continuous_only=True)
        except ValueError as e:
            skipped[name] = str(e)
            print(f"  skipped '{name}': {e}")
    if not tasks:
        raise ValueError("--task all: no label column could be probed (reasons above)")
    return tasks, skipped


def cohort(setup):
    """How reports name the data."""
    return "SYNTHETIC probe cohort" if setup.synthetic else str(setup.data_path)


def probe_methods(feats, task, setup, max_iter, verbose=True):
    """run_probe for every method on the same splits -> {method: run_probe result}."""
    results = {}
    for name, f in feats.items():
        t0 = time.time()
        results[name] = run_probe(f, task, setup.seeds, setup.ratios, max_iter)
        bad = sum(r["unconverged_fits"] for r in results[name]["repeats"])
        if verbose or bad:
            print(f"  probed {report.METHOD_TITLES[name]} in {time.time() - t0:.1f} s"
                  + (f" ({bad} fit(s) hit --max-iter {max_iter})" if bad else ""))
    return results


# ----------------------------------------------------------------------------------------------
# a run: load -> features -> fit -> report

def run(args):
    """One task -> its report (table on stdout, probe_<task>.json and .png); --task all: run_all."""
    setup = prepare(args)                                                     # load
    if args.task == ALL:
        return run_all(args, setup)
    task = load_task(setup, args.task, args.task_type, args.bins)
    report.describe_task(task, args.split, setup.seeds)
    feats = features.method_features(args, setup)                             # features
    results = probe_methods(feats, task, setup, args.max_iter)                # fit
    paired = paired_differences(results, task.kind)
    report.print_results(task, results, paired, cohort(setup), len(setup.seeds))   # report
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", task.name)
    out = _out_path(args, setup, f"probe_{safe}.json")
    rep = {
        "task": task.name, "kind": task.kind, "classes": task.classes, "synthetic": setup.synthetic,
        "config": {**report.run_config(args, setup), "n_subjects": len(task.y), "n_scans": int(len(task.scans)),
                   "n_missing": task.n_missing, "notes": task.notes},
        "std": "over repeats, ddof 0", "methods": results, "teacher_minus_baseline": paired,
    }
    title = f"{task.name} ({'synthetic' if setup.synthetic else setup.data_path.name}), {len(setup.seeds)} repeats"
    report.save(rep, out, lambda png: report.plot_results(results, task, png, title))
    return rep


def run_all(args, setup):
    """--task all: every label column, features extracted once, one task x method table,
    probe_all.json and probe_all.png. A column that cannot be probed is skipped with the reason."""
    tasks, skipped = load_all_tasks(args, setup)
    feats = features.method_features(args, setup)
    probed = {}
    for name, task in tasks.items():
        t0 = time.time()
        results = probe_methods(feats, task, setup, args.max_iter, verbose=False)
        probed[name] = {**report.task_summary(task), "metric": PRIMARY[task.kind], "methods": results,
                        "teacher_minus_baseline": paired_differences(results, task.kind)}
        print(f"  {name}: {task.kind}, {len(task.y)} subjects, probed in {time.time() - t0:.1f} s")
    print(f"\nEvery task on {cohort(setup)}: test subjects, mean ± std over {len(setup.seeds)} repeats; "
          f"teacher − baseline on the same splits (teacher better in k of n)")
    print(report.format_all_table(probed))
    out = _out_path(args, setup, "probe_all.json")
    rep = {"task": ALL, "synthetic": setup.synthetic, "config": report.run_config(args, setup),
           "std": "over repeats, ddof 0", "tasks": probed, "skipped": skipped}
    title = (f"every task ({'synthetic' if setup.synthetic else setup.data_path.name}), "
             f"{len(setup.seeds)} repeats, mean ± std")
    report.save(rep, out, lambda png: report.plot_all(probed, png, title))
    return rep


def _out_path(args, setup, default_name):
    """--out, else `default_name` beside the checkpoint."""
    return Path(args.out) if args.out else setup.ckpt.resolve().parent / default_name


def main(argv=None):
    return cli(run, parse_args(argv), "probe.py")


if __name__ == "__main__":
    main()
