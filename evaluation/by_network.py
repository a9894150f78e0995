"""Which networks carry a label: the linear probe on features with networks masked (SPEC §9).

For every network n, two feature sets of the frozen teacher, each on the probe crops of every scan:
- alone:   every other network's tokens replaced by the mask embedding, in every patch (what network n
           carries by itself; the authors' extract_features(..., network_mask=n), their simdino.py:369-404);
- without: network n alone masked (what is lost without it).
The mask embedding is the one pretraining fills masked tokens with (Encoder.features), so the teacher
sees an input of the kind it learned on. Each set is probed on the same subject splits as the full
teacher (evaluation/linear_probe.py), and networks are ranked: by the "alone" score, and by the drop
from the full teacher when the network is masked. On the built-in synthetic cohort a label names the
networks it acts through (data/synthetic.DESIGN), and the report gives their ranks among the N.

    python probe.py --ckpt runs/demo/teacher.pt --task mech_within --by-network
    python probe.py --ckpt runs/demo/teacher.pt --task all --by-network      # every label, 2N extra feature sets

2N feature extractions (18 for the default map), cached beside the teacher's like every probe feature.
"""
import time

import numpy as np

from data import synthetic
from data.networks import network_names
from evaluation import report
from evaluation.features import feature_cache, teacher_id
from evaluation.linear_probe import PRIMARY, run_probe

MODES = ("alone", "without")


def check(setup):
    """Before any work: masking one network must leave another."""
    if setup.encoder.n_networks < 2:
        raise ValueError("--by-network needs a model with at least two networks (this one has one)")


def network_features(args, setup):
    """{(mode, n): (S, K, 2D)} for every network n and mode (see the module docstring), cached."""
    N = setup.encoder.n_networks
    get, model = feature_cache(args, setup), teacher_id(setup)
    feats, t0 = {}, time.time()
    for n in range(N):
        others = [m for m in range(N) if m != n]
        feats["alone", n] = get(model, lambda: setup.encoder, f"network {n}: alone", others)
        feats["without", n] = get(model, lambda: setup.encoder, f"network {n}: masked", [n])
    print(f"  by-network features: {2 * N} sets in {time.time() - t0:.1f} s")
    return feats


def label_networks(name):
    """The networks a label of the synthetic cohort acts through (within, timescale, between pairs); [] for
    the global gain or a label it does not have."""
    design = synthetic.DESIGN.get(name, {})
    ids = set(design.get("within", {})) | set(design.get("timescale", {}))
    ids |= {n for pair in design.get("between", {}) for n in pair}
    return sorted(ids)


def _ranks(score):
    """1 = highest score; ties share the better rank."""
    score = np.asarray(score, dtype=float)
    return [int((score > s).sum()) + 1 for s in score]


def probe_by_network(feats, task, setup, full, max_iter=1000):
    """One task: every (mode, network) feature set probed on the setup's splits -> a JSON-able dict with
    each network's alone and without scores (mean, std of the primary metric), the drop from `full` (the
    teacher's run_probe result on the same splits) paired by split, the two rankings and, on the
    synthetic cohort, the ranks of the networks the label acts through."""
    metric = PRIMARY[task.kind]
    full_scores = np.array([r["test"][metric] for r in full["repeats"]])
    names = network_names(setup.meta["network_map"].numpy())
    out = {"metric": metric, "networks": names, "full": full["summary"][metric]}
    for mode in MODES:
        rows = []
        for n in range(len(names)):
            res = run_probe(feats[mode, n], task, setup.seeds, setup.ratios, max_iter)
            scores = np.array([r["test"][metric] for r in res["repeats"]])
            drop = full_scores - scores
            rows.append({**res["summary"][metric], "drop": float(np.nanmean(drop)),
                         "drop_std": float(np.nanstd(drop))})
        out[mode] = rows
    out["rank_alone"] = _ranks([r["mean"] for r in out["alone"]])
    out["rank_without"] = _ranks([r["drop"] for r in out["without"]])     # the largest drop first
    if setup.synthetic:
        acts = label_networks(task.name)
        out["acts_through"] = [names[n] for n in acts]
        out["acts_through_ranks"] = {mode: [out[f"rank_{mode}"][n] for n in acts] for mode in MODES}
    return out


def format_by_network(name, res):
    """One task's table: network, alone (and rank), masked: score, drop from the full teacher (rank)."""
    metric, full = res["metric"], res["full"]
    rows = [["network", "alone", "rank", "network masked", "drop", "rank"]]
    scale, d = (100, 1) if metric == "balanced_accuracy" else (1, 3)
    for n, net in enumerate(res["networks"]):
        a, w = res["alone"][n], res["without"][n]
        rows.append([net, report.format_metric(a["mean"], a["std"], metric), str(res["rank_alone"][n]),
                     report.format_metric(w["mean"], w["std"], metric),
                     f"{scale * w['drop']:+.{d}f} ± {scale * w['drop_std']:.{d}f}", str(res["rank_without"][n])])
    rows.append(["(all networks)", report.format_metric(full["mean"], full["std"], metric), "", "", "", ""])
    text = f"\n{name}: {report.METRIC_TITLES[metric]} by network, teacher features\n" + report._align(rows, 1)
    if res.get("acts_through"):
        ranks = res["acts_through_ranks"]
        text += (f"\n  {name} acts through {', '.join(res['acts_through'])}: ranks {ranks['alone']} of "
                 f"{len(res['networks'])} alone, {ranks['without']} by the drop when masked")
    return text


def plot_by_network(results, path, title):
    """One panel per task: each network's score alone and with it masked, the full teacher as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.6 * len(results)), squeeze=False)
    for ax, (name, res) in zip(axes[:, 0], results.items()):
        x = np.arange(len(res["networks"]))
        for i, (mode, label) in enumerate((("alone", "only this network"), ("without", "this network masked"))):
            rows = res[mode]
            ax.bar(x + (i - 0.5) * 0.4, [r["mean"] for r in rows], 0.4, yerr=[r["std"] for r in rows], label=label)
        ax.axhline(res["full"]["mean"], color="k", lw=1, label="all networks")
        ax.set_xticks(x, res["networks"], fontsize=8)
        ax.set_ylabel(report.METRIC_TITLES[res["metric"]], fontsize=8)
        ax.set_title(name, fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args, setup, tasks, full, out):
    """--by-network for tasks {name: Task}, with the full teacher's run_probe results {name: result} on the
    same splits -> the report written to `out` (.json, .png beside it)."""
    feats = network_features(args, setup)
    results = {}
    for name, task in tasks.items():
        results[name] = probe_by_network(feats, task, setup, full[name], args.max_iter)
        print(format_by_network(name, results[name]))
    rep = {"masking": "mask embedding in every patch (Encoder.features)", "config": report.run_config(args, setup),
           "std": "over repeats, ddof 0", "tasks": results}
    report.save(rep, out, lambda png: plot_by_network(results, png, f"by network, {len(setup.seeds)} repeats"))
    return rep
