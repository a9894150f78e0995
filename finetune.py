"""Fine-tuning of the pretrained encoder on a labelled cohort, beside the linear probe on the same splits
(the paper's second evaluation; the authors' finetune.py).

    python finetune.py --ckpt runs/demo/teacher.pt --task mech_global     # built-in synthetic cohort, demo preset
    python finetune.py --ckpt runs/demo/teacher.pt --task all             # every label: finetune_all.json/.png
    python finetune.py --ckpt teacher.pt --data scans.npy --labels labels.csv --task dx --preset paper

A run takes probe.py's data, label, split and precision options and any checkpoint it reads
(evaluation/setup.py), then for every repeat of probe.py's subject splits (the same seeds and ratios,
so the numbers pair):

  fine-tuned    a copy of the teacher encoder + a head trained end to end on the train subjects, the
                epoch chosen on val, test scored once (evaluation/finetune.py); the weights start from
                the checkpoint in every repeat;
  linear probe  probe.py's linear probe of the frozen teacher on the same split (evaluation/linear_probe.py);
  random-init   the same fine-tuning from a randomly initialised encoder of the checkpoint's config
                (the supervised baseline from scratch; --baselines none skips it, fc adds the FC probe).

Report: one table (mean ± std over repeats, fine-tuned − each other method on the same splits with the
splits it wins), finetune_<task>.json in probe.py's layout (methods -> summary -> metric -> mean; every
repeat with its training curves: train loss and val metrics per epoch), a PNG of the table and one of
the curves (finetune_<task>_curves.png) beside the checkpoint.

Defaults follow the authors' fine-tuning run; FinetuneConfig (evaluation/finetune.py) names the line
of their code behind each. --preset demo (chosen automatically for a checkpoint of the demo
architecture) runs fewer epochs at an unscaled lr, and says so.
"""
import argparse
import re
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from encoder import EncoderConfig
from evaluation import features, options, report
from evaluation.finetune import CHOICES, PRESETS, FinetuneConfig, check_config, check_finetunable, run_finetune
from evaluation.linear_probe import PRIMARY, paired_differences, run_probe
from evaluation.setup import ALL, add_task_arguments, cohort, load_all_tasks, load_task, out_path, prepare
from machine.cli import cli
from machine.fileio import check_writable
from training import release

FLAGS = {f.name: f for f in fields(FinetuneConfig)}


# ----------------------------------------------------------------------------------------------
# CLI

def parse_args(argv=None):
    # "resolve": --batch-size is the training batch here, not probe.py's crops per forward pass
    p = argparse.ArgumentParser(description="Fine-tune a pretrained Brain-Semantoks encoder beside the linear "
                                            "probe on the same subject splits.", conflict_handler="resolve")
    p.add_argument("--ckpt", required=True, help="teacher.pt written by train.py (or the authors' checkpoint)")
    p.add_argument("--task", required=True, help="label column to predict, or 'all': every column in one table")
    options.add_data_arguments(p)
    add_task_arguments(p)
    p.add_argument("--preset", default="auto", choices=["auto", "paper", "demo"],
                   help="paper: the authors' run; demo: 20 epochs, lr not scaled by batch/256; auto: demo for a "
                        "checkpoint of the demo architecture, else paper (default %(default)s)")
    p.add_argument("--baselines", default="random", help="comma list of random (the random-init encoder "
                   "fine-tuned), fc (the FC linear probe); or none (default %(default)s)")
    d = FinetuneConfig()
    for name, kind, what in [
            ("epochs", int, "training epochs"), ("lr", float, "peak lr of the head (encoder: layer-wise decayed)"),
            ("batch_size", int, "train subjects per step"), ("weight_decay", float, "AdamW weight decay"),
            ("layer_decay", float, "layer-wise lr decay"), ("encoder_lr_mult", float, "encoder lr multiplier"),
            ("grad_clip", float, "gradient-norm clip, 0: none"), ("patience", int, "early stopping: epochs "
             "without a better val metric"), ("freeze_epochs", int, "train the head only for the first K epochs"),
            ("dropout", float, "MLP head dropout")]:
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{what} (default {getattr(d, name)})")
    for name in CHOICES:
        p.add_argument(f"--{name.replace('_', '-')}", choices=CHOICES[name], help=f"default {getattr(d, name)}; "
                       "see FinetuneConfig in evaluation/finetune.py")
    p.add_argument("--hidden-dims", help="MLP head widths, comma-separated (default 512,512,256)")
    p.add_argument("--grad-checkpoint", action="store_true", help="recompute each block in the backward: less "
                                                                  "memory, slower")
    p.add_argument("--max-iter", type=int, default=1000, help="the linear probe's LogisticRegression iterations")
    p.add_argument("--cache-dir", help="feature cache of the linear probe (default: <ckpt dir>/.feature_cache)")
    p.add_argument("--no-cache", action="store_true", help="always extract the probe's features, write no cache")
    p.add_argument("--out", help="results JSON (default: <ckpt dir>/finetune_<task>.json); the PNG beside it")
    return p.parse_args(argv)


def make_config(args, preset):
    """The preset's FinetuneConfig with every flag given on the command line applied."""
    cfg = replace(FinetuneConfig(), **PRESETS[preset])
    given = {k: getattr(args, k) for k in FLAGS if getattr(args, k, None) is not None}
    if args.hidden_dims is not None:
        try:
            given["hidden_dims"] = tuple(int(h) for h in args.hidden_dims.split(",") if h.strip())
        except ValueError:
            raise ValueError(f"--hidden-dims must be comma-separated integers, e.g. 512,256 "
                             f"(got {args.hidden_dims!r})") from None
    given["grad_checkpoint"] = args.grad_checkpoint
    cfg = replace(cfg, **given)
    check_config(cfg)
    return cfg


def resolve_preset(choice, meta):
    """--preset auto: demo for a checkpoint of the demo architecture (dim, depth, heads), else paper."""
    if choice != "auto":
        return choice
    demo, enc = EncoderConfig.preset("demo"), meta["encoder_config"]
    return "demo" if all(enc.get(k) == getattr(demo, k) for k in ("dim", "depth", "heads")) else "paper"


# ----------------------------------------------------------------------------------------------
# a run: load -> (fine-tune, probe) per task -> report

def run(args):
    make_config(args, "paper")                                    # flag errors before any file is read
    if args.max_iter < 1:
        raise ValueError(f"--max-iter must be at least 1 (got {args.max_iter})")
    # the probe side reads --batch-size as crops per forward pass: leave it its own default
    probe_args = argparse.Namespace(**{**vars(args), "batch_size": None})
    check_writable(args.out or release.output_home(args.ckpt) / "finetune_all.json")   # before any work
    setup = prepare(probe_args)
    preset = resolve_preset(args.preset, setup.meta)
    cfg = make_config(args, preset)
    if preset == "demo":
        print(f"Preset demo (a checkpoint of the demo architecture): {cfg.epochs} epochs (the authors' "
              f"{FinetuneConfig.epochs}), lr {cfg.lr:g} "
              f"{'not scaled' if cfg.lr_scale == 'none' else 'scaled'} by batch/256 (theirs is); "
              f"--preset paper for the authors' run")
    env = dict(setup=setup, cfg=cfg, preset=preset, per_batch=options.crops_per_batch(probe_args, setup.device))
    if args.task == ALL:
        return run_all(args, probe_args, env)
    task = load_task(setup, args.task, args.task_type, args.bins)
    check_finetunable(task, setup.ratios, setup.seeds, cfg.batch_size)
    report.describe_task(task, args.split, setup.seeds)
    feats = probe_features(probe_args, setup)
    results = evaluate_task(task, feats, args, env)
    paired = paired_differences(results, task.kind, "finetuned")
    report.print_results(task, results, paired, cohort(setup), len(setup.seeds), "finetuned")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", task.name)
    rep = {"task": task.name, "kind": task.kind, "classes": task.classes, "synthetic": setup.synthetic,
           "config": {**_config(args, setup, cfg, preset), "n_subjects": len(task.y), "n_scans": int(len(task.scans)),
                      "n_missing": task.n_missing, "notes": task.notes},
           "std": "over repeats, ddof 0", "methods": results, "finetuned_minus_baseline": paired}
    title = f"{task.name} ({'synthetic' if setup.synthetic else setup.data_path.name}), {len(setup.seeds)} repeats"
    report.save(rep, out_path(args, setup, f"finetune_{safe}.json"), lambda png: (
        report.plot_results(results, task, png, title),
        report.plot_curves(results, task, png.with_name(png.stem + "_curves.png"), title)))
    return rep


def probe_features(probe_args, setup):
    """The linear probe's features: the teacher's (and FC's when it is a baseline)."""
    return features.method_features(probe_args, replace(setup, baselines=[b for b in setup.baselines if b == "fc"]))


def evaluate_task(task, feats, args, env):
    """Every method on the same splits -> {method: run_probe-layout result}."""
    setup, cfg, t0 = env["setup"], env["cfg"], time.time()
    common = dict(scans=setup.scans, seeds=setup.seeds, ratios=setup.ratios, cfg=cfg, device=setup.device,
                  precision=setup.precision, per_batch=env["per_batch"],
                  masked_networks=setup.data.masked_networks if setup.data is not None else None)
    results = {"finetuned": run_finetune(setup.encoder, task, label="teacher fine-tuned", **common),
               "probe": run_probe(feats["teacher"], task, setup.seeds, setup.ratios, args.max_iter)}
    if "random" in setup.baselines:
        random_enc = features.random_encoder(setup.encoder, setup.meta["network_map"].numpy())
        results["random_finetuned"] = run_finetune(random_enc, task, label="random-init fine-tuned", **common)
    if "fc" in setup.baselines:
        results["fc"] = run_probe(feats["fc"], task, setup.seeds, setup.ratios, args.max_iter)
    print(f"  {task.name}: every method in {time.time() - t0:.0f} s")
    return results


def run_all(args, probe_args, env):
    """--task all: every label column that can be fine-tuned, one task x method table, finetune_all.*."""
    setup, cfg = env["setup"], env["cfg"]
    tasks, skipped = load_all_tasks(args, setup)
    for name in list(tasks):
        try:
            check_finetunable(tasks[name], setup.ratios, setup.seeds, cfg.batch_size)
        except ValueError as e:
            skipped[name] = str(e)
            print(f"  skipped '{name}': {e}")
            del tasks[name]
    if not tasks:
        raise ValueError("--task all: no label column can be fine-tuned (reasons above)")
    feats = probe_features(probe_args, setup)
    done = {}
    for name, task in tasks.items():
        results = evaluate_task(task, feats, args, env)
        done[name] = {**report.task_summary(task), "metric": PRIMARY[task.kind], "methods": results,
                      "finetuned_minus_baseline": paired_differences(results, task.kind, "finetuned")}
    print(f"\nEvery task on {cohort(setup)}: test subjects, mean ± std over {len(setup.seeds)} repeats; "
          f"fine-tuned − each method on the same splits (fine-tuned better in k of n)")
    print(report.format_all_table(done, "finetuned"))
    rep = {"task": ALL, "synthetic": setup.synthetic, "config": _config(args, setup, cfg, env["preset"]),
           "std": "over repeats, ddof 0", "tasks": done, "skipped": skipped}
    title = f"every task, fine-tuned and linear probe, {len(setup.seeds)} repeats, mean ± std"
    report.save(rep, out_path(args, setup, "finetune_all.json"), lambda png: report.plot_all(done, png, title))
    return rep


def _config(args, setup, cfg, preset):
    return {**report.run_config(args, setup), "preset": preset, "finetune": asdict(cfg)}



def main(argv=None):
    return cli(run, parse_args(argv), "finetune.py")


if __name__ == "__main__":
    main()
