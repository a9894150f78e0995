"""The probe report: tables on stdout, the JSON of every split's numbers, and the plots (SPEC §9).

One task (`python probe.py --task sz`): `describe_task`, then `print_results` (a method x metric
table, mean ± std over the repeats, and teacher − baseline on the same splits) and `plot_results`
(bars per method, the teacher's confusion matrix for classes). Every task (`--task all`):
`format_all_table` (one row per task) and `plot_all` (a dot plot, a row per task). `save` writes
probe_<task>.json (or probe_all.json) and the PNG beside it; NaN (e.g. an AUROC of a split that
lacks a class) is written as null. Fine-tuning (finetune.py) adds `plot_curves`, its training curves.

    python probe.py --ckpt runs/demo/teacher.pt --task all      # every label: table, JSON, PNG
"""
import json

import numpy as np

from evaluation.linear_probe import ALPHA_GRID, C_GRID, METRICS, PRIMARY
from machine.fileio import atomic_write

METHOD_TITLES = {"teacher": "pretrained teacher", "random": "random-init encoder", "fc": "FC (Fisher-z)",
                 "finetuned": "teacher, fine-tuned", "probe": "teacher, linear probe",
                 "random_finetuned": "random-init encoder, fine-tuned"}
SHORT_TITLES = {"teacher": "teacher", "random": "random enc.", "fc": "FC", "finetuned": "fine-tuned",
                "probe": "linear probe", "random_finetuned": "random enc. fine-tuned"}
METRIC_TITLES = {"balanced_accuracy": "balanced acc (%)", "auroc": "AUROC (%)", "mae": "MAE", "r2": "R²",
                 "pearson_r": "Pearson r"}


# ----------------------------------------------------------------------------------------------
# text

def describe_task(task, split, seeds):
    """What a task is, before any work: kind, classes or target, subjects, scans, notes, splits."""
    what = (f"classes {', '.join(task.classes)} (subjects per class: "
            f"{', '.join(str(k) for k in np.bincount(task.y, minlength=len(task.classes)))})"
            if task.kind == "classification" else f"target mean {task.y.mean():.3g}, std {task.y.std():.3g}")
    print(f"Task '{task.name}': {task.kind}, {what}")
    print(f"  {len(task.y)} subjects, {len(task.scans)} scans used; "
          f"{task.n_missing} scan(s) dropped for a missing label")
    for n in task.notes:
        print(f"  note: {n}")
    strat = ", stratified by class" if task.kind == "classification" else ""
    print(f"  splits: subjects train/val/test {split}{strat}, "
          f"{len(seeds)} repeats (seeds {', '.join(map(str, seeds))})")


def format_metric(m, s, metric):
    if not np.isfinite(m):
        return "n/a"
    if metric in ("balanced_accuracy", "auroc"):
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    return f"{m:.3f} ± {s:.3f}"


def _fmt_paired(q, kind, wins="", reference="teacher"):
    """Reference (teacher) − baseline on the same splits: mean ± std (percentage points for classes)
    and the splits the reference wins, "(wins k/n)"."""
    scale, d = (100, 1) if kind == "classification" else (1, 3)
    return f"{scale * q['mean']:+.{d}f} ± {scale * q['std']:.{d}f} ({wins}{q[reference + '_better']}/{q['repeats']})"


def _align(rows, n_left):
    """Rows of cells -> text columns: the first n_left left-aligned, the rest right-aligned, a rule
    under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_table(results, kind):
    metrics = METRICS[kind]
    rows = [["method"] + [METRIC_TITLES[m] for m in metrics]]
    for name, res in results.items():
        rows.append([METHOD_TITLES[name]] + [format_metric(res["summary"][m]["mean"], res["summary"][m]["std"], m)
                                             for m in metrics])
    return _align(rows, 1)


def format_all_table(tasks, reference="teacher"):
    """--task all: one row per task, mean ± std per method, then the reference (teacher) − each
    baseline on the same splits with the number of splits it wins. tasks: {name: run_all's per-task
    dict, its paired differences under "<reference>_minus_baseline"}."""
    methods = list(next(iter(tasks.values()))["methods"])
    baselines = [m for m in methods if m != reference]
    rows = [["task", "metric"] + [SHORT_TITLES[m] for m in methods]
            + [f"{SHORT_TITLES[reference]} − {SHORT_TITLES[b]}" for b in baselines]]
    for name, t in tasks.items():
        m = t["metric"]
        row = [name, METRIC_TITLES[m]]
        row += [format_metric(t["methods"][k]["summary"][m]["mean"], t["methods"][k]["summary"][m]["std"], m)
                for k in methods]
        paired = t[f"{reference}_minus_baseline"]
        row += [_fmt_paired(paired[b][m], t["kind"], reference=reference) for b in paired]
        rows.append(row)
    return _align(rows, 2)


def print_results(task, results, paired, cohort, n_repeats, reference="teacher"):
    """The method x metric table and the paired differences (linear_probe.paired_differences) of one task."""
    print(f"\n{task.name} on {cohort}: test subjects, mean ± std over {n_repeats} repeats")
    print(format_table(results, task.kind))
    m, ref = PRIMARY[task.kind], SHORT_TITLES[reference]
    for name, p in paired.items():
        print(f"{ref} − {METHOD_TITLES[name]}, {METRIC_TITLES[m]} on the same splits: "
              f"{_fmt_paired(p[m], task.kind, f'{ref} better in ', reference)}")


# ----------------------------------------------------------------------------------------------
# JSON

def run_config(args, setup):
    """The settings every report records (JSON)."""
    return {"ckpt": str(setup.ckpt.resolve()), "ckpt_given": args.ckpt, "ckpt_step": setup.meta.get("step"),
            "data": str(setup.data_path.resolve()), "labels": str((setup.labels_path or setup.data_path).resolve()),
            "layout": args.layout, "tr": args.tr, "task_type": args.task_type, "bins": args.bins,
            "split": list(setup.ratios), "seeds": setup.seeds, "crops": args.crops,
            "crop_len": setup.encoder.config.crop_len, "device": setup.device, "precision": setup.precision,
            "precision_reason": setup.precision_reason, "encoder_config": setup.meta["encoder_config"],
            "C_grid": C_GRID.tolist(), "alpha_grid": ALPHA_GRID.tolist(), "max_iter": args.max_iter,
            **(setup.data.config() if setup.data is not None else {})}


def task_summary(task):
    return {"kind": task.kind, "classes": task.classes, "n_subjects": len(task.y), "n_scans": int(len(task.scans)),
            "n_missing": task.n_missing, "notes": task.notes}


def save(report, out, plot):
    """Write the report as strict JSON to `out` and call plot(png path) for the PNG beside it."""
    with atomic_write(out, "w") as f:                               # makes the folder too
        f.write(json.dumps(_finite(report), indent=1))
    png = out.with_suffix(".png")
    plot(png)
    print(f"\nwrote {out} and {png}")


def _finite(obj):
    """NaN (e.g. AUROC of a split missing a class) -> null, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj



# ----------------------------------------------------------------------------------------------
# plots

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


def plot_curves(results, task, path, title):
    """Fine-tuning curves (finetune.py): train loss and the val metric per epoch, every repeat of
    every fine-tuned method (results: {method: run_finetune result}), the tested epoch marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metric = "balanced_accuracy" if task.kind == "classification" else "mae"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for j, (name, res) in enumerate((n, r) for n, r in results.items() if "curves" in r["repeats"][0]):
        for i, rep in enumerate(res["repeats"]):
            c = rep["curves"]
            label = METHOD_TITLES[name] if i == 0 else None
            axes[0].plot(c["train_loss"], color=f"C{j}", lw=1, alpha=0.7, label=label)
            axes[1].plot([v[metric] for v in c["val"]], color=f"C{j}", lw=1, alpha=0.7, label=label)
            axes[1].plot(rep["epoch"], rep["val"][metric], "o", color=f"C{j}", ms=4)
    axes[0].set(xlabel="epoch", ylabel="train loss")
    axes[1].set(xlabel="epoch", ylabel=f"val {METRIC_TITLES[metric].replace(' (%)', '')} (dot: the tested epoch)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
