"""How hard is each label of the synthetic cohort for baselines that need no model? (synthetic.py)

The effect sizes of the synthetic cohort were chosen with this, before any encoder was probed on it:
every label of probe_labels.csv, probed with probe.py's protocol (run_probe: subject splits 4:1:8,
regularisation on val, 10 repeats) on two model-free feature sets of the probe scans:

  fc    Fisher-z Pearson FC over the whole scan, all ROI pairs (probe.py's FC baseline);
  acf   every ROI's autocorrelation at lags 1-3 over the whole z-scored scan: the timescale
        mechanism changes the spectrum only, which FC cannot see.

    python bench/cohort.py                                   # the default cohort (./synthetic/)
    python bench/cohort.py --effect-gain 0.2 --n-probe 300   # a fresh probe cohort with other sizes
"""
import argparse
import inspect
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.load import load_scans  # noqa: E402
from data import labels  # noqa: E402
from data import synthetic  # noqa: E402
from evaluation.features import fc_features  # noqa: E402
from evaluation.linear_probe import PRIMARY, run_probe  # noqa: E402
from evaluation.report import format_metric  # noqa: E402
from bench.report import positive_int  # noqa: E402
from data.preprocess import zscore  # noqa: E402


def acf_features(scans, lags=(1, 2, 3), chunk=64):
    """Autocorrelation of every ROI at the given lags over each scan's valid length -> (S, 1, C·lags)."""
    out = np.empty((len(scans), 1, scans.n_rois * len(lags)), dtype=np.float32)
    for s0 in range(0, len(scans), chunk):
        idx = np.arange(s0, min(len(scans), s0 + chunk))
        n = torch.as_tensor(scans.lengths[idx])
        z = zscore(torch.from_numpy(scans.read(idx)), n)                        # (b, C, T), zero-padded
        r = [(z[..., k:] * z[..., :-k]).sum(-1) / (n - k).float()[:, None] for k in lags]   # (b, C) each
        out[idx, 0] = torch.cat(r, 1).numpy()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = inspect.signature(synthetic.make_synthetic_cohort).parameters
    for mech in synthetic.MECHANISMS:
        p.add_argument(f"--effect-{mech}", type=float,
                       help=f"generate a fresh probe cohort with this {mech} effect size instead of the "
                            f"cohort's {defaults[f'effect_{mech}'].default}; the other sizes keep theirs")
    p.add_argument("--n-probe", type=positive_int, default=300,
                   help="probe subjects of a fresh draw (default %(default)s, as the built-in cohort; fewer "
                        "subjects make every figure noisier)")
    p.add_argument("--seed", type=int, default=0,
                   help="cohort seed; any other than %(default)s draws a fresh probe cohort, to see how much "
                        "the figures move between draws")
    p.add_argument("--repeats", type=positive_int, default=10,
                   help="subject splits per label, as probe.py --repeats (default %(default)s)")
    args = p.parse_args(argv)
    sizes = {f"effect_{m}": getattr(args, f"effect_{m}") for m in synthetic.MECHANISMS
             if getattr(args, f"effect_{m}") is not None}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="cohort-") as tmp:
        if sizes or args.n_probe != 300 or args.seed != 0:   # a probe-only draw (another stream than the default's)
            folder = synthetic.make_synthetic_cohort(tmp, n_pretrain_subjects=1, scans_per_subject=1,
                                                     n_probe=args.n_probe, seed=args.seed, **sizes)
        else:
            folder = synthetic.ensure_synthetic_cohort()
        scans = load_scans(folder / "probe.npy")
        scans.data = np.array(scans.data)                    # into RAM: the temporary folder goes
        header, rows = labels.read_labels(folder / "probe_labels.csv")
    feats = {"fc": fc_features(scans), "acf": acf_features(scans)}
    print(f"{'default cohort' if not sizes else 'probe-only draw'}: {len(scans)} probe subjects, sizes "
          f"{sizes or 'default'} ({time.time() - t0:.0f} s)")
    print(f"{'label':<15} {'FC':>12} {'ROI autocorrelation':>20}   (balanced accuracy %, or R²; "
          f"mean ± std over {args.repeats} splits)")
    for label in synthetic.LABELS:
        values, subjects, _ = labels.scan_labels(header, rows, label, list(scans.subjects), True)
        task = labels.make_task(label, values, subjects)
        cells = []
        for f in feats.values():
            s = run_probe(f, task, range(args.repeats))["summary"][PRIMARY[task.kind]]
            cells.append(format_metric(s["mean"], s["std"], PRIMARY[task.kind]))
        print(f"{label:<15} {cells[0]:>12} {cells[1]:>20}")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
