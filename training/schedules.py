"""The training schedules of SPEC §7-8, as pure functions of the optimizer step.

`total` is the number of optimizer steps of the run. The paper states its windows in epochs (3 of
warm-up, 5 of L_TTR over 100 epochs); `warmup_steps` turns such a window into steps as the same share
of the run, so a run given in --steps keeps the paper's proportions.

    lr_at             linear warm-up to lr·B/256, then cosine to 0                  (SPEC §8)
    weight_decay_at   cosine from 0.05 up to 0.3                                    (SPEC §8)
    ema_momentum_at   teacher momentum, cosine from 0.99 up to 1                    (SPEC §6)
    ttr_weight_at     w(step) of L_TTR: cosine from 0.5 to 0 over its window, then 0 (SPEC §7)

    python -m pytest -q tests/test_schedules.py
"""
import math


def steps_per_epoch(n_subjects, global_batch):
    """An epoch visits each subject once, a global batch never holds a subject twice and the tail
    smaller than a batch is dropped: n_subjects // global_batch steps, at least one (so that --epochs
    always gives a run). The one place this is computed: batches.TrainBatches.steps_per_epoch calls it."""
    return max(1, n_subjects // global_batch)


def warmup_steps(total, warmup_epochs=3.0, epochs=100):
    """A window of `warmup_epochs` out of `epochs`, as the same share of `total` steps."""
    return int(round(total * warmup_epochs / epochs))


def lr_at(step, total, warmup, peak):
    """Linear warm-up from 0 to `peak` over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def weight_decay_at(step, total, start=0.05, end=0.3):
    """Cosine from `start` (step 0) up to `end` (step total)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / total))


def ema_momentum_at(step, total, base=0.99):
    """m = 1 − (1 − base)·(cos(π·step/total) + 1)/2: base at step 0, 1 at the end."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


def ttr_weight_at(step, window, weight=0.5):
    """w = weight·(1 + cos(π·step/S))/2 for step < S = `window` steps (5 epochs in the paper), 0 afterwards."""
    return weight * (1 + math.cos(math.pi * step / window)) / 2 if step < window else 0.0
