"""What the method does to scans (data/preprocess.py, training/batches.py, data/connectivity.py):
z-scoring, augmentation, the training batches (crops, epochs, ranks, resume), probe crops and FC
(SPEC §1, §8, §9).

    python -m pytest -q tests/test_scans.py
"""
import logging

import numpy as np
import pytest
import torch

from data.scans import Scans
from data.connectivity import fisher_z, group_fc, scan_fc
from data.preprocess import augment, crop_starts, probe_crops, zscore
from training.batches import TrainBatches
from test_data import padded


def test_zscore_over_valid_length_padding_zero():
    x = padded([80, 50], C=3, dtype=np.float16)
    x[0, 2, :80] = 1234.0                                          # flat ROI with a large offset
    z = zscore(x, np.array([80, 50]))
    assert z.dtype == torch.float32 and z.shape == (2, 3, 80)
    v = z[1, :, :50]
    assert torch.allclose(v.mean(-1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(v.std(-1, unbiased=False), torch.ones(3), atol=1e-4)
    assert (z[1, :, 50:] == 0).all() and (z[0, 2] == 0).all()


def ramp_scans(lengths, C=4):
    """Scans whose every ROI is the strictly increasing 0..n-1, NaN-padded: a crop's start is its first value."""
    x = np.full((len(lengths), C, max(lengths)), np.nan, dtype=np.float32)
    for i, n in enumerate(lengths):
        x[i, :, :n] = np.arange(n)
    return Scans(data=x, lengths=np.array(lengths), subjects=[f"s{i}" for i in range(len(lengths))])


@pytest.mark.parametrize("resident", [True, False])
def test_train_crops_are_valid_windows_and_short_scans_are_padded(resident, caplog):
    lengths = [130, 101, 100, 60, 250, 180]
    sc = ramp_scans(lengths)
    with caplog.at_level(logging.WARNING, logger="brain_semantoks.scans"):
        tb = TrainBatches(sc, crop_len=100, seed=3, augment=False, resident=resident)
    assert "1 of 6 scans are shorter than the crop length 100" in caplog.text
    zs = zscore(sc.data, sc.lengths)                           # (S, C, T)
    for _ in range(5):
        x1, x2 = tb.next_batch(6)
        assert x1.shape == (6, 4, 100) and x1.dtype == torch.float32
        for b, s in enumerate(tb.last_scans.tolist()):
            n = lengths[s]
            for x in (x1, x2):
                if n < 100:
                    torch.testing.assert_close(x[b, :, :n], zs[s, :, :n], atol=2e-3, rtol=0)
                    assert (x[b, :, n:] == 0).all()
                    continue
                start = int(torch.argmin((zs[s, 0, :n] - x[b, 0, 0]).abs()))
                assert 0 <= start <= n - 100
                torch.testing.assert_close(x[b], zs[s, :, start:start + 100], atol=2e-3, rtol=0)


def test_resident_and_streaming_give_the_same_batches():
    sc = Scans(data=padded([150, 120, 110, 140], C=5), lengths=np.array([150, 120, 110, 140]),
                    subjects=["a", "b", "c", "d"])
    a = TrainBatches(sc, crop_len=100, seed=1, resident=True)
    b = TrainBatches(sc, crop_len=100, seed=1, resident=False)
    for _ in range(3):
        for u, v in zip(a.next_batch(2), b.next_batch(2)):
            torch.testing.assert_close(u, v, atol=5e-3, rtol=0)   # float16 storage vs float32


def test_augmentation_statistics():
    B, C, T = 4000, 50, 100
    g = torch.Generator().manual_seed(0)
    y = augment(torch.ones(B, C, T), g)
    zero = y.abs() < 0.5                                           # noise sd 0.1: kept entries are >= 0.8 - 5 sd
    roi_zeroed = zero.all(-1)                                      # (B, C)
    k = roi_zeroed.sum(1).float()
    assert k.min() >= 1 and k.max() <= 5                          # max(1, floor(50 U(0, .1)))
    assert abs(k.mean() - 2.2) < 0.1                              # E = (1+1+2+3+4)/5
    run = zero.all(1)                                              # (B, T) zeroed time points
    n = run.sum(1).float()
    assert n.min() >= 1 and n.max() <= 29 and abs(n.mean() - 14.5) < 0.6   # max(1, floor(100 U(0, .3)))
    idx = torch.arange(T).expand(B, T)
    first = torch.where(run, idx, T).min(1).values
    last = torch.where(run, idx, -1).max(1).values
    assert torch.equal(last - first + 1, n.long())                 # one contiguous run
    kept = ~zero
    scale = (y * kept).sum((1, 2)) / kept.sum((1, 2))
    assert scale.min() > 0.79 and scale.max() < 1.21 and abs(scale.mean() - 1.0) < 0.01
    assert abs(scale.std() - 0.4 / 12 ** 0.5) < 0.01              # U(0.8, 1.2)
    resid = (y - scale[:, None, None])[kept]
    assert abs(resid.std() - 0.1) < 0.002 and abs(y[zero].std() - 0.1) < 0.005   # N(0, 0.1²) everywhere


def test_same_seed_same_batches_and_state_dict_resume_is_exact():
    sc = Scans(data=padded([150] * 10, C=5), lengths=np.full(10, 150), subjects=list("aabbccddee"))

    def batches(tb, n):
        return [torch.cat(tb.next_batch(2)) for _ in range(n)]

    a, b = TrainBatches(sc, seed=7), TrainBatches(sc, seed=7)
    head = batches(a, 3)
    assert all(torch.equal(u, v) for u, v in zip(head, batches(b, 3)))
    assert not torch.equal(head[0], batches(TrainBatches(sc, seed=8), 1)[0])
    state = a.state_dict()
    assert state == {"version": 1, "seed": 7, "epoch": 1, "pos": 2, "step": 3, "n_subjects": 5, "crop_len": 100}
    tail = batches(a, 4)                                           # crosses another epoch boundary
    c = TrainBatches(sc, seed=0)
    c.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(tail, batches(c, 4)))


def test_epoch_visits_each_subject_once_and_drops_the_tail():
    subjects = [f"s{i // 2}" for i in range(26)]                   # 13 subjects x 2 scans
    sc = Scans(data=padded([100] * 26, C=3), lengths=np.full(26, 100), subjects=subjects)
    tb = TrainBatches(sc, seed=0, augment=False)
    assert tb.n_subjects == 13 and tb.steps_per_epoch(4) == 3
    scans_seen = []
    for epoch in range(3):
        seen = []
        for _ in range(3):
            assert tb.epoch == epoch
            tb.next_batch(4)
            seen += [subjects[s] for s in tb.last_scans.tolist()]
        scans_seen += tb.last_scans.tolist()
        assert len(set(seen)) == 12                                # 12 distinct of 13, none twice
    assert tb.epoch == 3
    assert len(set(scans_seen)) > len({subjects[s] for s in scans_seen})   # both scans of a subject get used


def test_ranks_split_the_global_batch():
    sc = Scans(data=padded([100] * 8, C=3), lengths=np.full(8, 100), subjects=list("abcdefgh"))
    r0 = TrainBatches(sc, seed=2, rank=0, world_size=2, augment=False)
    r1 = TrainBatches(sc, seed=2, rank=1, world_size=2, augment=False)
    one = TrainBatches(sc, seed=2, augment=False)
    r0.next_batch(2)
    r1.next_batch(2)
    one.next_batch(4)
    assert sorted(r0.last_scans.tolist() + r1.last_scans.tolist()) == sorted(one.last_scans.tolist())
    assert r0.steps_per_epoch(2) == 2 and r0.state_dict() == r1.state_dict()


def test_probe_crop_starts_and_values():
    np.testing.assert_array_equal(crop_starts([100, 170, 50, 107]),
                                  [[0] * 8, [0, 10, 20, 30, 40, 50, 60, 70], [0] * 8, [0, 1, 2, 3, 4, 5, 6, 7]])
    sc = ramp_scans([170, 50, 107])
    zs = zscore(sc.data, sc.lengths)
    crops = probe_crops(sc, [2, 0, 1])
    assert crops.shape == (3, 8, 4, 100) and crops.dtype == torch.float32
    torch.testing.assert_close(crops[1, 3], zs[0, :, 30:130])
    torch.testing.assert_close(crops[0, 7], zs[2, :, 7:107])
    torch.testing.assert_close(crops[2, 5, :, :50], zs[1, :, :50])
    assert (crops[2, :, :, 50:] == 0).all()
    assert probe_crops(sc, [0], crop_len=40, n_crops=2).shape == (1, 2, 4, 40)


def test_scan_fc_and_group_fc_match_numpy():
    x = padded([90, 60, 120], C=5, seed=4)
    sc = Scans(data=x, lengths=np.array([90, 60, 120]), subjects=["a", "b", "c"])
    fc = scan_fc(sc, [1, 2])
    np.testing.assert_allclose(fc[0], np.corrcoef(x[1, :, :60]), atol=1e-5)
    np.testing.assert_allclose(fc[1], np.corrcoef(x[2, :, :120]), atol=1e-5)
    g = group_fc(sc)
    ref = np.tanh(np.mean([fisher_z(np.corrcoef(x[i, :, :n])) for i, n in enumerate([90, 60, 120])], 0))
    np.fill_diagonal(ref, 1)
    np.testing.assert_allclose(g, ref, atol=1e-5)
    assert group_fc(sc, max_scans=2).shape == (5, 5)


def test_fisher_z_is_arctanh_and_finite_at_one():
    r = np.array([-0.9, 0.0, 0.3, 0.999])
    np.testing.assert_allclose(fisher_z(r), np.arctanh(r), rtol=1e-12)
    z = fisher_z(np.array([-1.0, 1.0]))                              # a diagonal, a duplicated ROI
    assert np.isfinite(z).all() and z[1] == -z[0] > 7
    assert fisher_z(np.float32(0.5)).dtype == np.float32            # the FC features stay float32


def test_sampler_errors():
    sc = Scans(data=padded([100] * 4, C=3), lengths=np.full(4, 100), subjects=list("aabb"))
    tb = TrainBatches(sc)
    with pytest.raises(ValueError, match=r"batch size 3 is larger than the number of subjects \(2\)"):
        tb.next_batch(3)
    other = TrainBatches(Scans(data=padded([100] * 3, C=3), lengths=np.full(3, 100), subjects=list("abc")))
    with pytest.raises(ValueError, match="sampler state is for 3 subjects .* but the data have 2 subjects"):
        tb.load_state_dict(other.state_dict())
