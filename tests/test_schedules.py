"""Schedules of SPEC §7-8 as pure functions of the step (training/schedules.py)."""
import math

import pytest

from training.schedules import (ema_momentum_at, lr_at, steps_per_epoch, ttr_weight_at, warmup_steps,
                       weight_decay_at)


def test_paper_run_lengths():
    spe = steps_per_epoch(39139, 512)              # an epoch = each subject once
    assert spe == 76
    total = 100 * spe
    assert warmup_steps(total, 3, 100) == 3 * spe  # 3 epochs of warm-up
    assert warmup_steps(1000, 3, 100) == 30        # --steps: warm-up scales with the run (3%)
    assert steps_per_epoch(10, 64) == 1


def test_lr_warmup_then_cosine_to_zero():
    peak, total, warm = 7e-4 * 512 / 256, 1000, 30
    assert peak == pytest.approx(1.4e-3)
    assert lr_at(0, total, warm, peak) == 0
    assert lr_at(15, total, warm, peak) == pytest.approx(peak / 2)
    assert lr_at(warm, total, warm, peak) == pytest.approx(peak)
    mid = warm + (total - warm) // 2
    assert lr_at(mid, total, warm, peak) == pytest.approx(peak / 2, rel=1e-2)
    assert lr_at(total, total, warm, peak) == pytest.approx(0, abs=1e-12)
    lrs = [lr_at(s, total, warm, peak) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))   # monotone decay after warm-up
    assert lr_at(0, 10, 0, peak) == pytest.approx(peak)  # no warm-up


def test_weight_decay_cosine_up():
    assert weight_decay_at(0, 100) == pytest.approx(0.05)
    assert weight_decay_at(50, 100) == pytest.approx(0.175)
    assert weight_decay_at(100, 100) == pytest.approx(0.3)


def test_ema_momentum():
    assert ema_momentum_at(0, 100) == pytest.approx(0.99)
    assert ema_momentum_at(50, 100) == pytest.approx(0.995)
    assert ema_momentum_at(100, 100) == pytest.approx(1.0)
    total = 777
    for s in (3, 100, 500):
        assert ema_momentum_at(s, total) == pytest.approx(1 - 0.01 * (math.cos(math.pi * s / total) + 1) / 2)


def test_ttr_weight_only_first_five_epochs():
    window = warmup_steps(1000, 5.0, 100)          # 5 of 100 epochs of a 1000-step run: S = 50 steps
    assert window == 50
    assert ttr_weight_at(0, window) == pytest.approx(0.5)
    assert ttr_weight_at(25, window) == pytest.approx(0.25)
    assert ttr_weight_at(49, window) == pytest.approx(0.5 * (1 + math.cos(math.pi * 49 / 50)) / 2)
    assert ttr_weight_at(50, window) == 0
    assert ttr_weight_at(999, window) == 0
    # 5 epochs of 20 (the authors' window is epochs, not a share of the run): a quarter of the steps
    assert warmup_steps(400, 5.0, 20) == 100 and ttr_weight_at(99, 100) > 0 == ttr_weight_at(100, 100)
    assert ttr_weight_at(0, 0) == 0                # a window of no steps: L_TTR off
