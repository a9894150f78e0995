"""Linear probing of a frozen Brain-Semantoks teacher: how a pretrained model is judged (SPEC §9).

    python probe.py --ckpt runs/demo/teacher.pt --task sz                   # built-in synthetic cohort
    python probe.py --ckpt runs/demo/teacher.pt --task all                  # every label: one table, probe_all.*
    python probe.py --ckpt teacher.pt --data scans.npy --labels labels.csv --task age --bins 3
    python probe.py --ckpt teacher.pt --data derivatives/xcpd/ --labels participants.tsv --task dx
    python probe.py --ckpt teacher.pt --data ukb.h5 --task sex_bi          # the authors' layout, its own labels
    python probe.py --ckpt hf:SamGijsen/Brain-Semantoks --data cortex.npy --atlases schaefer400 \
                    --bandpass 0.01 0.1 --labels labels.csv --task sex     # the release, cortex only, filtered
    python probe.py --ckpt runs/demo/teacher.pt --task all --by-network     # + which networks carry each label

A run is four steps, each in its own module:

  load      the frozen teacher (training/checkpoint.py), the data (data/load.py, or the built-in
            synthetic cohort; evaluation/options.py: the options shared with embed.py) and the
            labels -> a Task (data/labels.py: labels files, tasks, subject splits), all through
            evaluation/setup.py, which finetune.py shares;
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
from pathlib import Path

from evaluation import by_network, features, options, report
from evaluation.linear_probe import PRIMARY, paired_differences, run_probe
from evaluation.setup import ALL, add_task_arguments, cohort, load_all_tasks, load_task, out_path, prepare
from machine.cli import cli
from machine.fileio import check_writable
from training import release


# ----------------------------------------------------------------------------------------------
# CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Linear-probe a pretrained Brain-Semantoks teacher (SPEC §9).")
    p.add_argument("--ckpt", required=True, help="teacher.pt written by train.py, the authors' checkpoint, or the "
                                                 "release by name: hf:SamGijsen/Brain-Semantoks[/FILE][@REVISION]")
    p.add_argument("--task", required=True, help="column of the labels file to predict, or 'all': every column "
                                                 "in one table (probe_all.json, probe_all.png)")
    options.add_data_arguments(p)
    add_task_arguments(p)
    p.add_argument("--baselines", default="fc,random", help="comma list of fc, random; or none (default %(default)s)")
    p.add_argument("--max-iter", type=int, default=1000, help="LogisticRegression iterations; raise it when the "
                                                              "run reports fits that hit it (default %(default)s)")
    p.add_argument("--cache-dir", help="feature cache (default: <ckpt dir>/.feature_cache); point it elsewhere when "
                                       "the checkpoint's folder is read-only")
    p.add_argument("--no-cache", action="store_true", help="always extract features, write no cache")
    p.add_argument("--by-network", action="store_true", help="also probe, for every network, the teacher's features "
                   "with all other networks masked and with it alone masked: which networks carry the label "
                   "(evaluation/by_network.py; 2N more feature extractions, cached; probe_<task>_by_network.*)")
    p.add_argument("--out", help="results JSON (default: <ckpt dir>/probe_<task>.json, probe_all.json for --task "
                                 "all); the PNG goes beside it")
    return p.parse_args(argv)


def check_probe_options(args):
    """The probe's own options, before any file is read."""
    if args.max_iter < 1:
        raise ValueError(f"--max-iter must be at least 1 (got {args.max_iter})")


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
    check_probe_options(args)
    check_writable(args.out or release.output_home(args.ckpt) / "probe_all.json")   # before any work
    setup = prepare(args)                                                     # load
    if args.by_network:
        by_network.check(setup)
    if args.task == ALL:
        return run_all(args, setup)
    task = load_task(setup, args.task, args.task_type, args.bins)
    report.describe_task(task, args.split, setup.seeds)
    feats = features.method_features(args, setup)                             # features
    results = probe_methods(feats, task, setup, args.max_iter)                # fit
    paired = paired_differences(results, task.kind)
    report.print_results(task, results, paired, cohort(setup), len(setup.seeds))   # report
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", task.name)
    out = out_path(args, setup, f"probe_{safe}.json")
    rep = {
        "task": task.name, "kind": task.kind, "classes": task.classes, "synthetic": setup.synthetic,
        "config": {**report.run_config(args, setup), "n_subjects": len(task.y), "n_scans": int(len(task.scans)),
                   "n_missing": task.n_missing, "notes": task.notes},
        "std": "over repeats, ddof 0", "methods": results, "teacher_minus_baseline": paired,
    }
    title = f"{task.name} ({'synthetic' if setup.synthetic else setup.data_path.name}), {len(setup.seeds)} repeats"
    report.save(rep, out, lambda png: report.plot_results(results, task, png, title))
    if args.by_network:
        by_network.run(args, setup, {task.name: task}, {task.name: results["teacher"]}, _by_network_path(out))
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
    out = out_path(args, setup, "probe_all.json")
    rep = {"task": ALL, "synthetic": setup.synthetic, "config": report.run_config(args, setup),
           "std": "over repeats, ddof 0", "tasks": probed, "skipped": skipped}
    title = (f"every task ({'synthetic' if setup.synthetic else setup.data_path.name}), "
             f"{len(setup.seeds)} repeats, mean ± std")
    report.save(rep, out, lambda png: report.plot_all(probed, png, title))
    if args.by_network:
        by_network.run(args, setup, tasks, {n: p["methods"]["teacher"] for n, p in probed.items()},
                       _by_network_path(out))
    return rep


def _by_network_path(out):
    return out.with_name(out.stem + "_by_network.json")



def main(argv=None):
    return cli(run, parse_args(argv), "probe.py")


if __name__ == "__main__":
    main()
