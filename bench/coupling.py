"""Does a checkpoint's encoder carry between-network coupling? Teacher vs a random encoder.

The built-in cohort's `mech_between` label (synthetic.py; in cohort v2 every label) acts only through
couplings between networks, so a teacher whose probe features hold none of that cannot beat a random
encoder on it, however well it tells subjects apart. This measures it directly, on the probe crops (SPEC §9):

  token -> patch mean    each network token (B, N, P, D) of the tokenizer, decoding its own
                         network's mean signal over the patch: the building block of any coupling;
  features -> crop FC    the probe features (mean tokens ‖ CLS) decoding the crop's network-level
                         FC (Fisher-z, N(N-1)/2 edges over T' points), mean R² over edges;
  features -> patch FC   the same for the FC of the P patch means, which is all of the coupling that
                         products of tokens can hold (tokens summarise one network within one patch).

R² is out-of-sample: ridge, 5 folds grouped by subject (all crops of all scans of a subject in one
fold, so a feature that only recognises the subject earns nothing), the best of a ridge grid (the
same grid for every encoder, so the comparison is fair; the absolute value is mildly optimistic).
Subject ids come as in probe.py (an .npy's X_subjects.txt, a folder's BIDS names, --subjects).
One line per case.

--supervised K asks whether the architecture can learn coupling at all when told to (not part of the
method): a fresh encoder of the checkpoint's config with a linear head on its probe features,
trained K steps to regress the patch FC of crops of --train-data, scored on the probe crops above.

    python bench/coupling.py --ckpt teacher.pt                 # built-in synthetic probe cohort
    python bench/coupling.py --ckpt teacher.pt --data probe.npy --scans 300
    python bench/coupling.py --ckpt teacher.pt --data scans.npy --subjects scans_subjects.txt
    python bench/coupling.py --ckpt teacher.pt --supervised 900
"""
import argparse
import os
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import checkpoint  # noqa: E402
from data.load import load_scans  # noqa: E402
from evaluation.features import random_encoder  # noqa: E402
from data.connectivity import fisher_z  # noqa: E402
from data.preprocess import probe_crops  # noqa: E402
from data import synthetic  # noqa: E402
from bench.report import positive_int  # noqa: E402
from encoder import Encoder  # noqa: E402


def grouped_r2(X, Y, groups, alphas=np.logspace(0, 6, 13), folds=5):
    """Out-of-sample R² per column of Y (n, k) from X (n, f): standardised X, ridge, folds that keep
    each group (subject) whole, the alpha with the best mean R². -> (k,)"""
    from scipy.linalg import LinAlgWarning
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    total = ((Y - Y.mean(0)) ** 2).sum(0)
    best = None
    for a in alphas:
        pred = np.zeros_like(Y)
        for tr, te in GroupKFold(folds).split(X, Y, groups):
            with warnings.catch_warnings():   # LayerNorm'd features are rank-deficient; the ridge copes
                warnings.simplefilter("ignore", LinAlgWarning)
                pred[te] = Ridge(alpha=a).fit(X[tr], Y[tr]).predict(X[te]).reshape(len(te), -1)
        r2 = 1 - ((Y - pred) ** 2).sum(0) / total
        if best is None or r2.mean() > best.mean():
            best = r2
    return best


def crop_groups(subjects, n_crops):
    """Fold groups for the crops of scans with these subject ids: (len(subjects)·n_crops,) ints, equal
    for every crop of every scan of one subject (scan-major, as crops.flatten(0, 1))."""
    _, subject_of_scan = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    return np.repeat(subject_of_scan, n_crops)


def network_fc(net):
    """Network-level FC of (..., N, t) series -> (..., N(N-1)/2) Fisher-z, upper triangle."""
    net = net - net.mean(-1, keepdims=True)
    net = net / (np.linalg.norm(net, axis=-1, keepdims=True) + 1e-8)
    i, j = np.triu_indices(net.shape[-2], 1)
    return fisher_z((net @ np.swapaxes(net, -1, -2))[..., i, j])


def network_signals(crops, net_of, patch_len):
    """Crops (..., C, T') -> each network's mean signal (..., N, T') and its patch means (..., N, P)."""
    net = torch.stack([crops[..., net_of == n, :].mean(-2) for n in range(int(net_of.max()) + 1)], -2)
    net = net.numpy()
    return net, net.reshape(*net.shape[:-1], -1, patch_len).mean(-1)


def supervised_check(config, net_of, train_scans, test_crops, steps, batch_scans=8, log_every=100, seed=0):
    """Train a fresh Encoder(config) + linear head on its features to regress the patch FC of
    probe-style crops of train_scans (8 per scan); print the R² on test_crops (n, C, T') as it goes."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    enc = Encoder(config, net_of)
    def target(x):                                                         # (n, C, T') -> (n, edges)
        return torch.from_numpy(network_fc(network_signals(x, net_of, config.patch_len)[1])).float()
    y_test = target(test_crops)
    mu, sd = y_test.mean(0), y_test.std(0)
    head = torch.nn.Linear(2 * config.dim, y_test.shape[1])
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=3e-4, weight_decay=0.05)
    for step in range(1, steps + 1):
        idx = rng.choice(len(train_scans), batch_scans, replace=False)
        x = probe_crops(train_scans, idx, config.crop_len).flatten(0, 1)          # (8·batch_scans, C, T')
        loss = ((head(enc.features(x)) - (target(x) - mu) / sd) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            with torch.no_grad():
                pred = torch.cat([head(enc.features(c)) for c in test_crops.split(64)])
            r2 = 1 - ((pred - (y_test - mu) / sd) ** 2).mean(0)            # targets standardised on test
            print(f"| supervised | step {step} | train loss {loss.item():.3f} | held-out R² {r2.mean().item():.3f} |",
                  flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="teacher.pt written by train.py (or the authors' checkpoint)")
    ap.add_argument("--data", default=None,
                    help="probe scans, as probe.py --data (default: the built-in synthetic probe cohort); "
                         "use scans the checkpoint was not trained on")
    ap.add_argument("--subjects", default=None,
                    help="text file, one subject id per scan: the folds keep each subject whole "
                         "(default: as probe.py, e.g. X_subjects.txt beside X.npy, else one subject per scan)")
    ap.add_argument("--scans", type=positive_int, default=150,
                    help="use the first N scans, 8 crops each (default %(default)s)")
    ap.add_argument("--supervised", type=int, default=0, metavar="K",
                    help="also train a fresh encoder + linear head for K steps to regress the patch FC "
                         "(900 in BENCHMARKS.md; minutes on a CPU)")
    ap.add_argument("--train-data", default=None,
                    help="training scans of --supervised (default: the built-in pretraining pool)")
    args = ap.parse_args(argv)
    teacher, meta = checkpoint.load_teacher(args.ckpt)
    net_of = meta["network_map"].numpy()
    path = args.data or str(synthetic.ensure_synthetic_cohort() / "probe.npy")
    scans = load_scans(path, n_rois=len(net_of), subjects=args.subjects)
    k = min(args.scans, len(scans))
    groups = crop_groups(scans.subjects[:k], 8)                             # (k*8,) one group per subject
    n_subjects = int(groups.max()) + 1
    if n_subjects < 10:   # 5 folds grouped by subject need two subjects in each
        raise SystemExit(f"bench/coupling.py needs at least 10 scans, got {k}, of at least 10 subjects, got "
                         f"{n_subjects} (from {path}, --scans {args.scans})")
    cfg = teacher.config
    P = cfg.crop_len // cfg.patch_len
    crops = probe_crops(scans, np.arange(k), cfg.crop_len)                 # (k, 8, C, T')
    N = int(net_of.max()) + 1
    net, patch = network_signals(crops, net_of, cfg.patch_len)              # (k, 8, N, T'), (k, 8, N, P)
    targets = {"features -> crop FC": network_fc(net).reshape(k * 8, -1),
               "features -> patch FC": network_fc(patch).reshape(k * 8, -1)}
    print(f"{path}: {k} scans of {n_subjects} subjects x 8 crops; R² out of sample, ridge CV grouped by subject")
    for name, enc in [("teacher", teacher), ("random", random_encoder(teacher, net_of))]:
        with torch.inference_mode():
            batches = crops.flatten(0, 1).split(64)
            z = torch.cat([enc.tokenizer(c) for c in batches]).numpy()           # (k*8, N, P, D)
            feats = torch.cat([enc.features(c) for c in batches]).numpy()      # (k*8, 2D) probe features
        tok = [grouped_r2(z[:, n].reshape(-1, z.shape[-1]), patch[:, :, n].reshape(-1, 1),
                          np.repeat(groups, P))[0] for n in range(N)]
        print(f"| {name:7s} | token -> patch mean | mean R² {np.mean(tok):.3f} | min {np.min(tok):.3f} over {N} networks |")
        for case, Y in targets.items():
            r2 = grouped_r2(feats, Y, groups)
            print(f"| {name:7s} | {case} | mean R² {r2.mean():.3f} | max {r2.max():.3f} over {len(r2)} edges |")
    if args.supervised:
        train_path = args.train_data or str(synthetic.ensure_synthetic_cohort() / "pretrain.npy")
        print(f"supervised check: fresh encoder + linear head -> patch FC, trained on {train_path}")
        supervised_check(cfg, net_of, load_scans(train_path, n_rois=len(net_of)), crops.flatten(0, 1),
                         args.supervised)


if __name__ == "__main__":
    main()
