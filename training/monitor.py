"""Is the run learning? The monitors a training run prints and plots (SPEC §8).

- `subject_separation`: how well the teacher's CLS tells subjects apart, on two crops of scans of
  subjects with several scans; train.py measures it at step 0 and at the end. An AUROC that rises
  above 0.5 means the encoder learned something about the person; a mean pairwise cosine near 1
  means collapse.
- `separation_crops`: the crops it is measured on, chosen once per run.
- `collapse_warning`, `warmup_warning`: plain-words warnings when the teacher has collapsed (every
  CLS the same direction), or when the warm-up is short enough at a high lr to make it collapse.
- `plot_curves`: <out>/curves.png from the log: losses, the std of the normalised CLS projections
  (student, teacher) and the teacher's mean pairwise cosine (objective.compute_losses computes them).

    python -m pytest -q tests/test_train.py -k separation
"""
import numpy as np
import torch
import torch.nn.functional as F

from data.preprocess import probe_crops

# A collapsed teacher, as it looked when a paper-size run collapsed on an H100 (BENCHMARKS.md, GPU):
# mean pairwise CLS cosine 0.999-1.000 and projection std 0.0002-0.001, against 0.96 and 0.014 at
# initialisation and ~0.13 and ~0.07 after 300 healthy steps
COLLAPSED_COS, COLLAPSED_STD = 0.99, 0.005
# That collapse came from a 9-step warm-up to lr 1.4e-3; the paper's 228 steps to the same lr learned
SHORT_WARMUP, HIGH_LR = 100, 5e-4


@torch.no_grad()
def subject_separation(encoder, crops, subjects, masked_networks=None):
    """How well the encoder's CLS tells subjects apart ("does the run learn").

    crops: (S, 2, C, T') two crops per scan; subjects: S ids, some subjects with several scans.
    Compares the CLS of crop 0 of scan i with crop 1 of scan j (i ≠ j): pairs of different scans of
    the same subject vs pairs of different subjects. Returns same/diff mean cosine, their gap and the
    AUROC of cosine as a same-subject detector (0.5 = no separation), and the mean pairwise cosine.
    masked_networks: networks of absent atlases, masked as in training (data/atlases.py).
    """
    from sklearn.metrics import roc_auc_score
    was_training = encoder.training
    encoder.eval()
    S = crops.shape[0]
    run = (lambda c: encoder(c)[0]) if not masked_networks else (
        lambda c: encoder(c, encoder.network_mask(len(c), masked_networks, c.device))[0])
    cls = torch.cat([run(c) for c in crops.flatten(0, 1).split(128)])            # (2S, D)
    encoder.train(was_training)
    z = F.normalize(cls.float(), dim=-1).view(S, 2, -1)
    cos = (z[:, 0] @ z[:, 1].T).cpu().numpy()                                    # (S, S)
    ids = np.asarray(subjects)
    same = ids[:, None] == ids[None, :]
    off = ~np.eye(S, dtype=bool)
    if not (same & off).any() or not (~same).any():
        raise ValueError("subject separation needs several scans of some subjects and several subjects")
    a, b = cos[same & off], cos[~same]
    zz = z[:, 0]
    return {"same": float(a.mean()), "diff": float(b.mean()), "gap": float(a.mean() - b.mean()),
            "auroc": float(roc_auc_score(np.r_[np.ones(a.size), np.zeros(b.size)], np.r_[a, b])),
            "mean_cos": float(((zz @ zz.T).sum() - S) / (S * (S - 1)))}


def separation_crops(scans, n_scans, crop_len):
    """(S', 2, C, T') z-scored crops (first and last of the scan) of up to n_scans scans of subjects
    that have ≥ 2 scans; (None, None) when the data have too few such subjects."""
    ids = np.asarray(scans.subjects)
    _, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    keep = np.flatnonzero(counts[inv] >= 2)[:n_scans]
    if len(keep) < 4 or len(np.unique(ids[keep])) < 2:
        return None, None
    crops = probe_crops(scans, keep, crop_len=crop_len, n_crops=2)   # (S', 2, C, T') first + last crop
    return crops, ids[keep].tolist()


def separation_line(start, end):
    """The summary a run prints at its end: start (may be None) -> end separation."""
    return ("subject separation (teacher CLS, same- vs different-subject scans): "
            + (f"start AUROC {start['auroc']:.3f} gap {start['gap']:+.3f} -> " if start else "")
            + f"end AUROC {end['auroc']:.3f} gap {end['gap']:+.3f}, mean pairwise cos {end['mean_cos']:.3f}")


def plot_curves(log, path):
    """<out>/curves.png: losses, projection stds and the collapse monitor over the logged steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in log]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for k in ("cls", "ttr", "tok", "comp", "expa"):
        ax[0].plot(steps, [r[k] for r in log], label=k)
    ax[0].set_title("losses")
    for k in ("std_s", "std_t"):
        ax[1].plot(steps, [r[k] for r in log], label=k)
    ax[1].set_title("std of normalised CLS projections")
    ax[2].plot(steps, [r["cos_t"] for r in log], label="teacher CLS mean pairwise cos")
    ax[2].set_title("collapse monitor (→1 = collapse)")
    for a in ax:
        a.set_xlabel("step")
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def collapse_warning(rec):
    """A log record -> a warning if the teacher looks collapsed, else None."""
    if rec["cos_t"] > COLLAPSED_COS and rec["std_t"] < COLLAPSED_STD:
        return (f"warning: the teacher looks collapsed at step {rec['step']} (CLS mean pairwise cosine "
                f"{rec['cos_t']:.3f}, projection std {rec['std_t']:.4f}): its features will carry little. A short "
                f"warm-up at a high lr does this; restart with a longer --warmup-epochs or a lower --lr")
    return None


def warmup_warning(warmup, peak_lr):
    """The warm-up (steps) to the peak lr -> a warning if it is short for that lr, else None."""
    if warmup < SHORT_WARMUP and peak_lr > HIGH_LR:
        return (f"warning: the lr warms up to {peak_lr:.2e} in only {warmup} steps. A paper-size run with a 9-step "
                f"warm-up to 1.4e-3 collapsed within 50 steps; the paper's run takes 228. With few subjects an "
                f"epoch is few steps: give the warm-up more steps (--warmup-epochs, --epochs) or lower --lr")
    return None
