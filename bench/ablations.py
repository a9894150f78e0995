"""What each part of the method buys: the paper's ablation table as one run (SPEC §7, "Ablations").

Trains the full model and each ablation (train.py's switches) with the same data, seed and schedule,
probes each teacher with probe.py --task all's protocol (8 crops per scan, 10 repeated 4:1:8 subject
splits, the random-init encoder of the same config on the same splits), and prints one table: a row per
ablation; per task the teacher's balanced accuracy in % (R² for a continuous label such as age); the mean
over the classification tasks; the mean teacher − random-encoder difference over them (points); the
collapse monitors of the last log window (teacher CLS mean pairwise cosine, std of the teacher's
normalised CLS projections); and the paper's average over tasks beside it.

    python bench/ablations.py                             # demo preset on the built-in cohort (CPU: ~30 min)
    python bench/ablations.py --only full,linear          # some rows
    python bench/ablations.py --device cuda --preset paper --steps 2000
    python bench/ablations.py --steps 20 --cohort DIR --dim 32 --depth 1 --heads 2 --proj-hidden 64 --batch-size 8

Any other option goes to every train.py run as given (e.g. --dim, --batch-size, --precision).
--cohort DIR: a cohort written by data.synthetic.make_synthetic_cohort (pretrain.npy, probe.npy,
probe_labels.csv, network_map.txt) instead of the built-in one. Writes <out>/<row>/ (each run) and
<out>/ablations.json.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import probe  # noqa: E402
import train  # noqa: E402
from evaluation import report  # noqa: E402
from evaluation.linear_probe import PRIMARY  # noqa: E402
from machine.fileio import atomic_write  # noqa: E402

# row: (train.py flags, the paper's average over tasks or what it says). "rois" is left out of the
# default rows: 2,285 tokens instead of 45 make a step ~50-2,600x dearer (train.py --help, --networks)
ABLATIONS = {
    "full": ([], "52.39"),
    "no_ttr": (["--ttr-weight", "0"], "50.88"),
    "ttr_whole_run": (["--ttr-epochs", "inf"], "49.60"),
    "no_cls": (["--cls-weight", "0"], "47.32"),
    "random_mask": (["--mask-type", "random"], "51.03"),
    "linear": (["--tokenizer", "linear"], "partial collapse, cos 0.95"),
    "one_network": (["--networks", "one"], "-"),
    "rois": (["--networks", "rois"], "-"),
}
DEFAULT_ROWS = [r for r in ABLATIONS if r != "rois"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=["demo", "paper"],
                    help="train.py --preset (default %(default)s)")
    ap.add_argument("--steps", type=int, help="train.py --steps for every row (default: the preset's; demo 120)")
    ap.add_argument("--device", default="auto", help="train.py and probe.py --device (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="the one seed of every run (default %(default)s)")
    ap.add_argument("--only", help=f"comma list of rows, from {', '.join(ABLATIONS)} (default: all but rois)")
    ap.add_argument("--repeats", type=int, default=10, help="probe subject splits (default %(default)s)")
    ap.add_argument("--cohort", help="a folder written by data.synthetic.make_synthetic_cohort (default: built-in)")
    ap.add_argument("--out", default=os.path.join("runs", "ablations"), help="output folder (default %(default)s)")
    args, extra = ap.parse_known_args(argv)
    rows = DEFAULT_ROWS if args.only is None else [r.strip() for r in args.only.split(",") if r.strip()]
    bad = [r for r in rows if r not in ABLATIONS]
    if bad or not rows:
        ap.error(f"--only: unknown row(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(ABLATIONS)}")
    if args.cohort and not os.path.isfile(os.path.join(args.cohort, "pretrain.npy")):
        ap.error(f"--cohort {args.cohort}: no pretrain.npy there (write one with data.synthetic.make_synthetic_cohort)")
    return args, rows, extra


def train_row(args, row, extra):
    """One train.py run of `row` -> (teacher path, the last log record)."""
    flags = ["--preset", args.preset, "--device", args.device, "--seed", str(args.seed),
             "--out", os.path.join(args.out, row), "--overwrite", *extra]
    if args.steps is not None:
        flags += ["--steps", str(args.steps)]
    switches = ABLATIONS[row][0]
    if args.cohort:
        flags += ["--data", os.path.join(args.cohort, "pretrain.npy")]
        if "--networks" not in switches:
            flags += ["--networks", os.path.join(args.cohort, "network_map.txt")]
    given = train.build_parser().parse_args(flags + switches)
    summary = train.train(train.resolve_config(vars(given)), given=tuple(vars(given)))
    return summary["teacher"], summary["log"][-1]


def probe_row(args, teacher):
    """probe.py --task all on one teacher, the random encoder beside it -> its report."""
    flags = ["--ckpt", teacher, "--task", "all", "--baselines", "random", "--repeats", str(args.repeats),
             "--device", args.device]
    if args.cohort:
        flags += ["--data", os.path.join(args.cohort, "probe.npy"),
                  "--labels", os.path.join(args.cohort, "probe_labels.csv")]
    return probe.main(flags)


def summarise(rep, last):
    """A probe report and the last log record -> one row: per-task scores, means, monitors."""
    scores, minus = {}, []
    for name, t in rep["tasks"].items():
        metric = PRIMARY[t["kind"]]
        scores[name] = t["methods"]["teacher"]["summary"][metric]["mean"]
        if t["kind"] == "classification":
            minus.append(t["teacher_minus_baseline"]["random"][metric]["mean"])
    cls = [v for n, v in scores.items() if rep["tasks"][n]["kind"] == "classification"]
    return {"tasks": scores, "mean": float(np.mean(cls)) if cls else float("nan"),
            "minus_random": float(np.mean(minus)) if minus else float("nan"),
            "cos_t": last["cos_t"], "std_t": last["std_t"]}


def format_table(results, kinds):
    """The table: a row per ablation (see the module docstring)."""
    names = list(next(iter(results.values()))["tasks"])
    head = ["ablation", *[f"{n} (R²)" if kinds[n] == "regression" else n for n in names],
            "mean (cls.)", "− random", "CLS cos", "proj std", "paper avg"]
    rows = [head]
    for row, r in results.items():
        cells = [f"{r['tasks'][n]:.3f}" if kinds[n] == "regression" else f"{100 * r['tasks'][n]:.1f}" for n in names]
        rows.append([row, *cells, f"{100 * r['mean']:.1f}", f"{100 * r['minus_random']:+.1f}",
                     f"{r['cos_t']:.3f}", f"{r['std_t']:.4f}", ABLATIONS[row][1]])
    return report._align(rows, 1)


def main(argv=None):
    args, rows, extra = parse_args(argv)
    results, kinds = {}, {}
    for row in rows:
        print(f"\n===== {row}: train.py {' '.join(ABLATIONS[row][0]) or '(the method)'} =====", flush=True)
        teacher, last = train_row(args, row, extra)
        rep = probe_row(args, teacher)
        kinds.update({n: t["kind"] for n, t in rep["tasks"].items()})
        results[row] = summarise(rep, last)
        with atomic_write(os.path.join(args.out, "ablations.json"), "w") as f:   # every row: a long run shows its part
            json.dump({"preset": args.preset, "steps": args.steps, "seed": args.seed, "repeats": args.repeats,
                       "extra": extra, "rows": results, "paper": {r: ABLATIONS[r][1] for r in results}}, f, indent=1)
    table = format_table(results, kinds)
    print(f"\nAblations ({args.preset} preset, {args.steps or 'preset'} steps, seed {args.seed}, {args.repeats} "
          f"splits): teacher balanced accuracy % per task (R² for regression), mean over the classification "
          f"tasks, teacher − random encoder on the same splits (points), collapse monitors at the end\n{table}")
    return results


if __name__ == "__main__":
    main()
